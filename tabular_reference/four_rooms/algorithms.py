"""Leader algorithms on Four-Rooms, one API, batched over runs (learning rates x seeds [x c]).

* ``hpgd``     -- HPGD from sampled trajectories only (``docs/theory.md`` §2, §4, §5): per run and
  iteration one sampled context, the exact soft-optimal follower, ``n_envs x steps``
  environment steps, and the library estimator :func:`align_cbrl.estimators.trajectory.hpgd_weights`
  (``form="mc"``, the paper's Monte-Carlo form plus the direct term, with cross-fitted leader
  values). ``hpgd-cov`` uses ``form="covariance"`` with a leader-side baseline (an EMA table of
  per-state leader returns from previous iterations, per context); ``naive`` uses
  ``form="naive"`` (direct term only). ``hpgd-paper`` is the paper's plain Monte-Carlo product:
  ``form="mc"`` with the leader's return ``Ghat_t`` from the *same* trajectory
  (``leader_q="trajectory"``), which is biased by ``Cov(Dhat_t, Ghat_t | s_t, a_t)``
  (docs/four_rooms.md); kept to compare with the paper. ``hpgd-published`` is the estimator of
  the published code (:func:`align_cbrl.estimators.published.published_hpgd_weights`, §7).
* ``exact``    -- ascent along the exact deterministic hypergradient, full expectation over the
  contexts (the paper's AMD column; §8).
* ``zero_order`` -- Gaussian smoothing ``g = (F_xi(x + u_t z) - F_xi(x)) z / u_t``, ``u_t = c / t``,
  one sampled context, exact values (§8).

The follower plans (and exact ascent, zero-order and the metric are computed) in the ``plan``
slip model of ``RunConfig.dynamics``; HPGD's trajectories are sampled from its ``sample`` model
(:mod:`tabular_reference.four_rooms.dynamics`; default preset ``paper``). The gradients come
from :mod:`tabular_reference.four_rooms.hypergradient`.

All update ``x <- x + lr * clip_1(g)`` (SGD ascent, global-norm clipping at 1). The metric is the
exact ``F(x_t)`` averaged over the contexts, recorded every ``eval_every`` iterations and at
every one of the last ``eval_last`` iterations.

Temperature names: in code ``beta`` is the follower temperature and ``budget_cost`` the leader's
cost per unit of penalty budget; the paper writes them ``lambda`` and ``beta``, and so do the
CLI flags (``--lam``, ``--beta``), YAML files and results JSON (``"lam"``, ``"beta"``):
:meth:`RunConfig.from_dict` / :meth:`RunConfig.to_dict` translate at that edge.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from align_cbrl.estimators.vocabulary import check_algorithm
from align_cbrl.estimators.zero_order import gaussian_smoothing_gradient, sample_directions
from tabular_reference.common.estimator_api import resolve
from tabular_reference.common.optim import sgd_ascent
from tabular_reference.four_rooms import hpgd_kernels, kernels
from tabular_reference.four_rooms.dynamics import Dynamics, resolve_dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS, GOALS
from tabular_reference.four_rooms.hypergradient import estimate, exact_hypergradient, sample_buffers
from tabular_reference.four_rooms.leader import BUDGET_MODES
from tabular_reference.four_rooms.solver import FollowerSolver

ALGORITHMS = ("hpgd", "hpgd-cov", "hpgd-paper", "hpgd-published", "naive", "exact", "zero_order")
# algorithm -> (estimator form, source of the leader values; estimators.builtin_for); each is
# also the name of its built-in in the estimator registry (tabular_reference.four_rooms.estimators)
HPGD_ESTIMATORS = {
    "hpgd": ("mc", "crossfit"),
    "hpgd-cov": ("covariance", "table"),
    "hpgd-paper": ("mc", "trajectory"),
    "hpgd-published": ("published", None),
    "naive": ("naive", None),
}
BACKENDS = ("fused", "library")
# exact: soft-optimal follower (banded Newton); published: the published code's truncated solve
# (Q = 0, 100 improvements x 5 sweeps, goal with beta H), a variant to explain lambda = 0.005
FOLLOWER_SOLVES = ("exact", "published")
# the paper's notation at the YAML / JSON edge -> RunConfig field
PAPER_KEYS = {"lam": "beta", "beta": "budget_cost"}


@dataclass
class RunConfig:
    """One batched job: every combination of ``lrs x cs x seeds`` is an independent run
    (``cs`` is used by ``zero_order`` only). ``beta``: follower temperature (> 0);
    ``budget_cost``: the leader's cost per unit of penalty budget (>= 0); ``estimator``: with
    ``algo="hpgd"``, another estimator in HPGD's place (a registered name or
    ``"module:function"``, ``docs/validate.md``)."""

    algo: str
    beta: float
    budget_cost: float
    lrs: list[float]
    seeds: list[int]
    iters: int = 10_000
    steps_per_iter: int = 10_000
    n_envs: int = 5
    cs: list[float] = field(default_factory=lambda: [1.0])
    goals: list[tuple[int, int]] = field(default_factory=lambda: [tuple(g) for g in GOALS])
    eval_every: int = 10
    eval_last: int = 1_000
    tol: float = 1e-10
    max_newton: int = 100
    max_norm: float = 1.0
    init_std: float = 0.01
    budget_mode: str = "all"
    step_reward: float = 0.0
    baseline_ema: float = 0.1
    job_seed: int = 0
    dynamics: str | dict = "paper"
    estimator_backend: str = "fused"
    follower_solve: str = "exact"
    estimator: str | None = None

    def __post_init__(self) -> None:
        self.goals = [tuple(g) for g in self.goals]  # (row, col); JSON / YAML give lists

    @classmethod
    def edge_keys(cls) -> list[str]:
        """The keys of :meth:`from_dict` / :meth:`to_dict`: the field names with the paper's
        ``lam`` (follower temperature) and ``beta`` (budget cost)."""
        return sorted(({f.name for f in fields(cls)} - set(PAPER_KEYS.values())) | set(PAPER_KEYS))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """From the paper-notation mapping of YAML files and results JSON (``lam`` = follower
        temperature, ``beta`` = budget cost); unknown keys are errors."""
        unknown = sorted(set(data) - set(cls.edge_keys()))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed: {cls.edge_keys()}")
        return cls(**{PAPER_KEYS.get(k, k): v for k, v in data.items()})

    @property
    def model(self) -> Dynamics:
        """The resolved planning/sampling dynamics (:func:`resolve_dynamics`)."""
        return resolve_dynamics(self.dynamics)

    def validate(self) -> None:
        check_algorithm(self.algo, ALGORITHMS)
        if not self.beta > 0:
            raise ValueError(f"follower temperature beta (--lam) must be > 0, got {self.beta}")
        if not self.budget_cost >= 0:
            raise ValueError(f"budget_cost (--beta) must be >= 0, got {self.budget_cost}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(
                f"learning rates must be a non-empty list of values > 0, got {self.lrs}"
            )
        if not self.seeds:
            raise ValueError("seeds must be a non-empty list")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        self._validate_sampling()
        if self.estimator is not None:
            if self.algo != "hpgd":
                raise ValueError(
                    f"estimator={self.estimator!r} replaces HPGD's estimator: use it with "
                    f"algo 'hpgd', got {self.algo!r}"
                )
            resolve(self.estimator, "four-rooms")
        if self.algo == "zero_order" and (not self.cs or any(not c > 0 for c in self.cs)):
            raise ValueError(f"zero-order constants c must be > 0, got {self.cs}")
        if not self.goals:
            raise ValueError("at least one goal (context) is needed")
        for g in self.goals:
            FOUR_ROOMS.goal_index(tuple(g))
        if self.budget_mode not in BUDGET_MODES:
            raise ValueError(f"budget_mode must be one of {BUDGET_MODES}, got {self.budget_mode!r}")
        if not 0 < self.baseline_ema <= 1:
            raise ValueError(f"baseline_ema must be in (0, 1], got {self.baseline_ema}")
        if self.eval_every < 1 or self.eval_last < 1:
            raise ValueError("eval_every and eval_last must be >= 1")
        resolve_dynamics(self.dynamics)
        for name, value, choices in (
            ("follower_solve", self.follower_solve, FOLLOWER_SOLVES),
            ("estimator_backend", self.estimator_backend, BACKENDS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")

    def _validate_sampling(self) -> None:
        if self.n_envs < 1 or self.steps_per_iter < self.n_envs:
            raise ValueError(
                f"need n_envs >= 1 and steps_per_iter >= n_envs, got n_envs={self.n_envs}, "
                f"steps_per_iter={self.steps_per_iter}"
            )
        if self.steps_per_iter % self.n_envs:
            raise ValueError(
                f"steps_per_iter={self.steps_per_iter} must be divisible by n_envs={self.n_envs}"
            )

    def to_dict(self) -> dict:
        """The paper-notation mapping written to results JSON (see :meth:`from_dict`)."""
        edge = {field_name: key for key, field_name in PAPER_KEYS.items()}
        d = {edge.get(k, k): v for k, v in asdict(self).items()}
        d["goals"] = [list(g) for g in self.goals]
        if self.estimator is None:  # records of the built-in algorithms keep their keys
            del d["estimator"]
        if isinstance(self.dynamics, dict):
            d["dynamics"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.dynamics.items()
            }
        return d


@dataclass
class RunResult:
    """``eval_iters[E]`` (iteration t of ``F(x_t)``), ``F[R, E]`` exact objective,
    ``final_x[R, 105]``, per-run ``lr[R]``, ``c[R]``, ``seed[R]``, the metric
    ``F_last[R]`` (mean of F over the last ``eval_last`` iterations) and timings."""

    config: RunConfig
    eval_iters: np.ndarray
    F: np.ndarray
    final_x: np.ndarray
    lr: np.ndarray
    c: np.ndarray
    seed: np.ndarray
    F_last: np.ndarray
    wall_s: float
    newton_iters_mean: float


def _eval_schedule(iters: int, every: int, last: int) -> np.ndarray:
    t = np.arange(iters + 1)
    keep = (t % every == 0) | (t > iters - last) | (t == iters)
    return t[keep]


def _initial_runs(
    cfg: RunConfig, x0: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(lr[R], c[R], seed[R], x[R, 105])`` of the runs ``lrs x cs x seeds``."""
    cs = cfg.cs if cfg.algo == "zero_order" else [float("nan")]
    grid = [(lr, c, s) for lr in cfg.lrs for c in cs for s in cfg.seeds]
    lr, cvec, seeds = (np.array([g[i] for g in grid]) for i in range(3))
    n_params = FOUR_ROOMS.n_params
    x = np.stack([np.random.default_rng(int(s)).normal(0.0, cfg.init_std, n_params) for s in seeds])
    if x0 is not None:
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.shape != x.shape:
            raise ValueError(
                f"x0 must have shape {list(x.shape)} (runs = lrs x cs x seeds, {n_params} "
                f"logits), got {list(x0.shape)}"
            )
        if not np.isfinite(x0).all():
            raise ValueError("x0 contains NaN/inf")
        x = x0.copy()
    return lr, cvec, seeds, x


class _Gradients:
    """The gradient step of each algorithm, sharing one job's solver and random streams."""

    def __init__(self, cfg: RunConfig, n_runs: int, cvec: np.ndarray) -> None:
        env = FOUR_ROOMS
        self.cfg, self.cvec = cfg, cvec
        self.goals = np.array([env.goal_index(tuple(g)) for g in cfg.goals], dtype=np.int64)
        self.n_ctx = len(self.goals)
        self.solver = FollowerSolver(n_runs, self.goals, cfg)
        self.rng = np.random.default_rng([cfg.job_seed, 7])
        kernels.seed_rng(int(self.rng.integers(2**31 - 1)))
        self.tgen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        if cfg.algo in HPGD_ESTIMATORS:
            self.buffers = sample_buffers(n_runs, cfg.steps_per_iter)
            # the fused sampler's per-run xoshiro256+ streams (a separate seed sequence, so that
            # the library backend's stream is unchanged)
            seeds_x = np.random.default_rng([cfg.job_seed, 11]).integers(2**63, size=n_runs)
            self.xrng = np.stack([hpgd_kernels.seed_state(int(v)) for v in seeds_x])
            # the estimator (a built-in of the same name or cfg.estimator), its memory across
            # iterations (critics) and its own generator
            self.estimator = resolve(cfg.estimator or cfg.algo, "four-rooms")
            self.memory: dict = {}
            self.est_rng = np.random.default_rng([cfg.job_seed, 13])

    def exact(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact ascent: ``(g, F)`` averaged over all contexts."""
        R = x.shape[0]
        g = np.zeros_like(x)
        F_sum = np.zeros(R)
        for k in range(self.n_ctx):
            F, g_k = exact_hypergradient(self.solver, x, np.full(R, k))
            F_sum += F
            g += g_k
        return g / self.n_ctx, F_sum / self.n_ctx

    def sampled(self, x: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """HPGD / zero-order at one sampled context per run: ``(g, F_ctx, ctx)``."""
        ctx = self.rng.integers(self.n_ctx, size=x.shape[0])
        sol = self.solver.solve(x, ctx, False)
        if self.cfg.algo == "zero_order":
            z = sample_directions(self.tgen, x.shape).numpy()
            u = self.cvec / (t + 1)
            F_plus = self.solver.solve(x + u[:, None] * z, ctx, False, store=False).F
            g = gaussian_smoothing_gradient(
                torch.from_numpy(F_plus),
                torch.from_numpy(sol.F),
                torch.from_numpy(z),
                torch.from_numpy(u),
            ).numpy()
            return g, sol.F, ctx
        g = estimate(
            self.estimator, sol, self.cfg, self.buffers, self.xrng, self.memory, self.est_rng
        )
        return g, sol.F, ctx

    def context_mean(self, x: np.ndarray, ctx: np.ndarray, F_ctx: np.ndarray) -> np.ndarray:
        """``F(x)``, reusing the values ``F_ctx`` already solved at the sampled contexts: each
        other context is solved only for the runs that did not sample it (re-solving a sampled
        one would start converged and return the same value)."""
        if self.n_ctx == 1:
            return F_ctx
        total = np.zeros(x.shape[0])
        for k in range(self.n_ctx):
            F_k = F_ctx.copy()
            other = np.flatnonzero(ctx != k)
            if other.size:
                F_k[other] = self.solver.solve(
                    x[other], np.full(other.size, k), False, runs=other
                ).F
            total += F_k
        return total / self.n_ctx


def run(
    cfg: RunConfig, progress: bool = True, desc: str | None = None, x0: np.ndarray | None = None
) -> RunResult:
    """Run one batched job (see :class:`RunConfig`). ``x0[R, 105]`` (optional) replaces the
    random initial logits, one row per run in the order ``lrs x cs x seeds``."""
    cfg.validate()
    t0 = time.perf_counter()
    lr, cvec, seeds, x = _initial_runs(cfg, x0)
    grads = _Gradients(cfg, len(lr), cvec)
    eval_t = _eval_schedule(cfg.iters, cfg.eval_every, cfg.eval_last)
    eval_set = {int(t): i for i, t in enumerate(eval_t)}
    F_hist = np.full((len(lr), len(eval_t)), np.nan)
    bar = tqdm(
        range(cfg.iters + 1),
        desc=desc or f"{cfg.algo} lam={cfg.beta} beta={cfg.budget_cost}",
        disable=not progress,
        mininterval=2.0,
        leave=False,
    )
    for t in bar:
        if t == cfg.iters:
            F_hist[:, eval_set[t]] = grads.solver.objective(x)
            break
        if cfg.algo == "exact":
            g, F = grads.exact(x)
        else:
            g, F_ctx, ctx = grads.sampled(x, t)
            F = grads.context_mean(x, ctx, F_ctx) if t in eval_set else None
        if t in eval_set:
            F_hist[:, eval_set[t]] = F
        x = np.asarray(sgd_ascent(x, g, lr, cfg.max_norm))
    solver = grads.solver
    return RunResult(
        config=cfg,
        eval_iters=eval_t,
        F=F_hist,
        final_x=x,
        lr=lr,
        c=cvec,
        seed=seeds,
        F_last=F_hist[:, eval_t > cfg.iters - cfg.eval_last].mean(axis=1),
        wall_s=time.perf_counter() - t0,
        newton_iters_mean=solver.newton_total / max(1, solver.newton_calls),
    )
