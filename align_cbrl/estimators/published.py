"""The HPGD estimator as the paper's published Four-Rooms code computes it (``docs/theory.md`` §7).

From one batch of sampled episodes (the same batch for everything), with ``tau`` the time within
the episode, ``Dhat_t`` the discounted return of the follower's reward gradient ``d r_x`` and
``Ghat_t`` the leader's discounted return from step ``t`` (within the episode):

* leader values: the source :func:`~align_cbrl.estimators.leader_values.published_values`, the
  every-visit advantage ``Abar(s,a) = avg_sa(Ghat)(s,a) - avg_s(Ghat)(s)``;
* weight form "every visit": the follower side is averaged the same way,
  ``dA(s,a) = avg_sa(Dhat)(s,a) - avg_s(Dhat)(s)``, and the response term (the
  ``(1/beta) dA * Abar`` bracket of the hypergradient (HG), :mod:`align_cbrl.estimators.trajectory`)
  is::

      (1/beta) * sum over all steps t of gamma^tau_t dA(s_t,a_t) Abar(s_t,a_t) / n_done         (P1)

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

from align_cbrl.estimators.episodes import (
    as_run_column,
    check_batch,
    check_indices,
    check_trajectories,
    scatter_sum,
    segmented_scan,
    time_in_episode,
)
from align_cbrl.estimators.leader_values import LeaderValues, published_values
from align_cbrl.estimators.trajectory import HPGDWeights

__all__ = [
    "every_visit_weights",
    "finished_episodes",
    "published_hpgd_weights",
    "start_visit_weights",
]


def finished_episodes(episode_start: torch.Tensor) -> torch.Tensor:
    """Default ``done`` mask: True at the last step of every episode that is followed by another
    episode start in the same run (the run's last episode counts as unfinished). Pass an
    explicit ``done`` to :func:`published_hpgd_weights` when episodes also end at run boundaries
    (e.g. several environments concatenated per run)."""
    check_batch(episode_start)
    done = torch.zeros_like(episode_start)
    done[:, :-1] = episode_start[:, 1:]
    return done


def every_visit_weights(
    values: LeaderValues,
    actions: torch.Tensor,
    n_actions: int,
    episode_start: torch.Tensor,
    gamma: float,
    gpow: torch.Tensor,
    tau: torch.Tensor,
    max_len: int,
) -> torch.Tensor:
    """Weight form "every visit" of (P1) on ``d r_x`` (before ``1 / (beta n_done)``): the
    forward discounted scan of ``c_t`` (module docstring) for the leader values ``values.q``."""
    states, n_states, abar = values.centre_index, values.n_centre, values.q
    sa = states * n_actions + actions
    ones = torch.ones_like(abar)
    n_sa = scatter_sum(ones, sa, n_states * n_actions)
    n_s = scatter_sum(ones, states, n_states)
    gamma_sa = scatter_sum(gpow, sa, n_states * n_actions)
    c_sa = torch.gather(gamma_sa / n_sa.clamp_min(1.0), 1, sa) * abar
    c_s = torch.gather(scatter_sum(gpow * abar, states, n_states) / n_s.clamp_min(1.0), 1, states)
    return segmented_scan(c_sa - c_s, episode_start, gamma, reverse=False, max_len=max_len, tau=tau)


def start_visit_weights(
    states: torch.Tensor,
    episode_start: torch.Tensor,
    n_states: int,
    gamma: float,
    tau: torch.Tensor,
    max_len: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(P2) as weights on ``d rbar_x``: ``c'_t = m(s_t) / (n_starts n_s(s_t))`` scanned forward
    (``m(s)`` episode starts in ``s``, ``n_s`` visits of ``s``, ``tau`` the time in episode)."""
    n_s = scatter_sum(torch.ones_like(states, dtype=dtype), states, n_states)
    n_starts = episode_start.sum(dim=1).to(dtype)
    m = scatter_sum(episode_start.to(dtype), states, n_states)
    c_start = torch.gather(m / n_s.clamp_min(1.0), 1, states) / n_starts[:, None]
    return segmented_scan(c_start, episode_start, gamma, reverse=False, max_len=max_len, tau=tau)


def published_hpgd_weights(
    states: torch.Tensor,
    actions: torch.Tensor,
    leader_rewards: torch.Tensor,
    episode_start: torch.Tensor,
    gamma: float,
    beta: float | torch.Tensor,
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
        gamma: discount in [0, 1]; beta: follower temperature (> 0), float or ``[R]``.
        n_states, n_actions: index bounds.
        done: ``[R, T]`` bool, True at the last step of every finished episode (default:
            :func:`finished_episodes`). Every run needs at least one finished episode.

    Returns ``HPGDWeights`` with ``follower`` (on ``d r_x``), ``leader`` (on ``d rbar_x``), zero
    ``transition`` and ``n_episodes`` (episode starts per run).
    """
    check_trajectories(episode_start, leader_rewards, gamma, states, actions)
    check_indices(states, n_states, "state")
    check_indices(actions, n_actions, "action")
    if done is None:
        done = finished_episodes(episode_start)
    check_batch(episode_start, done)
    dtype = leader_rewards.dtype
    beta_col = as_run_column(beta, states.shape[0], leader_rewards)
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
    values = published_values(g_hat, states, actions, n_states, n_actions)
    follower = every_visit_weights(
        values, actions, n_actions, episode_start, gamma, gpow, tau, max_len
    ) / (beta_col * n_done[:, None])
    leader = start_visit_weights(states, episode_start, n_states, gamma, tau, max_len, dtype)
    return HPGDWeights(
        follower=follower,
        leader=leader,
        transition=torch.zeros_like(leader),
        n_episodes=episode_start.sum(dim=1).to(dtype),
    )
