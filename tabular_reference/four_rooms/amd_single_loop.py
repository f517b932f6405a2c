"""The published code's *single-loop* AMD for Four-Rooms (a Table 1 variant).

Our ``amd`` is exact gradient ascent: every outer iteration solves the follower exactly and
computes ``dF/dx`` by the adjoint (``kernels.leader_and_grad``). The published AMD (reference
notes §5, "AMD is single-loop") instead keeps four tabular recursions per context from one
outer iteration to the next and advances each by ``sweeps`` (100) synchronous sweeps per outer
iteration, warm-started:

* the follower's soft ``Q``: ``Q(s,a) = r(s) + gamma sum_d P(d|a) V(nbr(s,d))`` with
  ``V = sum_a pi Q + lam H(pi)``, ``pi = softmax(Q / lam)``; the goal is terminal with
  ``Q(goal, a) = r(goal) = 1 + pen(goal)`` (the environment's reward, incentive included);
* ``dQ`` (the derivative of the follower's return w.r.t. the incentives, under the current
  policy): reward ``e_s`` (one-hot), the same backup with ``V_dQ = sum_a pi dQ``;
* the leader's ``Q_L``: reward ``1[s = target]``, ``-beta * budget`` at the goal
  (``= beta * sum_s pen(s)``), ``V_L = sum_a pi Q_L``;
* the hypergradient recursion ``Q~ = d rbar + (dQ - V_dQ) (Q_L - V_L) / lam + gamma P V~``,
  ``V~ = sum_a pi Q~`` (the advantage form of the hypergradient, notes §2).

After the sweeps, one context ``xi`` is drawn uniformly and the step is
``x <- x + lr clip(J^T V~_xi(start))`` (global-norm clipping at 1, plain SGD), where ``J`` is the
Jacobian of the incentives ``pen = -0.2 softmax(x)[:104]`` w.r.t. the logits. Every right-hand
side reads the previous sweep's tables (Jacobi), as the published ``jax.lax.scan`` does. The
recursions are carried in incentive space (104 coordinates: ``e_s`` rewards, and the budget's
derivative ``beta`` per coordinate at the goal); the linear map to the logits is applied once per
outer iteration, which equals carrying them in logit space up to rounding.

Initialisation (as published, up to its sweep schedule): ``Q`` by 500 sweeps of the soft backup
from 0; ``dQ``, ``Q_L`` and ``Q~`` by 500 sweeps of policy evaluation under the *uniform* policy,
``Q~`` with the published initial reward ``e_s + A(s,a) dA(s,a) / lam`` (the follower's
advantage under the uniform policy, not the leader's).

The leader's objective reported beside it is the exact ``F`` (``solver.FollowerSolver.objective``) of the
current logits, so that the numbers compare with every other cell of ``table1``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from numba import njit

from tabular_reference.common.optim import sgd_ascent
from tabular_reference.four_rooms.algorithms import RunConfig
from tabular_reference.four_rooms.dynamics import resolve_dynamics
from tabular_reference.four_rooms.env import BUDGET, FOUR_ROOMS, GAMMA, GOALS
from tabular_reference.four_rooms.leader import softmax
from tabular_reference.four_rooms.solver import FollowerSolver


@njit(cache=True, nogil=True)
def _policy(Q, lam, pi):
    """``pi = softmax(Q / lam)`` row-wise; returns nothing (fills ``pi[S, 4]``)."""
    for s in range(Q.shape[0]):
        m = max(max(Q[s, 0], Q[s, 1]), max(Q[s, 2], Q[s, 3]))
        z = 0.0
        for a in range(4):
            e = math.exp((Q[s, a] - m) / lam)
            pi[s, a] = e
            z += e
        for a in range(4):
            pi[s, a] /= z


@njit(cache=True, nogil=True, fastmath=True)
def _sweep(
    Q,
    dQ,
    QL,
    Qt,
    nQ,
    nd,
    nQL,
    nt,
    pen,
    goal,
    target,
    nbr,
    gamma,
    lam,
    beta,
    p_oth,
    p_diff,
    uniform,
    budget_reward,
    pi,
    pe,
    V,
    VL,
    Vd,
    Vt,
    tot_d,
    tot_t,
):
    """One Jacobi sweep of one context: reads ``Q, dQ, QL, Qt``, writes ``nQ, nd, nQL, nt``."""
    S, D = dQ.shape[0], dQ.shape[2]
    log4 = math.log(4.0)
    _policy(Q, lam, pi)
    for s in range(S):
        for a in range(4):
            pe[s, a] = 0.25 if uniform else pi[s, a]
    for s in range(S):
        v = 0.0
        h = 0.0
        vl = 0.0
        for a in range(4):
            p = pi[s, a]
            v += p * Q[s, a]
            if p > 0.0:
                h -= p * math.log(p)
            vl += pe[s, a] * QL[s, a]
        V[s] = v + lam * h
        VL[s] = vl
        p0, p1, p2, p3 = pe[s, 0], pe[s, 1], pe[s, 2], pe[s, 3]
        for k in range(D):
            Vd[s, k] = p0 * dQ[s, 0, k] + p1 * dQ[s, 1, k] + p2 * dQ[s, 2, k] + p3 * dQ[s, 3, k]
            Vt[s, k] = p0 * Qt[s, 0, k] + p1 * Qt[s, 1, k] + p2 * Qt[s, 2, k] + p3 * Qt[s, 3, k]
    for s in range(S):
        if s == goal:
            for a in range(4):
                nQ[s, a] = 1.0 + pen[s]
                nQL[s, a] = budget_reward
                for k in range(D):
                    nd[s, a, k] = 0.0
                    nt[s, a, k] = 0.0 if uniform else beta
                nd[s, a, s] = 1.0
                if uniform:
                    nt[s, a, s] = 1.0
            continue
        n0, n1, n2, n3 = nbr[s, 0], nbr[s, 1], nbr[s, 2], nbr[s, 3]
        tv = V[n0] + V[n1] + V[n2] + V[n3]
        tl = VL[n0] + VL[n1] + VL[n2] + VL[n3]
        for k in range(D):
            tot_d[k] = gamma * p_oth * (Vd[n0, k] + Vd[n1, k] + Vd[n2, k] + Vd[n3, k])
            tot_t[k] = gamma * p_oth * (Vt[n0, k] + Vt[n1, k] + Vt[n2, k] + Vt[n3, k])
        rl = 1.0 if s == target else 0.0
        mq = 0.25 * (Q[s, 0] + Q[s, 1] + Q[s, 2] + Q[s, 3])
        gd = gamma * p_diff
        for a in range(4):
            j = nbr[s, a]
            nQ[s, a] = pen[s] + gamma * (p_oth * tv + p_diff * V[j])
            nQL[s, a] = rl + gamma * (p_oth * tl + p_diff * VL[j])
            # the published initial reward uses the follower's uniform-policy advantage
            adv = (Q[s, a] - mq - lam * log4) / lam if uniform else (QL[s, a] - VL[s]) / lam
            for k in range(D):
                nd[s, a, k] = tot_d[k] + gd * Vd[j, k]
                nt[s, a, k] = (dQ[s, a, k] - Vd[s, k]) * adv + tot_t[k] + gd * Vt[j, k]
            nd[s, a, s] += 1.0
            if uniform:
                nt[s, a, s] += 1.0


@njit(cache=True, nogil=True)
def sweeps(
    Q, dQ, QL, Qt, pen, goals, target, nbr, gamma, lam, beta, p_oth, p_diff, n_sweeps, uniform
):
    """Advance the four recursions of every context ``g`` by ``n_sweeps`` Jacobi sweeps (module
    docstring). ``Q[G, S, 4]``, ``dQ[G, S, 4, D]``, ``QL[G, S, 4]``, ``Qt[G, S, 4, D]`` in place.

    ``uniform = True`` is the published initialisation: ``dQ``, ``QL`` and ``Qt`` are evaluated
    under the uniform policy and ``Qt``'s reward is ``e_s + A(s,a) dA(s,a) / lam`` with the
    follower's uniform-policy advantages; ``Q`` always follows its own softmax policy. The two
    large tables are double-buffered (no copy per sweep)."""
    G, S = Q.shape[0], Q.shape[1]
    D = dQ.shape[3]
    pi = np.empty((S, 4))
    pe = np.empty((S, 4))
    V = np.empty(S)
    VL = np.empty(S)
    Vd = np.empty((S, D))
    Vt = np.empty((S, D))
    nQ = np.empty((S, 4))
    nQL = np.empty((S, 4))
    bd = np.empty((S, 4, D))
    bt = np.empty((S, 4, D))
    tot_d = np.empty(D)
    tot_t = np.empty(D)
    budget_reward = 0.0
    for s in range(S):
        budget_reward += pen[s]
    budget_reward *= beta  # -beta * budget = beta * sum_s pen(s)
    for g in range(G):
        for sw in range(n_sweeps):
            if sw % 2 == 0:
                src_d, src_t, dst_d, dst_t = dQ[g], Qt[g], bd, bt
            else:
                src_d, src_t, dst_d, dst_t = bd, bt, dQ[g], Qt[g]
            _sweep(
                Q[g],
                src_d,
                QL[g],
                src_t,
                nQ,
                dst_d,
                nQL,
                dst_t,
                pen,
                goals[g],
                target,
                nbr,
                gamma,
                lam,
                beta,
                p_oth,
                p_diff,
                uniform,
                budget_reward,
                pi,
                pe,
                V,
                VL,
                Vd,
                Vt,
                tot_d,
                tot_t,
            )
            Q[g] = nQ
            QL[g] = nQL
        if n_sweeps % 2 == 1:
            dQ[g] = bd
            Qt[g] = bt


@njit(cache=True, nogil=True)
def start_gradient(Q, Qt, g, start, lam, out):
    """``out[D] = V~_g(start) = sum_a pi(a|start) Q~_g(start, a)``, ``pi = softmax(Q_g / lam)``."""
    S = Q.shape[1]
    pi = np.empty((S, 4))
    _policy(Q[g], lam, pi)
    for k in range(out.shape[0]):
        out[k] = 0.0
        for a in range(4):
            out[k] += pi[start, a] * Qt[g, start, a, k]


@dataclass
class SingleLoopConfig:
    """One single-loop AMD run (module docstring). In the paper's Table 1 notation, as the
    ``table1`` results: ``lam`` = follower temperature, ``beta`` = budget cost."""

    lam: float
    beta: float
    lr: float
    seed: int
    iters: int = 10_000
    sweeps: int = 100
    init_sweeps: int = 500
    eval_last: int = 1_000
    eval_every: int = 100
    max_norm: float = 1.0
    init_std: float = 0.01
    dynamics: str = "paper"
    goals: list[tuple[int, int]] = field(default_factory=lambda: [tuple(g) for g in GOALS])

    def validate(self) -> None:
        if not self.lam > 0:
            raise ValueError(f"lam (follower temperature) must be > 0, got {self.lam}")
        if not self.beta >= 0:
            raise ValueError(f"beta (budget cost) must be >= 0, got {self.beta}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.iters < 1 or self.sweeps < 1 or self.init_sweeps < 0:
            raise ValueError("iters and sweeps must be >= 1 and init_sweeps >= 0")
        resolve_dynamics(self.dynamics)


def run_single_loop(cfg: SingleLoopConfig, progress: bool = False) -> dict:
    """Run one single-loop AMD run; returns its config, the exact ``F`` trace (every
    ``eval_every`` iterations and every iteration of the last ``eval_last``; both the soft-optimal
    follower's and the published truncated solve's ``F``), ``F_last`` (mean exact ``F`` over the
    last ``eval_last`` iterations, the table's metric), the final logits and the wall time."""
    from tqdm import tqdm

    cfg.validate()
    t0 = time.perf_counter()
    env = FOUR_ROOMS
    plan = resolve_dynamics(cfg.dynamics).plan
    goals = np.array([env.goal_index(tuple(g)) for g in cfg.goals], dtype=np.int64)
    G, S = len(goals), env.n_cells
    x = np.random.default_rng(cfg.seed).normal(0.0, cfg.init_std, (1, env.n_params))
    rng = np.random.default_rng([cfg.seed, 23])
    Q = np.zeros((G, S, 4))
    dQ = np.zeros((G, S, 4, S))
    QL = np.zeros((G, S, 4))
    Qt = np.zeros((G, S, 4, S))

    def pen_of(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(-BUDGET * softmax(x)[0, :-1])

    args = (env.target, env.nbr, GAMMA, cfg.lam, cfg.beta, plan.p_other, plan.p_diff)
    # published initialisation: Q by its own soft backup, the rest under the uniform policy
    sweeps(Q, dQ, QL, Qt, pen_of(x), goals, *args, cfg.init_sweeps, True)
    exact = {
        solve: FollowerSolver(
            1,
            goals,
            RunConfig(
                algo="exact",
                beta=cfg.lam,
                budget_cost=cfg.beta,
                lrs=[cfg.lr],
                seeds=[cfg.seed],
                dynamics=cfg.dynamics,
                follower_solve=solve,
                goals=list(cfg.goals),
            ),
        )
        for solve in ("exact", "published")
    }
    trace: dict[str, list] = {"iter": [], "F": [], "F_published_solve": []}
    g_pen = np.empty(S)
    bar = tqdm(range(cfg.iters + 1), disable=not progress, mininterval=5.0, leave=False)
    for t in bar:
        if t % cfg.eval_every == 0 or t > cfg.iters - cfg.eval_last:
            trace["iter"].append(t)
            trace["F"].append(float(exact["exact"].objective(x)[0]))
            trace["F_published_solve"].append(float(exact["published"].objective(x)[0]))
        if t == cfg.iters:
            break
        sweeps(Q, dQ, QL, Qt, pen_of(x), goals, *args, cfg.sweeps, False)
        xi = int(rng.integers(G))
        start_gradient(Q, Qt, xi, env.start, cfg.lam, g_pen)
        sigma = softmax(x)
        gs = np.zeros_like(sigma)
        gs[0, :-1] = -BUDGET * g_pen  # d pen(s) / d sigma_s = -0.2
        grad = sigma * (gs - (sigma * gs).sum(axis=-1, keepdims=True))
        x = np.asarray(sgd_ascent(x, grad, np.array([cfg.lr]), cfg.max_norm))
    it = np.array(trace["iter"])
    last = it > cfg.iters - cfg.eval_last
    return {
        "config": asdict(cfg),
        "trace": trace,
        "F_last": float(np.mean(np.array(trace["F"])[last])),
        "F_last_published_solve": float(np.mean(np.array(trace["F_published_solve"])[last])),
        "final_x": x[0].tolist(),
        "wall_s": time.perf_counter() - t0,
    }
