"""Four-Rooms for ``validate``: the exact hypergradient at a fixed leader point, ``M`` independent
estimates of it, and short outer-loop runs (``docs/validate.md``).

Settings (:data:`PRESETS`): ``default`` is the paper's model (two goals, preset ``paper``
dynamics) at lambda 0.005 / beta 1, the setting of the Table 1 unbiasedness test; ``bchg`` is
BC-HG's own Four-Rooms setting (one goal (1,9), incentive cost 5, one environment of 100 steps
per estimate, budgets 100 / 200 / 400 / 1,000; ``docs/validate.md`` says which details follow
their code). The fixed point is ``x ~ N(0, 0.3^2)`` (generator seed 11), where both contexts'
gradients are far from zero, as in ``bench/four_rooms_estimator_bias.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from tabular_reference.common.estimator_api import Estimator, registered
from tabular_reference.four_rooms import hpgd_kernels, kernels
from tabular_reference.four_rooms.algorithms import HPGD_ESTIMATORS, RunConfig, run
from tabular_reference.four_rooms.env import FOUR_ROOMS, GOALS
from tabular_reference.four_rooms.hypergradient import estimate, sample_buffers
from tabular_reference.four_rooms.leader import logits_gradient
from tabular_reference.four_rooms.solver import FollowerSolver
from tabular_reference.validate.harness import Harness

__all__ = ["PRESETS", "FourRoomsHarness", "FourRoomsSetting"]


@dataclass(frozen=True)
class FourRoomsSetting:
    """The model (``beta`` follower temperature, ``budget_cost``, ``goals``, ``dynamics``),
    the sampling layout (``n_envs`` environments per estimate), the budgets (``steps`` for the
    bias test, ``steps_grid`` for the variance curve) and the outer loop (``lr``, ``iters``)."""

    beta: float = 0.005
    budget_cost: float = 1.0
    goals: tuple[tuple[int, int], ...] = GOALS
    dynamics: str = "paper"
    n_envs: int = 5
    steps: int = 10_000
    steps_grid: tuple[int, ...] = (1_000, 10_000)
    lr: float = 0.5
    iters: int = 1_000
    x_std: float = 0.3
    x_seed: int = 11
    references: tuple[str, ...] = field(default=("hpgd", "hpgd-published"))


PRESETS = {
    "default": FourRoomsSetting(),
    "bchg": FourRoomsSetting(
        beta=0.001,
        budget_cost=5.0,
        goals=((1, 9),),
        n_envs=1,
        steps=100,
        steps_grid=(100, 200, 400, 1_000),
        lr=0.1,
        iters=2_000,
        references=("hpgd", "hpgd-published-clip"),
    ),
}


class FourRoomsHarness(Harness):
    """The validate harness of Four-Rooms (module docstring)."""

    env = "four-rooms"
    PRESETS = PRESETS
    PAPER_KEYS: ClassVar[dict[str, str]] = {"beta": "lam", "budget_cost": "beta"}

    def __init__(self, setting: FourRoomsSetting, preset: str = "default") -> None:
        super().__init__(setting, preset)
        self.goal_cells = np.array([FOUR_ROOMS.goal_index(tuple(g)) for g in setting.goals])
        rng = np.random.default_rng(setting.x_seed)
        self.x0 = rng.normal(0.0, setting.x_std, FOUR_ROOMS.n_params)
        for steps in (setting.steps, *setting.steps_grid):
            self._config(1, steps).validate()  # one-line errors before any work

    @property
    def contexts(self) -> list[str]:
        return [f"goal {tuple(g)}" for g in self.s.goals]

    def _config(self, m: int, steps: int, **kw) -> RunConfig:
        s = self.s
        return RunConfig(
            algo=kw.pop("algo", "hpgd"),
            beta=s.beta,
            budget_cost=s.budget_cost,
            lrs=[s.lr],
            seeds=list(range(m)),
            steps_per_iter=steps,
            n_envs=s.n_envs,
            goals=[tuple(g) for g in s.goals],
            dynamics=s.dynamics,
            **kw,
        )

    def exact(self) -> list[tuple[float, np.ndarray]]:
        """``(F_xi(x0), dF_xi/dx(x0))`` per context, exactly (adjoint)."""
        cfg = self._config(1, self.s.steps)
        solver = FollowerSolver(1, self.goal_cells, cfg)
        out = []
        for k in range(len(self.goal_cells)):
            sol = solver.solve(self.x0[None], np.array([k]), True)
            g = logits_gradient(
                sol.sigma, sol.grad_penalty, sol.grad_goal_value, cfg.budget_cost, sol.goal
            )
            out.append((float(sol.F[0]), g[0]))
        return out

    def estimates(
        self, est: Estimator, k: int, steps: int, m: int, seed: int, warmup: int
    ) -> np.ndarray:
        """``m`` independent estimates ``[m, 105]`` at ``x0``, context ``k``, ``steps`` steps
        each. A stateful estimator (one that keeps ``model.memory``) is first called ``warmup``
        times at the same point, as over earlier outer iterations; runs never share state."""
        cfg = self._config(m, steps)
        solver = FollowerSolver(m, self.goal_cells, cfg)
        sol = solver.solve(np.repeat(self.x0[None], m, 0), np.full(m, k), False)
        kernels.seed_rng(seed)
        xr = np.stack([hpgd_kernels.seed_state(seed * 1_000_003 + i) for i in range(m)])
        memory: dict = {}
        rng = np.random.default_rng([seed, k])
        buffers = sample_buffers(m, steps)
        for _ in range(warmup + 1):
            g = estimate(est, sol, cfg, buffers, xr, memory, rng)
            if not memory:
                break
        return g

    def outer(self, name: str, seeds: list[int], iters: int, progress: bool) -> dict:
        """``iters`` outer iterations per seed with the estimator ``name`` (a built-in algorithm
        runs as itself, fused where it has a fused path); the exact ``F`` every ``iters / 100``
        iterations and its mean over the last 10%."""
        builtin = name in HPGD_ESTIMATORS and name in registered(self.env)
        cfg = self._config(
            0,
            self.s.steps,
            algo=name if builtin else "hpgd",
            estimator=None if builtin else name,
            iters=iters,
            eval_every=max(1, iters // 100),
            eval_last=max(1, iters // 10),
        )
        cfg.seeds = list(seeds)
        res = run(cfg, progress=progress, desc=f"outer loop {name}")
        return {
            "F_last": res.F_last.tolist(),
            "t": res.eval_iters.tolist(),
            "F": res.F.tolist(),
        }
