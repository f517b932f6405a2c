"""A leader critic learned from sampled trajectories: ``Vbar(type, bin)`` by Monte-Carlo averaging.

Used by HPGD with ``leader_q="table"`` (:mod:`hypergradient`) when the planner should not use the model's
exact ``Vbar``. After each outer iteration, every sampled step whose episode still has at least
``horizon`` steps to run contributes its within-episode return ``Ghat_t`` (truncation error
``<= gamma^horizon * max|rbar| / (1 - gamma)``) to its (household type, bin) cell:

    sums  <- decay * sums  + sum_{t: cell(t) = i} Ghat_t,     counts <- decay * counts + n_i
    Vbar_hat(i) = sums(i) / counts(i)                                                        (C)

(visit-weighted average with exponential forgetting, since the planner's parameters drift).
Cells never visited take the value of the nearest visited bin of the same type (linear
interpolation along the asset axis). The critic used at iteration ``t`` is built from iterations
``< t`` only, so it is independent of the samples it is combined with.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

from tabular_reference.tax_design.economy import Economy

__all__ = ["MonteCarloCritic"]


class MonteCarloCritic:
    """Running (C) for ``R`` runs; ``values()`` -> ``[R, C, S]``, ``None`` before any update."""

    def __init__(
        self, econ: Economy, n_runs: int, *, decay: float = 0.9, horizon: int = 100
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"critic decay must lie in [0, 1), got {decay}")
        if not 1 <= horizon < econ.config.episode_length:
            raise ValueError(
                f"critic horizon must lie in [1, {econ.config.episode_length - 1}], got {horizon}"
            )
        self.econ = econ
        self.decay = decay
        self.horizon = horizon
        n_cells = econ.n_contexts * econ.n_states
        self.sums = torch.zeros(n_runs, n_cells, dtype=torch.float64)
        self.counts = torch.zeros(n_runs, n_cells, dtype=torch.float64)

    def update(self, joint_state: Tensor, rewards: Tensor, episode_start: Tensor) -> None:
        """Add one iteration's steps (``[R, T]`` layout of the core estimator)."""
        if not joint_state.shape == rewards.shape == episode_start.shape:
            raise ValueError(
                f"joint_state {tuple(joint_state.shape)}, rewards {tuple(rewards.shape)} and "
                f"episode_start {tuple(episode_start.shape)} must have equal shapes"
            )
        n_cells = self.sums.shape[1]
        sums = np.zeros_like(self.sums.numpy())
        counts = np.zeros_like(sums)
        _returns_per_cell(
            joint_state.to(torch.int64).contiguous().numpy(),
            rewards.detach().to(torch.float64).contiguous().numpy(),
            episode_start.contiguous().numpy(),
            float(self.econ.gamma),
            self.econ.config.episode_length - self.horizon,
            n_cells,
            sums,
            counts,
        )
        self.sums = self.decay * self.sums + torch.from_numpy(sums)
        self.counts = self.decay * self.counts + torch.from_numpy(counts)

    def values(self) -> Tensor | None:
        if not bool((self.counts > 0).any()):
            return None
        R = self.sums.shape[0]
        C, S = self.econ.n_contexts, self.econ.n_states
        visited = (self.counts > 1e-12).reshape(R, C, S).numpy()
        mean = (self.sums / self.counts.clamp_min(1e-300)).reshape(R, C, S).numpy()
        x = self.econ.centres.numpy()
        out = np.zeros((R, C, S))
        for r in range(R):
            for c in range(C):
                v = visited[r, c]
                if v.any():
                    out[r, c] = np.interp(x, x[v], mean[r, c, v])
        return torch.from_numpy(out)


@njit(cache=True, nogil=True)
def _returns_per_cell(cells, rewards, episode_start, gamma, last_usable, n_cells, sums, counts):
    """Per run: the within-episode return ``Ghat_t = sum_{k>=t, same episode} gamma^(k-t) r_k``
    (a backward pass) of every step whose time in its episode is ``<= last_usable``, summed per
    cell into ``sums[r, cell]``, with the step count in ``counts[r, cell]`` (the update of (C))."""
    R, T = rewards.shape
    g = np.empty(T)
    for r in range(R):
        acc = 0.0
        for t in range(T - 1, -1, -1):
            nxt_in_episode = t + 1 < T and not episode_start[r, t + 1]
            acc = rewards[r, t] + (gamma * acc if nxt_in_episode else 0.0)
            g[t] = acc
        tau = 0
        for t in range(T):
            tau = 0 if (episode_start[r, t] or t == 0) else tau + 1
            if tau <= last_usable:
                sums[r, cells[r, t]] += g[t]
                counts[r, cells[r, t]] += 1.0
