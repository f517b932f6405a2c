"""A leader critic learned from sampled trajectories: ``Vbar(type, bin)`` by Monte-Carlo averaging.

Used by HPGD with ``leader_q="table"`` (:mod:`hpgd`) when the planner should not use the model's
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
from torch import Tensor

from align_cbrl.estimators.trajectory import discounted_returns, per_state_sum, time_in_episode
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
        T_ep = self.econ.config.episode_length
        g_hat = discounted_returns(rewards, episode_start, self.econ.gamma)
        usable = (time_in_episode(episode_start) <= T_ep - self.horizon).to(rewards.dtype)
        n_cells = self.sums.shape[1]
        self.sums = self.decay * self.sums + per_state_sum(g_hat * usable, joint_state, n_cells)
        self.counts = self.decay * self.counts + per_state_sum(usable, joint_state, n_cells)

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
