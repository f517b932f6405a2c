"""The HPGD estimator as the paper's published Four-Rooms code computes it (every-visit tables).

From one batch of sampled episodes (the same batch for everything), with ``tau`` the time within
the episode, ``Dhat_t`` the discounted return of the follower's reward gradient ``d r_x`` and
``Ghat_t`` the leader's discounted return from step ``t`` (within the episode):

* every-visit averages over the batch per (state, action) and per state,
  ``dA(s,a) = avg_sa(Dhat)(s,a) - avg_s(Dhat)(s)`` and ``Abar(s,a) = avg_sa(Ghat)(s,a) - avg_s(Ghat)(s)``;
* response term (the ``(1/lam) dA * Abar`` bracket of the hypergradient (HG), see
  :mod:`align_cbrl.estimators.trajectory`)::

      (1/lam) * sum over all steps t of gamma^tau_t dA(s_t,a_t) Abar(s_t,a_t) / n_done          (P1)

  with ``n_done`` the number of *finished* episodes (goal reached or time limit hit);
* direct term: the mean over episode starts of the every-visit average, at the start's state, of
  the discounted return of ``d rbar_x``::

      (1/n_starts) * sum over starts i of avg_s(Dbar_rbar)(s_{start_i})                          (P2)

Both ``dA`` and ``Abar`` come from the same batch, so (P1) is biased by their within-batch
covariance (it is consistent only as the number of visits per pair grows); the library's
cross-fitted ``hpgd_weights(..., leader_q="crossfit")`` avoids that. This module reproduces the
published numbers, it is not the recommended estimator. The published code has no transition
(``d log P``) term; ``transition`` weights are zero.

Like :func:`~align_cbrl.estimators.trajectory.hpgd_weights`, the estimate is returned as per-step
weights (W): (P1) is linear in the per-step gradients ``d r_x(s_k, a_k)``. Writing
``Gamma_sa(s,a) = sum_{t: (s_t,a_t)=(s,a)} gamma^tau_t`` and ``n_sa, n_s`` the visit counts,

    sum_t gamma^tau_t dA(s_t,a_t) Abar(s_t,a_t) = sum_t' Dhat_t' c_t',
    c_t = Abar(s_t,a_t) Gamma_sa(s_t,a_t) / n_sa(s_t,a_t) - (sum_{t': s_t'=s_t} gamma^tau_t' Abar_t') / n_s(s_t),

and ``sum_t' Dhat_t' c_t' = sum_k d r_x(s_k,a_k) sum_{t'<=k, same episode} gamma^(k-t') c_t'`` (a forward
discounted scan). (P2) likewise becomes weights ``c'_t = m(s_t) / (n_starts n_s(s_t))`` (``m(s)`` =
episode starts in ``s``) scanned forward on ``d rbar_x``.
"""

from __future__ import annotations

import torch

from align_cbrl.estimators.trajectory import (
    HPGDWeights,
    _as_run_column,
    _check_batch,
    _check_gamma,
    _scatter_sum,
    segmented_scan,
    time_in_episode,
)

__all__ = ["finished_episodes", "published_hpgd_weights"]


def finished_episodes(episode_start: torch.Tensor) -> torch.Tensor:
    """Default ``done`` mask: True at the last step of every episode that is followed by another
    episode start in the same run (the run's last episode counts as unfinished). Pass an
    explicit ``done`` to :func:`published_hpgd_weights` when episodes also end at run boundaries
    (e.g. several environments concatenated per run)."""
    _check_batch(episode_start)
    done = torch.zeros_like(episode_start)
    done[:, :-1] = episode_start[:, 1:]
    return done


def published_hpgd_weights(
    states: torch.Tensor,
    actions: torch.Tensor,
    leader_rewards: torch.Tensor,
    episode_start: torch.Tensor,
    gamma: float,
    lam: float | torch.Tensor,
    *,
    n_states: int,
    n_actions: int,
    done: torch.Tensor | None = None,
) -> HPGDWeights:
    """Per-step weights (W) of the published estimator (P1) + (P2), batch layout ``[R, T]``.

    Args:
        states, actions: ``[R, T]`` state and action indices.
        leader_rewards: ``[R, T]`` observed leader rewards ``rbar_t``.
        episode_start: ``[R, T]`` bool, True at the first step of every episode.
        gamma: discount in [0, 1]; lam: follower temperature (> 0), float or ``[R]``.
        n_states, n_actions: index bounds.
        done: ``[R, T]`` bool, True at the last step of every finished episode (default:
            :func:`finished_episodes`). Every run needs at least one finished episode.

    Returns ``HPGDWeights`` with ``follower`` (on ``d r_x``), ``leader`` (on ``d rbar_x``), zero
    ``transition`` and ``n_episodes`` (episode starts per run).
    """
    _check_batch(episode_start, states, actions, leader_rewards)
    _check_gamma(gamma)
    if not leader_rewards.is_floating_point():
        raise ValueError(f"leader_rewards must be floating point, got {leader_rewards.dtype}")
    if not bool(torch.isfinite(leader_rewards).all()):
        raise ValueError("leader_rewards contains NaN/inf")
    for name, idx, n in (("state", states, n_states), ("action", actions, n_actions)):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(
                f"{name} indices must lie in [0, {n - 1}], got [{int(idx.min())}, {int(idx.max())}]"
            )
    if done is None:
        done = finished_episodes(episode_start)
    _check_batch(episode_start, done)
    n_runs = states.shape[0]
    dtype = leader_rewards.dtype
    lam_col = _as_run_column(lam, n_runs, leader_rewards)
    n_done = done.sum(dim=1).to(dtype)
    if bool((n_done == 0).any()):
        r = int(torch.nonzero(n_done == 0)[0])
        raise ValueError(
            f"run {r} has no finished episode: the published estimator divides by the number "
            "of finished episodes; sample more steps per run"
        )

    tau = time_in_episode(episode_start)
    max_len = int(tau.max().item()) + 1
    gpow = torch.pow(torch.as_tensor(gamma, dtype=dtype), tau.to(dtype))
    g_hat = segmented_scan(leader_rewards, episode_start, gamma, reverse=True, tau=tau)
    n_sa_idx = n_states * n_actions
    sa = states * n_actions + actions
    ones = torch.ones_like(g_hat)
    n_sa = _scatter_sum(ones, sa, n_sa_idx)
    n_s = _scatter_sum(ones, states, n_states)
    avg_sa = _scatter_sum(g_hat, sa, n_sa_idx) / n_sa.clamp_min(1.0)
    avg_s = _scatter_sum(g_hat, states, n_states) / n_s.clamp_min(1.0)
    abar = torch.gather(avg_sa, 1, sa) - torch.gather(avg_s, 1, states)  # Abar(s_t, a_t)
    gamma_sa = _scatter_sum(gpow, sa, n_sa_idx)
    c_sa = torch.gather(gamma_sa / n_sa.clamp_min(1.0), 1, sa) * abar
    c_s = torch.gather(_scatter_sum(gpow * abar, states, n_states) / n_s.clamp_min(1.0), 1, states)
    follower = segmented_scan(
        c_sa - c_s, episode_start, gamma, reverse=False, max_len=max_len, tau=tau
    ) / (lam_col * n_done[:, None])

    n_starts = episode_start.sum(dim=1).to(dtype)
    m = _scatter_sum(episode_start.to(dtype), states, n_states)
    c_start = torch.gather(m / n_s.clamp_min(1.0), 1, states) / n_starts[:, None]
    leader = segmented_scan(c_start, episode_start, gamma, reverse=False, max_len=max_len, tau=tau)
    return HPGDWeights(
        follower=follower,
        leader=leader,
        transition=torch.zeros_like(leader),
        n_episodes=n_starts,
    )
