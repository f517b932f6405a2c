"""Leader-value sources: where the leader values multiplying the follower's return come from
(``docs/theory.md`` §4).

The trajectory HPGD estimate multiplies ``Dhat_t`` (the discounted return of the follower's
reward gradient from step ``t``) by a leader value estimate ``Qhat_t`` (and, for the covariance
form, subtracts a baseline ``Vhat(s_t)``). If ``Qhat_t`` is the leader's own return ``Ghat_t``
over the *same* future as ``Dhat_t``, the product is biased by ``Cov(Dhat_t, Ghat_t | s_t, a_t)``;
each source below trades that bias differently:

``crossfit_values``   -- the other half of the episodes (alternating episode index per run):
    ``Qhat_t`` = mean of ``Ghat`` over the other fold's visits of ``(s_t, a_t)``, ``Vhat`` over
    its visits of ``s_t``; steps without such visits contribute nothing. Consistent.
``table_values``      -- user-supplied critic tables ``q_table[S, A]`` / ``v_table[S]`` (e.g.
    averages from previous iterations): independent of the current sample.
``trajectory_values`` -- ``Qhat_t = Ghat_t`` from the same trajectory (biased; for comparison).
``published_values``  -- the published code's choice: the every-visit leader advantage
    ``Abar(s, a) = avg_sa(Ghat) - avg_s(Ghat)`` of the same batch (biased by the within-batch
    covariance; ``docs/theory.md`` §7).

Every source returns :class:`LeaderValues`: per-step ``q`` (zero where ``valid`` is False), an
optional baseline ``v`` and the groups within which the ``"mc"`` form centres ``Dhat``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align_cbrl.estimators.episodes import scatter_sum

__all__ = [
    "LEADER_Q",
    "LeaderValues",
    "crossfit_values",
    "published_values",
    "table_values",
    "trajectory_values",
]

LEADER_Q: tuple[str, ...] = ("crossfit", "table", "trajectory")


@dataclass(frozen=True)
class LeaderValues:
    """Per-step leader values ``q[R, T]`` (zero where ``valid`` is False), baseline ``v[R, T]``
    (``None`` when not asked for) and the centring groups: step ``t`` belongs to group
    ``centre_index[r, t]`` of ``n_centre``."""

    q: torch.Tensor
    v: torch.Tensor | None
    valid: torch.Tensor
    centre_index: torch.Tensor
    n_centre: int


def _fold_of_step(episode_start: torch.Tensor) -> torch.Tensor:
    """Fold (0/1) of every step: the parity of its episode's index within the run."""
    return (episode_start.long().cumsum(dim=1) - 1) & 1


def _grouped_mean(
    values: torch.Tensor, index: torch.Tensor, n_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run means and counts of ``values`` grouped by ``index`` (``[R, n_index]`` each)."""
    total = scatter_sum(values, index, n_index)
    count = scatter_sum(torch.ones_like(values), index, n_index)
    return total / count.clamp_min(1.0), count


def _table_lookup(
    table: torch.Tensor, idx: torch.Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """``table`` (``shape`` or ``[R, *shape]``) read at the flat per-step indices ``idx[R, T]``."""
    n_runs = idx.shape[0]
    t = table.to(dtype)
    if t.shape == shape:
        t = t.expand(n_runs, *shape)
    if t.shape != (n_runs, *shape):
        raise ValueError(
            f"{name} must have shape {list(shape)} or {[n_runs, *shape]}, got {list(table.shape)}"
        )
    return torch.gather(t.reshape(n_runs, -1), 1, idx)


def crossfit_values(
    g_hat: torch.Tensor,
    episode_start: torch.Tensor,
    states: torch.Tensor,
    actions: torch.Tensor,
    n_states: int,
    n_actions: int,
    *,
    baseline: bool,
) -> LeaderValues:
    """Cross-fitted leader values from the other fold's returns ``g_hat`` (module docstring);
    the ``"mc"`` centring runs within each step's own fold. ``baseline``: also ``Vhat``."""
    n_sa = n_states * n_actions
    fold = _fold_of_step(episode_start)
    sa = states * n_actions + actions
    q_mean, q_count = _grouped_mean(g_hat, fold * n_sa + sa, 2 * n_sa)
    other_sa = (1 - fold) * n_sa + sa
    q_hat = torch.gather(q_mean, 1, other_sa)
    valid = torch.gather(q_count, 1, other_sa) > 0
    centre_index = fold * n_states + states
    v_hat = None
    if baseline:
        v_mean, v_count = _grouped_mean(g_hat, centre_index, 2 * n_states)
        other_s = (1 - fold) * n_states + states
        v_hat = torch.gather(v_mean, 1, other_s)
        valid = valid & (torch.gather(v_count, 1, other_s) > 0)
    q_hat = torch.where(valid, q_hat, torch.zeros_like(q_hat))
    return LeaderValues(q_hat, v_hat, valid, centre_index, 2 * n_states)


def table_values(
    q_table: torch.Tensor,
    v_table: torch.Tensor | None,
    states: torch.Tensor,
    actions: torch.Tensor,
    n_states: int,
    n_actions: int,
    dtype: torch.dtype,
) -> LeaderValues:
    """Leader values read from critic tables ``q_table`` (``[S, A]`` or ``[R, S, A]``) and,
    if given, the baseline ``v_table`` (``[S]`` or ``[R, S]``)."""
    q = _table_lookup(
        q_table, states * n_actions + actions, "q_table", (n_states, n_actions), dtype
    )
    return _with_baseline(q, v_table, states, n_states)


def trajectory_values(
    g_hat: torch.Tensor, v_table: torch.Tensor | None, states: torch.Tensor, n_states: int
) -> LeaderValues:
    """``Qhat_t = Ghat_t`` from the same trajectory, with the optional baseline ``v_table``."""
    return _with_baseline(g_hat, v_table, states, n_states)


def _with_baseline(
    q: torch.Tensor, v_table: torch.Tensor | None, states: torch.Tensor, n_states: int
) -> LeaderValues:
    v = None
    if v_table is not None:
        v = _table_lookup(v_table, states, "v_table", (n_states,), q.dtype)
    return LeaderValues(q, v, torch.ones_like(q, dtype=torch.bool), states, n_states)


def published_values(
    g_hat: torch.Tensor,
    states: torch.Tensor,
    actions: torch.Tensor,
    n_states: int,
    n_actions: int,
) -> LeaderValues:
    """The every-visit leader advantage of the batch, ``q_t = Abar(s_t, a_t) = avg_sa(Ghat) -
    avg_s(Ghat)`` (module docstring), with per-state centring groups."""
    sa = states * n_actions + actions
    ones = torch.ones_like(g_hat)
    n_sa = scatter_sum(ones, sa, n_states * n_actions)
    n_s = scatter_sum(ones, states, n_states)
    avg_sa = scatter_sum(g_hat, sa, n_states * n_actions) / n_sa.clamp_min(1.0)
    avg_s = scatter_sum(g_hat, states, n_states) / n_s.clamp_min(1.0)
    abar = torch.gather(avg_sa, 1, sa) - torch.gather(avg_s, 1, states)
    return LeaderValues(abar, None, torch.ones_like(g_hat, dtype=torch.bool), states, n_states)
