"""HPGD estimator for sampled multi-step trajectories (reference notes, section 2).

The leader's hypergradient for an entropy-regularised follower (temperature ``lam``) is

    dF/dx = E_xi E_tau sum_t gamma^t [ d rbar(s_t,a_t)
                                       + (1/lam) dA(s_t,a_t) Qbar(s_t,a_t)
                                       + gamma d log P(s_{t+1}|s_t,a_t) Vbar(s_{t+1}) ]     (HG)

with ``dA = dQ* - dV*`` the gradient of the follower's advantage and ``Qbar, Vbar`` the leader's
values under the follower's policy. HPGD estimates (HG) from the followers' trajectories alone:

* ``Ghat_t = sum_{k>=t} gamma^(k-t) rbar_k`` (within the episode) estimates ``Qbar(s_t,a_t)``;
* ``Dhat_t = sum_{k>=t} gamma^(k-t) d rtilde_k`` estimates ``dQ*(s_t,a_t)``, where ``rtilde`` is the
  follower's per-step pseudo-reward: ``r_x(s,a)`` when ``x`` enters the reward only, and
  ``r_x(s_k,a_k) + gamma log P_x(s_{k+1}|s_k,a_k) stopgrad(V*(s_{k+1}))`` when ``x`` also moves the
  transition (``dQ*`` is the value of ``pi*`` for the vector reward ``dr + gamma sum_s' dP V*``).

Three forms of the follower-response term are provided:

``"mc"``  -- the paper's Monte-Carlo estimator: the follower's gradient is centred per state with
    visit averages, ``dA_hat_t = Dhat_t - Dbar(s_t)``, ``Dbar(s) = mean{Dhat_t : s_t = s}``, and
    multiplied by a leader value estimate ``Qhat_t / lam``. A state visited once contributes
    nothing.
``"covariance"`` -- ``(1/lam) E_a[dQ* Abar]``: ``Dhat_t (Qhat_t - Vhat(s_t)) / lam`` with a
    leader-side baseline ``Vhat``; no follower-side centring, so single visits count.
``"naive"`` -- the direct terms only (no follower response).

**Where the leader's values come from matters.** ``Dhat_t`` is a return over the future of
step ``t``; if ``Qhat_t`` is the leader's return ``Ghat_t`` over the *same* future, then
``E[Dhat_t Ghat_t | s_t, a_t] = dQ* Qbar + Cov(Dhat_t, Ghat_t | s_t, a_t)`` and the estimate is
biased (on Four-Rooms the bias is tens of times the gradient). ``leader_q`` selects an estimate
independent of that future:

``"crossfit"`` (default when ``actions`` are given) -- episodes are split into two folds
    (alternating episode index within each run; episodes are i.i.d.); ``Qhat_t`` is the mean of
    ``Ghat`` over the visits of ``(s_t, a_t)`` in the *other* fold and ``Vhat(s_t)`` the mean
    over its visits of ``s_t``; ``Dbar`` (form ``"mc"``) is taken within the step's own fold.
    Steps whose pair was not visited in the other fold contribute nothing. Consistent, and
    unbiased up to the usual every-visit averaging effects.
``"table"`` -- user-supplied leader critic tables ``q_table[S, A]`` (and ``v_table[S]`` for
    ``"covariance"``), e.g. running averages from *previous* iterations: independent of the
    current sample, biased only by their lag.
``"trajectory"`` -- ``Qhat_t = Ghat_t`` from the same trajectory (the plain product above,
    biased by the conditional covariance; kept for comparison). ``"covariance"`` then needs
    ``v_table`` (a baseline).

Every estimate is linear in the per-step gradients, so instead of materialising ``Dhat_t`` (one
vector per step) we reorder the double sums into per-step scalar weights:

    g = sum_t follower_t * d rtilde_t + leader_t * d rbar_t + transition_t * d log P_t          (W)

e.g. for ``"mc"``: ``sum_t gamma^tau_t Ghat_t Dhat_t = sum_k d rtilde_k gamma^tau_k sum_{t<=k} Ghat_t``
(``tau`` = time within the episode) and the centring term becomes a forward discounted sum of
``C(s_t)/n(s_t)`` with ``C(s) = sum_{t: s_t = s} gamma^tau_t Ghat_t``. The weights are then
contracted with analytic Jacobians (tabular case) or used as a stop-gradient surrogate
``sum_t w_t r_x(s_t,a_t)`` with one backward pass. All estimates are averaged over the episodes of
each run (divided by the number of episode starts).

Batch layout: ``[R, T]`` -- ``R`` independent runs (seeds, learning rates, contexts) each with ``T``
consecutive environment steps; ``episode_start[r, t]`` marks the first step of every episode
(auto-reset sampling concatenates episodes). Within-episode recursions use a segmented doubling
scan whose depth is ``ceil(log2(longest episode))``; all multipliers are <= 1, so it is stable in
float64 for any ``gamma``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "HPGDWeights",
    "discounted_returns",
    "hpgd_weights",
    "per_state_sum",
    "segmented_scan",
    "time_in_episode",
]

Form = Literal["mc", "covariance", "naive"]
FORMS: tuple[str, ...] = ("mc", "covariance", "naive")
LeaderQ = Literal["crossfit", "table", "trajectory"]
LEADER_Q: tuple[str, ...] = ("crossfit", "table", "trajectory")


@dataclass(frozen=True)
class HPGDWeights:
    """Per-step weights of the HPGD estimate (W); each ``[R, T]`` except ``n_episodes`` ``[R]``.

    ``follower`` multiplies ``d rtilde_t`` (already divided by ``lam`` and the episode count),
    ``leader`` multiplies ``d rbar_x(s_t, a_t)`` (``gamma^tau_t / n_episodes``), ``transition``
    multiplies ``d log P_x(s_{t+1} | s_t, a_t)`` (``gamma^(tau_t+1) Ghat_{t+1} / n_episodes``, zero at
    the last step of each episode, whose successor is not observed).
    """

    follower: torch.Tensor
    leader: torch.Tensor
    transition: torch.Tensor
    n_episodes: torch.Tensor


def _check_batch(episode_start: torch.Tensor, *others: torch.Tensor) -> None:
    if episode_start.dim() != 2:
        raise ValueError(
            f"episode_start must have shape [R, T] (runs x steps), got {tuple(episode_start.shape)}"
        )
    if episode_start.dtype != torch.bool:
        raise ValueError(f"episode_start must be a bool tensor, got {episode_start.dtype}")
    if episode_start.shape[1] == 0:
        raise ValueError("empty trajectory batch: T = 0 steps; sample at least one step per run")
    if not bool(episode_start[:, 0].all()):
        raise ValueError(
            "episode_start[:, 0] must be True: every run's first step starts an episode"
        )
    for other in others:
        if other.shape != episode_start.shape:
            raise ValueError(
                f"shape mismatch: expected {tuple(episode_start.shape)} like episode_start, "
                f"got {tuple(other.shape)}"
            )


def time_in_episode(episode_start: torch.Tensor) -> torch.Tensor:
    """``tau_t``: steps since the most recent episode start (0 at every start). ``[R, T]`` long."""
    _check_batch(episode_start)
    t = torch.arange(episode_start.shape[1], device=episode_start.device).expand_as(episode_start)
    last_start = torch.where(episode_start, t, torch.zeros_like(t)).cummax(dim=1).values
    return t - last_start


# Largest coef^-(L-1) for which the rescaled-cumsum scan is used: its float64 round-off is about
# eps * ratio * (running sum), i.e. <= ~1e-10 relative for ratios up to 1e4; beyond that (e.g.
# gamma = 0.9 over 200 steps, ratio 1.3e9) the doubling scan, whose multipliers are all <= 1, is used.
_CUMSUM_MAX_RATIO = 1e4


def _episode_last_index(episode_start: torch.Tensor) -> torch.Tensor:
    """Index of the last step of each step's episode, ``[R, T]``."""
    n = episode_start.shape[1]
    t = torch.arange(n, device=episode_start.device).expand_as(episode_start)
    start_idx = torch.where(episode_start, t, torch.full_like(t, n))
    next_start = torch.flip(torch.cummin(torch.flip(start_idx, [1]), dim=1).values, [1])
    last = torch.empty_like(t)
    last[:, :-1] = next_start[:, 1:] - 1
    last[:, -1] = n - 1
    return last


def _powers(coef: float, tau: torch.Tensor, max_len: int, dtype: torch.dtype) -> torch.Tensor:
    """``coef ** tau`` elementwise, through a table of ``coef ** k`` for ``k < max_len``
    (``tau[R, T]`` takes at most ``max_len`` distinct values; the lookup is ~10x cheaper than ``pow``)."""
    c = torch.as_tensor(coef, dtype=dtype, device=tau.device)
    table = torch.pow(c, torch.arange(max_len, dtype=dtype, device=tau.device))
    return table.expand(tau.shape[0], max_len).gather(1, tau)


def _cumsum_scan(
    values: torch.Tensor,
    episode_start: torch.Tensor,
    coef: float,
    reverse: bool,
    tau: torch.Tensor,
    max_len: int,
    up: torch.Tensor | None = None,
    down: torch.Tensor | None = None,
) -> torch.Tensor:
    """Segmented linear recurrence as one rescaled cumsum (see :func:`segmented_scan`).
    ``up = coef^tau`` and ``down = coef^-tau`` may be passed in when already computed."""
    if coef == 1.0:
        up = down = None
    else:
        if up is None:
            up = _powers(coef, tau, max_len, values.dtype)
        if down is None:
            down = _powers(1.0 / coef, tau, max_len, values.dtype)
    if reverse:
        # h_t = coef^-tau_t * sum_{k=t}^{last(t)} coef^tau_k v_k
        y = values if up is None else values * up
        csum = torch.cumsum(y, dim=1)
        prev = torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], dim=1)
        out = torch.gather(csum, 1, _episode_last_index(episode_start)) - prev
        return out if down is None else out * down
    # h_t = coef^tau_t * sum_{k=first(t)}^{t} coef^-tau_k v_k
    y = values if down is None else values * down
    csum = torch.cumsum(y, dim=1)
    prev = torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], dim=1)
    first = torch.arange(values.shape[1], device=values.device) - tau  # episode's first index
    out = csum - torch.gather(prev, 1, first)
    return out if up is None else out * up


def _cumsum_ok(coef: float, max_len: int) -> bool:
    """Whether the rescaled-cumsum scan is accurate for ``coef`` over episodes of ``max_len``."""
    return coef == 1.0 or (
        0.0 < coef < 1.0 and (max_len - 1) * -math.log(coef) <= math.log(_CUMSUM_MAX_RATIO)
    )


def segmented_scan(
    values: torch.Tensor,
    episode_start: torch.Tensor,
    coef: float,
    *,
    reverse: bool,
    max_len: int | None = None,
    tau: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear recurrence restricted to episodes, along the last axis.

    Forward: ``h_t = values_t + coef * h_{t-1}`` (``h`` restarts at every episode start).
    Reverse: ``h_t = values_t + coef * h_{t+1}`` (``h`` stops at every episode end).

    When ``coef^-(L-1)`` (``L`` the longest episode) is at most ``1e4`` the recurrence is one
    rescaled cumulative sum with per-episode offsets; otherwise a Hillis-Steele doubling scan of
    ``ceil(log2(L))`` vectorised steps, whose multipliers are all <= 1 (stable for any ``coef``).
    """
    _check_batch(episode_start, values)
    if tau is None:
        tau = time_in_episode(episode_start)
    if max_len is None:
        max_len = int(tau.max().item()) + 1
    if _cumsum_ok(coef, max_len):
        return _cumsum_scan(values, episode_start, coef, reverse, tau, max_len)
    h = values.clone()
    # a_t: multiplier linking step t to its predecessor (forward) / successor (reverse).
    coef_t = torch.full((), coef, dtype=values.dtype, device=values.device)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    if reverse:
        link = torch.zeros_like(values)
        link[:, :-1] = torch.where(episode_start[:, 1:], zero, coef_t)
    else:
        link = torch.where(episode_start, zero, coef_t)
    n_steps = math.ceil(math.log2(max_len)) if max_len > 1 else 0
    d = 1
    for _ in range(n_steps):
        if d >= h.shape[1]:
            break
        # Right-hand sides are evaluated into temporaries before the slice assignment, so the
        # overlapping reads see the previous step's values (Hillis-Steele).
        if reverse:
            h[:, :-d] += link[:, :-d] * h[:, d:]
            link[:, :-d] = link[:, :-d] * link[:, d:]
            link[:, -d:] = 0.0  # chains running past the last step are cut
        else:
            h[:, d:] += link[:, d:] * h[:, :-d]
            link[:, d:] = link[:, d:] * link[:, :-d]
            link[:, :d] = 0.0
        d *= 2
    return h


def discounted_returns(
    rewards: torch.Tensor, episode_start: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Monte-Carlo returns ``Ghat_t = sum_{k>=t, same episode} gamma^(k-t) r_k``, ``[R, T]``."""
    _check_gamma(gamma)
    return segmented_scan(rewards, episode_start, gamma, reverse=True)


def _scatter_sum(weights: torch.Tensor, index: torch.Tensor, n_index: int) -> torch.Tensor:
    out = torch.zeros(weights.shape[0], n_index, dtype=weights.dtype, device=weights.device)
    return out.scatter_add_(1, index, weights)


def per_state_sum(weights: torch.Tensor, states: torch.Tensor, n_states: int) -> torch.Tensor:
    """``W[r, s] = sum_{t: states[r, t] = s} weights[r, t]`` -- a batched scatter-add, ``[R, S]``."""
    if weights.shape != states.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} and states {tuple(states.shape)} must have equal shapes"
        )
    if states.numel() and (int(states.min()) < 0 or int(states.max()) >= n_states):
        raise ValueError(
            f"state indices must lie in [0, {n_states - 1}], got range "
            f"[{int(states.min())}, {int(states.max())}]"
        )
    return _scatter_sum(weights, states, n_states)


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"discount gamma must lie in [0, 1], got {gamma}")


def _as_run_column(lam: float | torch.Tensor, n_runs: int, like: torch.Tensor) -> torch.Tensor:
    lam_t = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if lam_t.dim() == 0:
        lam_t = lam_t.expand(n_runs)
    if lam_t.shape != (n_runs,):
        raise ValueError(
            f"lam must be a float or a tensor of shape [{n_runs}], got {tuple(lam_t.shape)}"
        )
    if not bool(torch.isfinite(lam_t).all()) or bool((lam_t <= 0).any()):
        raise ValueError(
            f"follower temperature lam must be > 0 (got {lam_t.tolist()}): an unregularised follower "
            "(lam = 0) has no differentiable best response; give the follower a positive temperature"
        )
    return lam_t[:, None]


def _fold_of_step(episode_start: torch.Tensor) -> torch.Tensor:
    """Fold (0/1) of every step: the parity of its episode's index within the run."""
    return (episode_start.long().cumsum(dim=1) - 1) & 1


def _grouped_mean(
    values: torch.Tensor, index: torch.Tensor, n_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run means and counts of ``values`` grouped by ``index`` (``[R, n_index]`` each)."""
    total = _scatter_sum(values, index, n_index)
    count = _scatter_sum(torch.ones_like(values), index, n_index)
    return total / count.clamp_min(1.0), count


def _table_lookup(
    table: torch.Tensor,
    n_runs: int,
    idx: torch.Tensor,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
) -> torch.Tensor:
    t = table.to(dtype)
    if t.shape == shape:
        t = t.expand(n_runs, *shape)
    if t.shape != (n_runs, *shape):
        raise ValueError(
            f"{name} must have shape {list(shape)} or {[n_runs, *shape]}, got {list(table.shape)}"
        )
    return torch.gather(t.reshape(n_runs, -1), 1, idx)


def hpgd_weights(
    states: torch.Tensor,
    leader_rewards: torch.Tensor,
    episode_start: torch.Tensor,
    gamma: float,
    lam: float | torch.Tensor,
    *,
    form: Form = "mc",
    n_states: int,
    actions: torch.Tensor | None = None,
    n_actions: int | None = None,
    leader_q: LeaderQ | None = None,
    q_table: torch.Tensor | None = None,
    v_table: torch.Tensor | None = None,
    baseline: torch.Tensor | None = None,
) -> HPGDWeights:
    """Per-step weights (W) of the HPGD estimate of (HG) from sampled trajectories.

    Args:
        states: ``[R, T]`` state indices.
        leader_rewards: ``[R, T]`` observed leader rewards ``rbar_t`` (values, no gradient).
        episode_start: ``[R, T]`` bool, True at the first step of every episode.
        gamma: discount factor in [0, 1].
        lam: follower temperature (> 0), a float or one per run ``[R]``.
        form: ``"mc"`` (paper), ``"covariance"`` or ``"naive"``.
        n_states: number of states (bounds of ``states``).
        actions: ``[R, T]`` action indices (needed by ``leader_q="crossfit"`` and ``"table"``).
        n_actions: number of actions (bounds of ``actions``).
        leader_q: source of the leader values multiplying ``Dhat_t`` (module docstring):
            ``"crossfit"`` (default when ``actions`` are given), ``"table"`` or ``"trajectory"``.
        q_table: ``[S, A]`` or ``[R, S, A]`` leader Q estimates (``leader_q="table"``).
        v_table: ``[S]`` or ``[R, S]`` leader value estimates, the baseline of ``"covariance"``
            with ``leader_q`` ``"table"`` or ``"trajectory"``. ``baseline`` is an alias.
    """
    if form not in FORMS:
        raise ValueError(f"unknown HPGD form {form!r}; choose one of {', '.join(FORMS)}")
    _check_batch(episode_start, states, leader_rewards)
    _check_gamma(gamma)
    if not leader_rewards.is_floating_point():
        raise ValueError(f"leader_rewards must be floating point, got {leader_rewards.dtype}")
    if not bool(torch.isfinite(leader_rewards).all()):
        bad = torch.nonzero(~torch.isfinite(leader_rewards))[0].tolist()
        raise ValueError(f"leader_rewards contains NaN/inf (first at [run, step] = {bad})")
    if baseline is not None:
        if v_table is not None:
            raise ValueError("pass either baseline or v_table (they are the same), not both")
        v_table = baseline
    dtype = leader_rewards.dtype
    n_runs = states.shape[0]
    lam_col = _as_run_column(lam, n_runs, leader_rewards)
    if states.numel() and (int(states.min()) < 0 or int(states.max()) >= n_states):
        raise ValueError(
            f"state indices must lie in [0, {n_states - 1}], got range "
            f"[{int(states.min())}, {int(states.max())}]"
        )
    tau = time_in_episode(episode_start)
    max_len = int(tau.max().item()) + 1
    gpow = _powers(gamma, tau, max_len, dtype)
    # The gamma-scans below share gamma^tau (= gpow) and gamma^-tau: compute them once.
    use_cumsum = _cumsum_ok(gamma, max_len)
    gdown = _powers(1.0 / gamma, tau, max_len, dtype) if use_cumsum and gamma != 1.0 else None

    def gamma_scan(values: torch.Tensor, reverse: bool) -> torch.Tensor:
        if use_cumsum:
            return _cumsum_scan(values, episode_start, gamma, reverse, tau, max_len, gpow, gdown)
        return segmented_scan(
            values, episode_start, gamma, reverse=reverse, max_len=max_len, tau=tau
        )

    n_episodes = episode_start.sum(dim=1).to(dtype)
    inv_ep = (1.0 / n_episodes)[:, None]
    g_hat = gamma_scan(leader_rewards, reverse=True)

    # Direct and transition terms (shared by all forms): known score x one return, unbiased.
    leader_w = gpow * inv_ep
    next_in_episode = torch.zeros_like(episode_start)
    next_in_episode[:, :-1] = ~episode_start[:, 1:]
    transition_w = torch.zeros_like(leader_rewards)
    transition_w[:, :-1] = gamma * gpow[:, :-1] * g_hat[:, 1:]
    transition_w = torch.where(next_in_episode, transition_w, torch.zeros_like(transition_w))
    transition_w = transition_w * inv_ep
    zeros = torch.zeros_like(leader_rewards)
    if form == "naive":
        return HPGDWeights(
            follower=zeros, leader=leader_w, transition=transition_w, n_episodes=n_episodes
        )

    # ---- leader values multiplying the follower's return Dhat_t --------------------------
    if leader_q is None:
        if actions is None:
            raise ValueError(
                "hpgd_weights needs an estimate of the leader's Q-values that is independent of "
                "the future of each step: pass actions= and n_actions= (leader_q='crossfit'), "
                "critic tables (leader_q='table'), or opt into the biased same-trajectory "
                "product with leader_q='trajectory'"
            )
        leader_q = "crossfit"
    if leader_q not in LEADER_Q:
        raise ValueError(f"unknown leader_q {leader_q!r}; choose one of {', '.join(LEADER_Q)}")
    if leader_q in ("crossfit", "table"):
        if actions is None or n_actions is None:
            raise ValueError(f"leader_q={leader_q!r} needs actions= ([R, T]) and n_actions=")
        if actions.shape != states.shape:
            raise ValueError(
                f"actions {tuple(actions.shape)} must have the shape of states {tuple(states.shape)}"
            )
        if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= n_actions):
            raise ValueError(
                f"action indices must lie in [0, {n_actions - 1}], got range "
                f"[{int(actions.min())}, {int(actions.max())}]"
            )
    n_sa = n_states * (n_actions or 0)
    valid = torch.ones_like(leader_rewards, dtype=torch.bool)
    if leader_q == "crossfit":
        fold = _fold_of_step(episode_start)
        sa = states * n_actions + actions
        q_mean, q_count = _grouped_mean(g_hat, fold * n_sa + sa, 2 * n_sa)
        other_sa = (1 - fold) * n_sa + sa
        q_hat = torch.gather(q_mean, 1, other_sa)
        valid = torch.gather(q_count, 1, other_sa) > 0
        centre_index, n_centre = fold * n_states + states, 2 * n_states
        if form == "covariance":
            v_mean, v_count = _grouped_mean(g_hat, centre_index, n_centre)
            other_s = (1 - fold) * n_states + states
            v_hat = torch.gather(v_mean, 1, other_s)
            valid = valid & (torch.gather(v_count, 1, other_s) > 0)
    else:
        if leader_q == "table":
            if q_table is None:
                raise ValueError("leader_q='table' needs q_table ([S, A] or [R, S, A])")
            q_hat = _table_lookup(
                q_table,
                n_runs,
                states * n_actions + actions,
                "q_table",
                (n_states, n_actions),
                dtype,
            )
        else:  # trajectory
            q_hat = g_hat
        if form == "covariance":
            if v_table is None:
                raise ValueError(
                    f"form='covariance' with leader_q={leader_q!r} needs a leader baseline "
                    "v_table (alias baseline) of shape [S] or [R, S] (zeros for none)"
                )
            v_hat = _table_lookup(v_table, n_runs, states, "v_table", (n_states,), dtype)
        centre_index, n_centre = states, n_states
    q_hat = torch.where(valid, q_hat, zeros)

    if form == "mc":
        # sum_t gamma^tau_t Qhat_t Dhat_t -> weight gamma^tau_k * sum_{t<=k} Qhat_t on d rtilde_k.
        prefix_q = _cumsum_scan(q_hat, episode_start, 1.0, False, tau, max_len)
        direct = gpow * prefix_q
        # sum_t gamma^tau_t Qhat_t Dbar(s_t) = sum_t' c_t' Dhat_t', c = C(s)/n(s) (per fold) ->
        # weight J_k = sum_{t'<=k} gamma^(k-t') c_t' on d rtilde_k.
        visits = _scatter_sum(torch.ones_like(leader_rewards), centre_index, n_centre)
        c_state = _scatter_sum(gpow * q_hat, centre_index, n_centre) / visits.clamp_min(1.0)
        c_step = torch.gather(c_state, 1, centre_index)
        centring = gamma_scan(c_step, reverse=False)
        follower_w = (direct - centring) * inv_ep / lam_col
    else:  # covariance
        adv = torch.where(valid, q_hat - v_hat, zeros)
        prefix_adv = _cumsum_scan(adv, episode_start, 1.0, False, tau, max_len)
        follower_w = gpow * prefix_adv * inv_ep / lam_col

    return HPGDWeights(
        follower=follower_w, leader=leader_w, transition=transition_w, n_episodes=n_episodes
    )
