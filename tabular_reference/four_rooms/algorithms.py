"""Leader algorithms on Four-Rooms, one API, batched over runs (learning rates x seeds [x c]).

* ``hpgd``     -- HPGD from sampled trajectories only (notes §2-3): per run and iteration one
  sampled context, the exact soft-optimal follower, ``n_envs x steps`` environment steps, and
  the library estimator :func:`align_cbrl.estimators.trajectory.hpgd_weights` (``form="mc"``,
  the paper's Monte-Carlo form plus the direct term). ``hpgd-cov`` uses ``form="covariance"``
  with a leader-side baseline (an EMA table of per-state leader returns from previous
  iterations, per context); ``naive`` uses ``form="naive"`` (direct term only).
  ``hpgd-paper`` is the paper's plain Monte-Carlo product: ``form="mc"`` with the leader's
  return ``Ghat_t`` from the *same* trajectory (``leader_q="trajectory"``), which is biased by
  ``Cov(Dhat_t, Ghat_t | s_t, a_t)`` (docs/four_rooms.md); kept to compare with the paper.
  ``hpgd-published`` is the estimator of the published code: every-visit per-(state, action)
  and per-state tables of the follower's reward-gradient returns and of the leader's returns,
  both from the same batch (:func:`align_cbrl.estimators.published.published_hpgd_weights`).
* ``amd``      -- the exact deterministic hypergradient, full expectation over the contexts.
* ``zo``       -- zero-order Gaussian smoothing ``g = (F_xi(x + u_t z) - F_xi(x)) z / u_t``,
  ``u_t = c / t``, one sampled context, exact values
  (:func:`align_cbrl.estimators.zero_order.gaussian_smoothing_gradient`).

The follower plans (and AMD, zero-order and the metric are computed) in the ``plan`` slip model
of ``RunConfig.dynamics``; HPGD's trajectories are sampled from its ``sample`` model
(:mod:`tabular_reference.four_rooms.dynamics`; default preset ``paper``). ``hpgd``,
``hpgd-published`` and ``naive`` sample and estimate in one fused numba pass
(:mod:`tabular_reference.four_rooms.hpgd_kernels`, equal to the library estimators on the same
batch); ``estimator_backend="library"`` runs the previous path (inverse-CDF sampler + the
library's torch estimators), whose random stream reproduces earlier results bit for bit.

All update ``x <- x + lr * clip_1(g)`` (SGD ascent, global-norm clipping at 1, notes §3).
The metric is the exact ``F(x_t)`` averaged over the contexts, recorded every ``eval_every``
iterations and at every one of the last ``eval_last`` iterations.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from align_cbrl.estimators.published import published_hpgd_weights
from align_cbrl.estimators.trajectory import hpgd_weights, per_state_sum, time_in_episode
from align_cbrl.estimators.zero_order import gaussian_smoothing_gradient, sample_directions
from tabular_reference.common.optim import sgd_ascent
from tabular_reference.four_rooms import hpgd_kernels as HK
from tabular_reference.four_rooms import kernels as K
from tabular_reference.four_rooms.dynamics import Dynamics, resolve_dynamics
from tabular_reference.four_rooms.env import (
    FOUR_ROOMS,
    GAMMA,
    GOALS,
    MAX_EPISODE_STEPS,
)
from tabular_reference.four_rooms.leader import BUDGET_MODES, budget, logits_gradient, softmax
from tabular_reference.four_rooms.leader import penalties as penalties_of

ALGORITHMS = ("hpgd", "hpgd-cov", "hpgd-paper", "hpgd-published", "naive", "amd", "zo")
# algorithm -> (estimator form, source of the leader values; see hpgd_estimate)
HPGD_ESTIMATORS = {
    "hpgd": ("mc", "crossfit"),
    "hpgd-cov": ("covariance", "table"),
    "hpgd-paper": ("mc", "trajectory"),
    "hpgd-published": ("published", None),
    "naive": ("naive", None),
}
# estimators with a fused numba kernel (form, leader_q) -> hpgd_kernels form code
_FUSED = {
    ("mc", "crossfit"): HK.FORM_CROSSFIT,
    ("published", None): HK.FORM_PUBLISHED,
    ("naive", None): HK.FORM_NAIVE,
}
BACKENDS = ("fused", "library")
# exact: soft-optimal follower (banded Newton); published: the published code's truncated solve
# (Q = 0, 100 improvements x 5 sweeps, goal with lam H), a variant to explain lambda = 0.005
FOLLOWER_SOLVES = ("exact", "published")


@dataclass
class RunConfig:
    """One batched job: every combination of ``lrs x cs x seeds`` is an independent run
    (``cs`` is used by ``zo`` only)."""

    algo: str
    lam: float
    beta: float
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

    @property
    def model(self) -> Dynamics:
        """The resolved planning/sampling dynamics (:func:`resolve_dynamics`)."""
        return resolve_dynamics(self.dynamics)

    def validate(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {ALGORITHMS}")
        if not self.lam > 0:
            raise ValueError(f"lam (follower temperature) must be > 0, got {self.lam}")
        if not self.beta >= 0:
            raise ValueError(f"beta (budget cost) must be >= 0, got {self.beta}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(
                f"learning rates must be a non-empty list of values > 0, got {self.lrs}"
            )
        if not self.seeds:
            raise ValueError("seeds must be a non-empty list")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.n_envs < 1 or self.steps_per_iter < self.n_envs:
            raise ValueError(
                f"need n_envs >= 1 and steps_per_iter >= n_envs, got n_envs={self.n_envs}, "
                f"steps_per_iter={self.steps_per_iter}"
            )
        if self.steps_per_iter % self.n_envs:
            raise ValueError(
                f"steps_per_iter={self.steps_per_iter} must be divisible by n_envs={self.n_envs}"
            )
        if self.algo == "zo" and (not self.cs or any(not c > 0 for c in self.cs)):
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
        if self.follower_solve not in FOLLOWER_SOLVES:
            raise ValueError(
                f"follower_solve must be one of {FOLLOWER_SOLVES}, got {self.follower_solve!r}"
            )
        if self.estimator_backend not in BACKENDS:
            raise ValueError(
                f"estimator_backend must be one of {BACKENDS}, got {self.estimator_backend!r}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["goals"] = [list(g) for g in self.goals]
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


class _Solver:
    """Batched exact follower/leader for a fixed (lam, beta), with warm starts per
    (run, context)."""

    def __init__(self, R: int, goals: np.ndarray, cfg: RunConfig) -> None:
        self.env = FOUR_ROOMS
        self.goals = goals  # cell indices per context
        self.cfg = cfg
        self.plan = cfg.model.plan
        S = self.env.n_cells
        self.V = np.zeros((R, len(goals), S))
        self.R, self.S = R, S
        self.newton_total = 0
        self.newton_calls = 0

    def solve(
        self, x: np.ndarray, ctx: np.ndarray, want_grad: bool, warm: np.ndarray | None = None
    ):
        """Exact follower for runs with contexts ``ctx[R]`` at parameters ``x[R, 105]``.
        Returns ``F[R], gpen[R, S], mug[R], pi[R, S, 4], sigma, goal[R], vgoal[R]``."""
        cfg, env = self.cfg, self.env
        R = x.shape[0]
        sigma = softmax(x)
        pen = np.ascontiguousarray(penalties_of(sigma) + cfg.step_reward)
        goal = self.goals[ctx]
        vgoal = -cfg.beta * budget(sigma, goal, cfg.budget_mode)
        rows = np.arange(R)
        V = self.V[rows, ctx] if warm is None else warm.copy()
        F = np.empty(R)
        mug = np.empty(R)
        gpen = np.empty((R, self.S))
        pi = np.empty((R, self.S, 4))
        if cfg.follower_solve == "published":
            K.solve_batch_published(
                pen, goal, vgoal, env.nbr, env.start, env.target, GAMMA, cfg.lam,
                self.plan.p_other, self.plan.p_diff, 100, 5, env.bandwidth, want_grad, F, mug,
                gpen, pi,
            )  # fmt: skip
            self.newton_calls += R
            return F, gpen, mug, pi, sigma, goal, vgoal, V
        iters = np.empty(R, dtype=np.int64)
        res = np.empty(R)
        K.solve_batch(
            pen,
            goal,
            vgoal,
            V,
            env.nbr,
            env.start,
            env.target,
            GAMMA,
            cfg.lam,
            self.plan.p_other,
            self.plan.p_diff,
            cfg.tol,
            cfg.max_newton,
            env.bandwidth,
            want_grad,
            F,
            mug,
            gpen,
            pi,
            iters,
            res,
        )
        if (iters < 0).any():
            bad = int(np.argmax(iters < 0))
            raise RuntimeError(
                f"follower solve did not converge (run {bad}, residual {res[bad]:.2e} > tol "
                f"{cfg.tol:.1e} after {cfg.max_newton} Newton steps); raise max_newton or tol"
            )
        if warm is None:
            self.V[rows, ctx] = V
        self.newton_total += int(iters.sum())
        self.newton_calls += R
        return F, gpen, mug, pi, sigma, goal, vgoal, V

    def exact_F(self, x: np.ndarray) -> np.ndarray:
        """``F(x) = mean over contexts of F_xi(x)`` (all runs)."""
        R = x.shape[0]
        tot = np.zeros(R)
        for k in range(len(self.goals)):
            tot += self.solve(x, np.full(R, k), False)[0]
        return tot / len(self.goals)


def _eval_schedule(iters: int, every: int, last: int) -> np.ndarray:
    t = np.arange(iters + 1)
    keep = (t % every == 0) | (t > iters - last) | (t == iters)
    return t[keep]


def run(
    cfg: RunConfig, progress: bool = True, desc: str | None = None, x0: np.ndarray | None = None
) -> RunResult:
    """Run one batched job (see :class:`RunConfig`). ``x0[R, 105]`` (optional) replaces the
    random initial logits, one row per run in the order ``lrs x cs x seeds``."""
    cfg.validate()
    t0 = time.perf_counter()
    env = FOUR_ROOMS
    cs = cfg.cs if cfg.algo == "zo" else [float("nan")]
    grid = [(lr, c, s) for lr in cfg.lrs for c in cs for s in cfg.seeds]
    R = len(grid)
    lr = np.array([g[0] for g in grid])
    cvec = np.array([g[1] for g in grid])
    seeds = np.array([g[2] for g in grid])
    x = np.stack(
        [np.random.default_rng(int(s)).normal(0.0, cfg.init_std, env.n_params) for s in seeds]
    )
    if x0 is not None:
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.shape != x.shape:
            raise ValueError(
                f"x0 must have shape {list(x.shape)} (runs = lrs x cs x seeds, {env.n_params} "
                f"logits), got {list(x0.shape)}"
            )
        if not np.isfinite(x0).all():
            raise ValueError("x0 contains NaN/inf")
        x = x0.copy()
    goals = np.array([env.goal_index(tuple(g)) for g in cfg.goals], dtype=np.int64)
    n_ctx = len(goals)
    solver = _Solver(R, goals, cfg)
    rng = np.random.default_rng([cfg.job_seed, 7])
    K.seed_rng(int(rng.integers(2**31 - 1)))
    tgen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    eval_t = _eval_schedule(cfg.iters, cfg.eval_every, cfg.eval_last)
    eval_set = {int(t): i for i, t in enumerate(eval_t)}
    Fhist = np.full((R, len(eval_t)), np.nan)
    T = cfg.steps_per_iter

    if cfg.algo in HPGD_ESTIMATORS:
        buffers = _buffers(R, T)
        # the fused sampler's per-run xoshiro256+ streams (a separate seed sequence, so that the
        # library backend's stream is unchanged)
        seeds_x = np.random.default_rng([cfg.job_seed, 11]).integers(2**63, size=R)
        xrng = np.stack([HK.seed_state(int(v)) for v in seeds_x])
        critic = _Critic(R, n_ctx, env.n_cells, cfg.baseline_ema)
    bar = tqdm(
        range(cfg.iters + 1),
        desc=desc or f"{cfg.algo} lam={cfg.lam} beta={cfg.beta}",
        disable=not progress,
        mininterval=2.0,
        leave=False,
    )
    for t in bar:
        record = t in eval_set
        if t == cfg.iters:
            Fhist[:, eval_set[t]] = solver.exact_F(x)
            break
        if cfg.algo == "amd":
            g = np.zeros_like(x)
            Fsum = np.zeros(R)
            for k in range(n_ctx):
                ctx = np.full(R, k)
                F, gpen, mug, _pi, sigma, goal, _vg, _V = solver.solve(x, ctx, True)
                Fsum += F
                g += logits_gradient(sigma, gpen, mug, cfg.beta, goal, cfg.budget_mode)
            g /= n_ctx
            if record:
                Fhist[:, eval_set[t]] = Fsum / n_ctx
        else:
            ctx = rng.integers(n_ctx, size=R)
            if cfg.algo == "zo":
                F, _gp, _m, _pi, _sigma, _goal, _vg, Vb = solver.solve(x, ctx, False)
                z = sample_directions(tgen, x.shape).numpy()
                u = cvec / (t + 1)
                Fp = solver.solve(x + u[:, None] * z, ctx, False, warm=Vb)[0]
                g = gaussian_smoothing_gradient(
                    torch.from_numpy(Fp),
                    torch.from_numpy(F),
                    torch.from_numpy(z),
                    torch.from_numpy(u),
                ).numpy()
            else:
                F, _gp, _m, pi, sigma, goal, vgoal, _V = solver.solve(x, ctx, False)
                form, leader_q = HPGD_ESTIMATORS[cfg.algo]
                tables = critic.tables(ctx) if leader_q == "table" else None
                g = hpgd_estimate(
                    pi, sigma, goal, vgoal, cfg, form, tables, buffers, leader_q, rng_state=xrng
                )
                if leader_q == "table":
                    critic.update(ctx, buffers)
            if record:
                other = np.zeros(R)
                for k in range(n_ctx):
                    mask = ctx == k
                    if n_ctx == 1:
                        other = F
                        break
                    Fk = solver.solve(x, np.full(R, k), False)[0]
                    other += np.where(mask, F, Fk)
                Fhist[:, eval_set[t]] = other / n_ctx if n_ctx > 1 else other
        x = np.asarray(sgd_ascent(x, g, lr, cfg.max_norm))
    last = eval_t > cfg.iters - cfg.eval_last
    F_last = Fhist[:, last].mean(axis=1)
    return RunResult(
        config=cfg,
        eval_iters=eval_t,
        F=Fhist,
        final_x=x,
        lr=lr,
        c=cvec,
        seed=seeds,
        F_last=F_last,
        wall_s=time.perf_counter() - t0,
        newton_iters_mean=solver.newton_total / max(1, solver.newton_calls),
    )


_RUN_CHUNK = 8  # runs per estimator call in the library path of hpgd_estimate

Buffers = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _buffers(R: int, T: int) -> Buffers:
    """``(states, actions, leader_rewards, episode_start, tau)`` arrays of shape ``[R, T]``
    (the fused path fills states, actions and tau; the library path the first four)."""
    return (
        np.empty((R, T), dtype=np.int64),
        np.empty((R, T), dtype=np.int64),
        np.empty((R, T)),
        np.empty((R, T), dtype=np.bool_),
        np.empty((R, T), dtype=np.int64),
    )


def hpgd_estimate(
    pi: np.ndarray,
    sigma: np.ndarray,
    goal: np.ndarray,
    vgoal: np.ndarray,
    cfg: RunConfig,
    form: str,
    tables: tuple[np.ndarray, np.ndarray] | None = None,
    buffers: Buffers | None = None,
    leader_q: str | None = "crossfit",
    rng_state: np.ndarray | None = None,
) -> np.ndarray:
    """One HPGD gradient estimate per run (notes §2) from ``cfg.steps_per_iter`` steps of the
    follower ``pi[R, S, 4]`` sampled in the ``sample`` slip model of ``cfg.dynamics``: the
    estimator's per-step weights contracted with the analytic Jacobians of the state-based
    rewards (``d pen(s)`` at non-goal cells, ``d vgoal`` at the goal). Returns ``dF_xi/dx[R, 105]``.

    ``form``: ``"mc"`` / ``"covariance"`` (library :func:`hpgd_weights`, with ``leader_q``
    ``"crossfit"``, ``"table"`` -- needs ``tables = (q_table[R, S, 4], v_table[R, S])`` -- or
    ``"trajectory"``), ``"published"`` (:func:`published_hpgd_weights`) or ``"naive"``.
    ``mc``/``crossfit``, ``published`` and ``naive`` run fused in numba unless
    ``cfg.estimator_backend == "library"``; they draw from ``rng_state[R, 4]`` (xoshiro256+
    states, :func:`~tabular_reference.four_rooms.hpgd_kernels.seed_state`, advanced in place), the
    library path from numba's global generator (:func:`kernels.seed_rng`).
    ``buffers`` = preallocated :func:`_buffers`."""
    env = FOUR_ROOMS
    R = pi.shape[0]
    T = cfg.steps_per_iter
    if buffers is None:
        buffers = _buffers(R, T)
    states, actions, lrew, ep_start, taus = buffers
    sample = cfg.model.sample
    key = (form, None if form in ("naive", "published") else leader_q)
    if cfg.estimator_backend == "fused" and key in _FUSED:
        if rng_state is None or rng_state.shape != (R, 4) or rng_state.dtype != np.uint64:
            raise ValueError(
                f"the fused HPGD path needs rng_state: uint64 [{R}, 4] xoshiro256+ states "
                "(hpgd_kernels.seed_state per run)"
            )
        gpen = np.empty((R, env.n_cells))
        mug = np.empty(R)
        HK.sample_and_estimate(
            pi,
            goal,
            vgoal,
            env.start,
            env.target,
            env.nbr,
            sample.p_intended,
            sample.p_other,
            cfg.n_envs,
            T // cfg.n_envs,
            MAX_EPISODE_STEPS,
            GAMMA,
            cfg.lam,
            _FUSED[key],
            rng_state,
            states,
            actions,
            taus,
            gpen,
            mug,
        )
        if np.isnan(mug).any():
            raise RuntimeError(
                "hpgd-published: a run had no finished episode in its batch; raise steps_per_iter"
            )
        return logits_gradient(sigma, gpen, mug, cfg.beta, goal, cfg.budget_mode)
    K.sample_with_actions(
        pi,
        goal,
        vgoal,
        env.start,
        env.target,
        env.nbr,
        sample.p_intended,
        sample.p_other,
        cfg.n_envs,
        T // cfg.n_envs,
        MAX_EPISODE_STEPS,
        states,
        actions,
        lrew,
        ep_start,
    )
    gpen = np.empty((R, env.n_cells))
    lead = np.empty((R, env.n_cells))
    # Runs are independent: estimate in chunks of runs so that the estimator's [runs, T]
    # temporaries stay cache-sized (two workers on the whole batch slow each other down ~1.5x).
    for lo in range(0, R, _RUN_CHUNK):
        sl = slice(lo, min(R, lo + _RUN_CHUNK))
        w = _library_weights(
            torch.from_numpy(states[sl]),
            torch.from_numpy(actions[sl]),
            torch.from_numpy(lrew[sl]),
            torch.from_numpy(ep_start[sl]),
            torch.from_numpy(goal[sl]),
            cfg,
            form,
            leader_q,
            None if tables is None else (tables[0][sl], tables[1][sl]),
        )
        st = torch.from_numpy(states[sl])
        gpen[sl] = per_state_sum(w.follower, st, env.n_cells).numpy()
        lead[sl] = per_state_sum(w.leader, st, env.n_cells).numpy()
    rows = np.arange(R)
    gpen[rows, goal] = 0.0  # the goal's follower reward (1) does not depend on x
    mug = lead[rows, goal]  # only the goal's leader reward (-beta * budget) depends on x
    return logits_gradient(sigma, gpen, mug, cfg.beta, goal, cfg.budget_mode)


def _library_weights(st, ac, lr, es, goal, cfg: RunConfig, form, leader_q, tables):
    """The library estimators (torch) on one chunk of sampled runs."""
    S = FOUR_ROOMS.n_cells
    if form == "published":
        tau = time_in_episode(es)
        done = (st == goal[:, None]) | (tau == MAX_EPISODE_STEPS - 1)
        return published_hpgd_weights(
            st, ac, lr, es, GAMMA, cfg.lam, n_states=S, n_actions=4, done=done
        )
    kw: dict
    if form == "naive":
        kw = {}
    elif leader_q == "trajectory":
        kw = {"leader_q": "trajectory"}
    else:
        kw = {"actions": ac, "n_actions": 4, "leader_q": leader_q}
        if leader_q == "table":
            if tables is None:
                raise ValueError("leader_q='table' needs tables=(q_table, v_table)")
            kw.update(q_table=torch.from_numpy(tables[0]), v_table=torch.from_numpy(tables[1]))
    return hpgd_weights(st, lr, es, GAMMA, cfg.lam, form=form, n_states=S, **kw)


class _Critic:
    """Leader critic tables for the covariance form, per (run, context): EMA (rate ``ema``)
    of the mean observed leader return ``Ghat_t`` per (state, action) and per state over each
    iteration's visits (first visit: copied). Used from the next iteration on, so they are
    independent of the current sample; unvisited (s, a) entries fall back to ``v(s)`` (zero
    advantage)."""

    def __init__(self, R: int, n_ctx: int, S: int, ema: float) -> None:
        self.q = np.zeros((R, n_ctx, S, 4))
        self.q_seen = np.zeros((R, n_ctx, S, 4), dtype=bool)
        self.v = np.zeros((R, n_ctx, S))
        self.v_seen = np.zeros((R, n_ctx, S), dtype=bool)
        self.ema = ema

    def tables(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(len(ctx))
        v = self.v[rows, ctx]
        q = np.where(self.q_seen[rows, ctx], self.q[rows, ctx], v[:, :, None])
        return np.ascontiguousarray(q), np.ascontiguousarray(v)

    def update(self, ctx: np.ndarray, buffers) -> None:
        from align_cbrl.estimators.trajectory import discounted_returns

        states, actions, lrew, ep_start = buffers[:4]
        R = states.shape[0]
        S = self.v.shape[-1]
        rows = np.arange(R)
        G = discounted_returns(torch.from_numpy(lrew), torch.from_numpy(ep_start), GAMMA)
        st = torch.from_numpy(states)
        sa = st * 4 + torch.from_numpy(actions)
        one = torch.ones_like(G)
        for tab, seen, idx, n in ((self.v, self.v_seen, st, S), (self.q, self.q_seen, sa, 4 * S)):
            tot = per_state_sum(G, idx, n).numpy()
            cnt = per_state_sum(one, idx, n).numpy()
            old = tab[rows, ctx].reshape(R, n)
            was = seen[rows, ctx].reshape(R, n)
            vis = cnt > 0
            mean = np.where(vis, tot / np.maximum(cnt, 1), 0.0)
            a = self.ema
            new = np.where(vis & was, (1 - a) * old + a * mean, np.where(vis, mean, old))
            tab[rows, ctx] = new.reshape(tab[rows, ctx].shape)
            seen[rows, ctx] = (was | vis).reshape(seen[rows, ctx].shape)
