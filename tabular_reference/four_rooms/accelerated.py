"""HPGD with learning followers on Four-Rooms, plain and accelerated (``docs/accelerated.md``).

The follower is a :class:`tabular_reference.four_rooms.learning.LearningFollower` (soft
value-iteration sweeps, warm-started from one outer iteration to the next) or, with
``follower_steps=None`` and no schedule, the exact solver (the ``n = inf`` case, identical to
``algorithms.run``'s HPGD step). Per outer iteration and run, one context is sampled and

* **plain** HPGD (``follower_steps = n``): the follower trains ``n`` sweeps at the current
  leader logits, then the HPGD estimate is computed from ``steps_per_iter`` sampled steps of its
  softmax policy (:func:`tabular_reference.four_rooms.hypergradient.hypergradient`, the
  estimator of ``RunConfig.algo``);
* **accelerated** HPGD (a multilevel schedule ``base_steps, max_level, probabilities``): the
  randomised multilevel estimate of ``docs/theory.md`` §9
  (:func:`align_cbrl.estimators.multilevel.multilevel_estimate`): the follower trains
  ``n_0``, then on to ``n_0 2^k`` sweeps for ``k = 1..J`` (one continued run), an HPGD estimate
  at each level. The levels of one estimate are coupled (``coupling``): ``"episodes"``
  (default) samples every level with the same episode-synchronised uniforms
  (:mod:`tabular_reference.four_rooms.coupled_sampling`), ``"stream"`` replays one uniform
  stream per level (the fused sampler's state reset), ``"independent"`` continues the stream.

Then ``x <- x + lr clip_1(g)``. Runs stop when their follower has trained ``budget`` sweeps in
total (equal follower compute), or after ``RunConfig.iters`` iterations without a budget. The
metric is the exact ``F(x)`` (soft-optimal followers), recorded with the follower updates spent
so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from align_cbrl.estimators.multilevel import (
    MultilevelEstimate,
    MultilevelSchedule,
    multilevel_estimate,
)
from tabular_reference.common.optim import sgd_ascent
from tabular_reference.four_rooms import hpgd_kernels
from tabular_reference.four_rooms.algorithms import HPGD_ESTIMATORS, RunConfig
from tabular_reference.four_rooms.coupled_sampling import coupled_hypergradient
from tabular_reference.four_rooms.env import FOUR_ROOMS
from tabular_reference.four_rooms.hypergradient import FUSED, hypergradient, sample_buffers
from tabular_reference.four_rooms.learning import LearningFollower
from tabular_reference.four_rooms.solver import FollowerSolver

__all__ = ["LearningConfig", "LearningResult", "multilevel_hypergradient", "run_learning"]

LEARNING_ALGORITHMS = ("hpgd", "hpgd-published", "naive")  # the fused estimators
COUPLINGS = ("episodes", "stream", "independent")


@dataclass
class LearningConfig:
    """How the followers learn and how the leader estimates (module docstring).

    ``follower_steps``: ``n`` sweeps per outer iteration (plain HPGD); ``None`` with no schedule
    is the exact solver. ``base_steps, max_level, probabilities``: the multilevel schedule
    (accelerated HPGD; ``probabilities=None`` is ``p_j ∝ 2^-j``). ``warm_start``: keep the
    follower's table between iterations (required by the schedule). ``budget``: total follower
    sweeps per run (``None``: ``RunConfig.iters`` iterations). ``eval_every``: iterations
    between exact evaluations of ``F``."""

    follower_steps: int | None = None
    warm_start: bool = True
    base_steps: int | None = None
    max_level: int | None = None
    probabilities: list[float] | None = None
    coupling: str = "episodes"
    budget: int | None = None
    eval_every: int = 10
    max_iters: int = 1_000_000

    @property
    def multilevel(self) -> bool:
        return self.base_steps is not None or self.max_level is not None

    def schedule(self) -> MultilevelSchedule:
        """The core's schedule (it checks ``max_level >= 1`` and ``sum p = 1``)."""
        probs = None if self.probabilities is None else tuple(self.probabilities)
        return MultilevelSchedule(self.base_steps, self.max_level, probs)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        if self.multilevel:
            return f"hpgd-mlmc n0={self.base_steps} J={self.max_level}"
        return "hpgd exact" if self.follower_steps is None else f"hpgd n={self.follower_steps}"

    def validate(self) -> None:
        """One-line errors, before any training."""
        if self.multilevel:
            if self.base_steps is None or self.max_level is None:
                raise ValueError("the multilevel schedule needs both base_steps and max_level")
            if self.follower_steps is not None:
                raise ValueError(
                    "give either follower_steps (plain HPGD) or a multilevel schedule "
                    "(base_steps, max_level), not both"
                )
            if not self.warm_start:
                raise ValueError(
                    "the multilevel estimator continues the follower's training from level to "
                    "level; a follower without warm start (warm_start=False) cannot continue: "
                    "set warm_start=True"
                )
            self.schedule()
        elif self.follower_steps is not None and (
            isinstance(self.follower_steps, bool) or self.follower_steps < 1
        ):
            raise ValueError(f"follower_steps must be >= 1 (or None), got {self.follower_steps}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be >= 1 follower update, got {self.budget}")
        if self.budget is not None and not self.multilevel and self.follower_steps is None:
            raise ValueError("a follower-update budget needs a learning follower (follower_steps)")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")


@dataclass
class LearningResult:
    """Per run: ``trace_updates[E, R]`` follower sweeps spent and ``trace_F[E, R]`` exact ``F``
    at the recorded iterations ``trace_iter[E]``; ``final_F[R]``, ``final_x[R, 105]``,
    ``updates[R]`` and ``iters[R]`` at the end; for the multilevel estimator ``levels`` (every
    drawn ``J``)."""

    config: RunConfig
    learning: LearningConfig
    trace_iter: np.ndarray
    trace_updates: np.ndarray
    trace_F: np.ndarray
    final_F: np.ndarray
    final_x: np.ndarray
    updates: np.ndarray
    iters: np.ndarray
    levels: list[int] = field(default_factory=list)
    wall_s: float = 0.0


def _check(cfg: RunConfig, learn: LearningConfig) -> None:
    cfg.validate()
    learn.validate()
    if cfg.algo not in LEARNING_ALGORITHMS or cfg.estimator_backend != "fused":
        raise ValueError(
            f"learning followers run the fused estimators {LEARNING_ALGORITHMS} "
            f"(estimator_backend='fused'), got algo={cfg.algo!r}, backend={cfg.estimator_backend!r}"
        )
    if cfg.follower_solve != "exact":
        raise ValueError(
            "learning followers replace the follower solve; keep follower_solve='exact'"
        )


class _Leader:
    """One job's random streams, followers and the estimate of each variant."""

    def __init__(self, cfg: RunConfig, learn: LearningConfig, n_runs: int) -> None:
        self.cfg, self.learn = cfg, learn
        self.goals = np.array([FOUR_ROOMS.goal_index(tuple(g)) for g in cfg.goals], np.int64)
        self.exact = FollowerSolver(n_runs, self.goals, cfg)  # the metric, and n = inf
        self.follower = (
            None
            if learn.follower_steps is None and not learn.multilevel
            else LearningFollower(n_runs, self.goals, cfg, learn.warm_start)
        )
        # the context stream of algorithms.run (its first two draws seed samplers unused here)
        self.rng = np.random.default_rng([cfg.job_seed, 7])
        self.rng.integers(2**31 - 1)
        self.tgen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        seeds_x = np.random.default_rng([cfg.job_seed, 11]).integers(2**63, size=n_runs)
        self.xrng = np.stack([hpgd_kernels.seed_state(int(v)) for v in seeds_x])
        self.form, self.leader_q = HPGD_ESTIMATORS[cfg.algo]
        assert (self.form, None if self.form in ("naive", "published") else self.leader_q) in FUSED
        self.schedule = learn.schedule() if learn.multilevel else None
        self.levels: list[int] = []

    def updates(self, n_runs: int) -> np.ndarray:
        return np.zeros(n_runs, np.int64) if self.follower is None else self.follower.updates

    def gradient(self, x: np.ndarray, runs: np.ndarray) -> np.ndarray:
        """The estimate ``g[len(runs), 105]`` for the runs ``runs`` at their logits ``x``."""
        ctx = self.rng.integers(len(self.goals), size=len(runs))
        if self.schedule is not None:
            return np.stack(
                [self._multilevel(x[i : i + 1], ctx[i : i + 1], r) for i, r in enumerate(runs)]
            )
        if self.follower is None:  # n = inf: every run is active (no budget)
            sol = self.exact.solve(x, ctx, False)
        else:
            self.follower.advance(x, ctx, self.learn.follower_steps, runs=runs)
            sol = self.follower.solution(x, ctx, runs=runs)
        state = self.xrng[runs]
        g = hypergradient(sol, self.cfg, self.form, None, None, self.leader_q, state)
        self.xrng[runs] = state
        return g

    def _multilevel(self, x: np.ndarray, ctx: np.ndarray, r: int) -> np.ndarray:
        """One §9.1 draw for run ``r``."""
        est = multilevel_hypergradient(
            self.follower,
            x,
            ctx,
            r,
            self.cfg,
            self.schedule,
            self.xrng[r],
            generator=self.tgen,
            coupling=self.learn.coupling,
        )
        self.levels.append(est.level)
        return est.gradient.numpy()


def multilevel_hypergradient(
    follower: LearningFollower,
    x: np.ndarray,
    ctx: np.ndarray,
    run: int,
    cfg: RunConfig,
    schedule: MultilevelSchedule,
    rng_state: np.ndarray,
    *,
    generator: torch.Generator | None = None,
    level: int | None = None,
    coupling: str = "episodes",
) -> MultilevelEstimate:
    """The multilevel HPGD estimate (``docs/theory.md`` §9.1) of run ``run`` at logits ``x[1, 105]``
    and context ``ctx[1]``: the follower continues from its stored table through the levels
    ``n_0 .. n_0 2^J`` (``level`` forces ``J``), one HPGD estimate (``cfg.algo``'s estimator,
    ``cfg.steps_per_iter`` steps) per level. ``rng_state`` (the run's ``uint64[4]`` sampler
    state) is advanced in place. ``coupling``: ``"episodes"`` -- every level samples with the
    same episode-synchronised uniforms (:mod:`.coupled_sampling`, seeded from ``rng_state``);
    ``"stream"`` -- every level replays the same single stream; ``"independent"``."""
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    form, leader_q = HPGD_ESTIMATORS[cfg.algo]
    code = FUSED[(form, None if form in ("naive", "published") else leader_q)]
    runs = np.array([run])
    start = rng_state.copy()
    buffers = sample_buffers(1, cfg.steps_per_iter)
    state = rng_state[None].copy()
    seed = np.array([int(hpgd_kernels.uniforms(state[0], 1)[0] * 2.0**53)], dtype=np.uint64)

    def advance(steps: int) -> torch.Tensor:
        nonlocal state
        follower.advance(x, ctx, steps, runs=runs)
        sol = follower.solution(x, ctx, runs=runs)
        if coupling == "episodes":
            return torch.from_numpy(coupled_hypergradient(sol, cfg, code, seed)[0])
        if coupling == "stream":
            state = start[None].copy()
        g = hypergradient(sol, cfg, form, None, buffers, leader_q, state)
        return torch.from_numpy(g[0])

    est = multilevel_estimate(advance, schedule, generator=generator, level=level)
    rng_state[:] = state[0]
    return est


def _initial_x(cfg: RunConfig, x0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(lr[R], x[R, 105])`` of the runs ``lrs x seeds``, as ``algorithms.run`` draws them."""
    grid = [(lr, s) for lr in cfg.lrs for s in cfg.seeds]
    lr = np.array([g[0] for g in grid])
    n = FOUR_ROOMS.n_params
    x = np.stack([np.random.default_rng(int(s)).normal(0.0, cfg.init_std, n) for _, s in grid])
    if x0 is not None:
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.shape != x.shape or not np.isfinite(x0).all():
            raise ValueError(f"x0 must be finite with shape {list(x.shape)} (runs = lrs x seeds)")
        x = x0.copy()
    return lr, x


def run_learning(
    cfg: RunConfig, learn: LearningConfig, x0: np.ndarray | None = None
) -> LearningResult:
    """Run the outer loop of the module docstring for every run ``lrs x seeds`` of ``cfg``."""
    _check(cfg, learn)
    t0 = time.perf_counter()
    lr, x = _initial_x(cfg, x0)
    R = len(lr)
    lead = _Leader(cfg, learn, R)
    iters = np.zeros(R, np.int64)
    trace: dict[str, list] = {"iter": [], "updates": [], "F": []}

    def record(t: int) -> None:
        trace["iter"].append(t)
        trace["updates"].append(lead.updates(R).copy())
        trace["F"].append(lead.exact.objective(x))

    limit = cfg.iters if learn.budget is None else learn.max_iters
    for t in range(limit):
        active = (
            np.arange(R) if learn.budget is None else np.flatnonzero(lead.updates(R) < learn.budget)
        )
        if len(active) == 0:
            break
        if t % learn.eval_every == 0:
            record(t)
        g = lead.gradient(x[active], active)
        x[active] = np.asarray(sgd_ascent(x[active], g, lr[active], cfg.max_norm))
        iters[active] += 1
    record(int(iters.max()))
    return LearningResult(
        config=cfg,
        learning=learn,
        trace_iter=np.array(trace["iter"]),
        trace_updates=np.array(trace["updates"]),
        trace_F=np.array(trace["F"]),
        final_F=trace["F"][-1],
        final_x=x,
        updates=lead.updates(R).copy(),
        iters=iters,
        levels=lead.levels,
        wall_s=time.perf_counter() - t0,
    )
