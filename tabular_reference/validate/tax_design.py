"""The tax design for ``validate``: the exact hypergradient at the initial rates, ``M`` independent
estimates from sampled households, and short outer-loop runs (``docs/validate.md``).

One context: the planner's objective averages both household types, and every estimate samples
both (stratified, as the outer loop does), so the estimates target the full ``dF/dtheta``.
Budgets are whole 200-step episodes, an equal number per type (``steps`` a multiple of 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from tabular_reference.common.estimator_api import Estimator
from tabular_reference.tax_design.algorithms import AlgoSettings, episodes_from_steps, run_batch
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.estimators import estimate
from tabular_reference.tax_design.hypergradient import exact_hypergradient
from tabular_reference.tax_design.rewards import initial_theta, rates
from tabular_reference.tax_design.sampling import balanced_contexts, rollout
from tabular_reference.tax_design.solver import leader_values, soft_policy_iteration
from tabular_reference.validate.harness import Harness

__all__ = ["PRESETS", "TaxHarness", "TaxSetting"]

_CHUNK = 10  # runs per call: the policy table is [runs, 202, 1250]


@dataclass(frozen=True)
class TaxSetting:
    """Household temperature ``beta``, budgets (``steps`` for the bias test, ``steps_grid`` for
    the variance curve; 200-step episodes), the outer loop's ``lr`` and ``iters``."""

    beta: float = 0.1
    steps: int = 10_000
    steps_grid: tuple[int, ...] = (2_000, 10_000, 60_000)
    lr: float = 0.01
    iters: int = 200
    references: tuple[str, ...] = ("hpgd",)


PRESETS = {"default": TaxSetting()}


class TaxHarness(Harness):
    """The validate harness of the tax design (module docstring)."""

    env = "tax-design"
    PRESETS = PRESETS
    PAPER_KEYS: ClassVar[dict[str, str]] = {"beta": "lam"}

    def __init__(self, setting: TaxSetting, preset: str = "default") -> None:
        super().__init__(setting, preset)
        self.econ = Economy()
        if not setting.beta > 0:
            raise ValueError(f"household temperature --lam must be > 0, got {setting.beta}")
        L = self.econ.config.episode_length
        for steps in (setting.steps, *setting.steps_grid):
            episodes_from_steps(steps, L, "--steps")  # one-line errors before any work
        self._solutions: dict[int, tuple] = {}

    @property
    def contexts(self) -> list[str]:
        return ["both household types"]

    def exact(self) -> list[tuple[float, np.ndarray]]:
        F, g, _ = exact_hypergradient(self.econ, initial_theta(1), self.s.beta)
        return [(float(F[0]), g[0].numpy())]

    def _solution(self, n: int) -> tuple:
        """``(theta, beta, households, Vbar)`` for ``n`` runs at the initial rates (cached)."""
        if n not in self._solutions:
            theta = initial_theta(n)
            beta = torch.full((n,), self.s.beta, dtype=torch.float64)
            sol = soft_policy_iteration(self.econ, theta, beta, tol=1e-12)
            x = rates(theta)
            vbar = leader_values(self.econ, sol.P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
            self._solutions[n] = (theta, beta, sol, vbar)
        return self._solutions[n]

    def estimates(
        self, est: Estimator, k: int, steps: int, m: int, seed: int, warmup: int
    ) -> np.ndarray:
        """``m`` independent estimates ``[m, 4]`` from ``steps / 200`` episodes each (both
        household types, equal shares), in chunks of runs with their own memory; a stateful
        estimator is first called ``warmup`` times (as :meth:`FourRoomsHarness.estimates`)."""
        episodes = episodes_from_steps(steps, self.econ.config.episode_length, "--steps")
        out = []
        for lo in range(0, m, _CHUNK):
            n = min(_CHUNK, m - lo)
            theta, beta, sol, vbar = self._solution(n)
            gen = torch.Generator().manual_seed(seed * 7_919 + lo)
            memory: dict = {}
            rng = np.random.default_rng([seed, lo])
            contexts = balanced_contexts(self.econ, n, episodes)
            for _ in range(warmup + 1):
                L = self.econ.config.episode_length
                traj = rollout(self.econ, sol, rates(theta)[:, 0], contexts, L, gen)
                g = estimate(
                    est,
                    self.econ,
                    theta,
                    beta,
                    sol,
                    traj,
                    memory=memory,
                    rng=rng,
                    leader_values=vbar if est.oracle else None,
                )
                if not memory:
                    break
            out.append(g.numpy())
        return np.concatenate(out)

    def outer(self, name: str, seeds: list[int], iters: int, progress: bool) -> dict:
        """``iters`` outer iterations per seed (``hpgd`` / ``naive`` as themselves, any other
        estimator in HPGD's place); the exact welfare at every iterate, its mean over the last
        10% of them per seed."""
        algo = "naive" if name == "naive" else "hpgd"
        est = None if name in ("hpgd", "naive") else name
        episodes = episodes_from_steps(self.s.steps, self.econ.config.episode_length, "--steps")
        settings = AlgoSettings(lr=self.s.lr, episodes=episodes, estimator=est)
        hist = run_batch(
            self.econ,
            algo,
            [self.s.beta] * len(seeds),
            list(seeds),
            iters,
            settings,
            progress=progress,
            desc=f"outer loop {name}",
        )
        last = max(1, iters // 10)
        t = np.arange(iters + 1)
        return {
            "F_last": hist.welfare[-last:].mean(0).tolist(),
            "t": t.tolist(),
            "F": hist.welfare.T.tolist(),
        }
