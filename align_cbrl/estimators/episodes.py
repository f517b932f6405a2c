"""Batches of sampled episodes: layout checks, within-episode scans and per-state sums.

Batch layout ``[R, T]``: ``R`` independent runs (seeds, learning rates, contexts) each with ``T``
consecutive environment steps; ``episode_start[r, t]`` marks the first step of every episode
(auto-reset sampling concatenates episodes). ``tau_t`` is the time within the episode.

Within-episode linear recurrences (discounted returns, forward discounted sums) run as one
rescaled cumulative sum when the rescaling stays small, otherwise as a segmented doubling scan
whose depth is ``ceil(log2(longest episode))``; its multipliers are all <= 1, so it is stable in
float64 for any discount. :class:`Episodes` precomputes what every scan of one batch shares
(``tau``, ``gamma^tau``, ``gamma^-tau``). The estimators built on these are described in
``docs/theory.md`` §4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from align_cbrl.estimators.temperature import check_beta

__all__ = [
    "Episodes",
    "as_run_column",
    "check_batch",
    "check_gamma",
    "check_indices",
    "check_trajectories",
    "discounted_returns",
    "per_state_sum",
    "scatter_sum",
    "segmented_scan",
    "time_in_episode",
]

TEMPERATURE_HELP = (
    "follower temperature beta must be > 0: an unregularised follower (beta = 0) has no "
    "differentiable best response; give the follower a positive temperature"
)


def check_batch(episode_start: torch.Tensor, *others: torch.Tensor) -> None:
    """Refuse a malformed ``[R, T]`` batch (one line saying what to fix)."""
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


def check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"discount gamma must lie in [0, 1], got {gamma}")


def check_trajectories(
    episode_start: torch.Tensor, leader_rewards: torch.Tensor, gamma: float, *others: torch.Tensor
) -> None:
    """:func:`check_batch` plus the discount and finite floating-point leader rewards."""
    check_batch(episode_start, *others, leader_rewards)
    check_gamma(gamma)
    if not leader_rewards.is_floating_point():
        raise ValueError(f"leader_rewards must be floating point, got {leader_rewards.dtype}")
    if not bool(torch.isfinite(leader_rewards).all()):
        bad = torch.nonzero(~torch.isfinite(leader_rewards))[0].tolist()
        raise ValueError(f"leader_rewards contains NaN/inf (first at [run, step] = {bad})")


def check_indices(index: torch.Tensor, n: int, name: str) -> None:
    """Refuse ``name`` indices outside ``[0, n - 1]``."""
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(
            f"{name} indices must lie in [0, {n - 1}], got range "
            f"[{int(index.min())}, {int(index.max())}]"
        )


def as_run_column(beta: float | torch.Tensor, n_runs: int, like: torch.Tensor) -> torch.Tensor:
    """The follower temperature as a column ``[R, 1]`` in ``like``'s dtype (float or ``[R]``)."""
    b = check_beta(beta, n_runs, per="run", help=TEMPERATURE_HELP)
    return b.to(dtype=like.dtype, device=like.device)[:, None]


def time_in_episode(episode_start: torch.Tensor) -> torch.Tensor:
    """``tau_t``: steps since the most recent episode start (0 at every start). ``[R, T]`` long."""
    check_batch(episode_start)
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


def _doubling_scan(
    values: torch.Tensor, episode_start: torch.Tensor, coef: float, reverse: bool, max_len: int
) -> torch.Tensor:
    """Hillis-Steele doubling scan of the segmented recurrence (multipliers all <= 1)."""
    h = values.clone()
    # link_t: multiplier linking step t to its predecessor (forward) / successor (reverse).
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
    check_batch(episode_start, values)
    if tau is None:
        tau = time_in_episode(episode_start)
    if max_len is None:
        max_len = int(tau.max().item()) + 1
    if _cumsum_ok(coef, max_len):
        return _cumsum_scan(values, episode_start, coef, reverse, tau, max_len)
    return _doubling_scan(values, episode_start, coef, reverse, max_len)


def discounted_returns(
    rewards: torch.Tensor, episode_start: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Monte-Carlo returns ``Ghat_t = sum_{k>=t, same episode} gamma^(k-t) r_k``, ``[R, T]``."""
    check_gamma(gamma)
    return segmented_scan(rewards, episode_start, gamma, reverse=True)


def scatter_sum(weights: torch.Tensor, index: torch.Tensor, n_index: int) -> torch.Tensor:
    """``out[r, i] = sum_{t: index[r, t] = i} weights[r, t]``, ``[R, n_index]`` (unchecked)."""
    out = torch.zeros(weights.shape[0], n_index, dtype=weights.dtype, device=weights.device)
    return out.scatter_add_(1, index, weights)


def per_state_sum(weights: torch.Tensor, states: torch.Tensor, n_states: int) -> torch.Tensor:
    """``W[r, s] = sum_{t: states[r, t] = s} weights[r, t]`` -- a batched scatter-add, ``[R, S]``."""
    if weights.shape != states.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} and states {tuple(states.shape)} must have equal shapes"
        )
    check_indices(states, n_states, "state")
    return scatter_sum(weights, states, n_states)


@dataclass(frozen=True)
class Episodes:
    """What every discounted scan over one batch shares: ``tau`` (time in episode), the longest
    episode ``max_len``, ``gamma^tau`` (``gpow``) and, for the rescaled-cumsum path,
    ``gamma^-tau`` (``gdown``), plus ``1 / n_episodes`` per run as a column (``inv_episodes``)."""

    episode_start: torch.Tensor
    gamma: float
    tau: torch.Tensor
    max_len: int
    gpow: torch.Tensor
    gdown: torch.Tensor | None
    use_cumsum: bool
    n_episodes: torch.Tensor
    inv_episodes: torch.Tensor

    @classmethod
    def of(cls, episode_start: torch.Tensor, gamma: float, dtype: torch.dtype) -> Episodes:
        tau = time_in_episode(episode_start)
        max_len = int(tau.max().item()) + 1
        use_cumsum = _cumsum_ok(gamma, max_len)
        gdown = _powers(1.0 / gamma, tau, max_len, dtype) if use_cumsum and gamma != 1.0 else None
        n_episodes = episode_start.sum(dim=1).to(dtype)
        return cls(
            episode_start=episode_start,
            gamma=gamma,
            tau=tau,
            max_len=max_len,
            gpow=_powers(gamma, tau, max_len, dtype),
            gdown=gdown,
            use_cumsum=use_cumsum,
            n_episodes=n_episodes,
            inv_episodes=(1.0 / n_episodes)[:, None],
        )

    def scan(self, values: torch.Tensor, *, reverse: bool) -> torch.Tensor:
        """The ``gamma``-discounted within-episode recurrence of :func:`segmented_scan`."""
        if self.use_cumsum:
            return _cumsum_scan(
                values,
                self.episode_start,
                self.gamma,
                reverse,
                self.tau,
                self.max_len,
                self.gpow,
                self.gdown,
            )
        return segmented_scan(
            values,
            self.episode_start,
            self.gamma,
            reverse=reverse,
            max_len=self.max_len,
            tau=self.tau,
        )

    def running_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``sum_{t' <= t, same episode} values_t'`` (undiscounted, forward)."""
        return _cumsum_scan(values, self.episode_start, 1.0, False, self.tau, self.max_len)
