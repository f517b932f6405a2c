"""The published code's *single-loop* AMD for Four-Rooms (a Table 1 variant).

Our ``amd`` is exact gradient ascent: every outer iteration solves the follower exactly and
computes ``dF/dx`` by the adjoint (``kernels.leader_and_grad``). The published AMD (reference
notes §5, "AMD is single-loop") instead keeps four tabular recursions per context from one
outer iteration to the next and advances each by ``sweeps`` (100) synchronous sweeps per outer
iteration, warm-started:

* the follower's soft ``Q``: ``Q(s,a) = r(s) + gamma sum_d P(d|a) V(nbr(s,d))`` with
  ``V = sum_a pi Q + beta H(pi)``, ``pi = softmax(Q / beta)``; the goal is terminal with
  ``Q(goal, a) = r(goal) = 1 + pen(goal)`` (the environment's reward, incentive included);
* ``dQ`` (the derivative of the follower's return w.r.t. the incentives, under the current
  policy): reward ``e_s`` (one-hot), the same backup with ``V_dQ = sum_a pi dQ``;
* the leader's ``Q_L``: reward ``1[s = target]``, ``-budget_cost * budget`` at the goal
  (``= budget_cost * sum_s pen(s)``), ``V_L = sum_a pi Q_L``;
* the hypergradient recursion ``Q~ = d rbar + (dQ - V_dQ) (Q_L - V_L) / beta + gamma P V~``,
  ``V~ = sum_a pi Q~`` (the advantage form of the hypergradient, notes §2).

After the sweeps, one context ``xi`` is drawn uniformly and the step is
``x <- x + lr clip(J^T V~_xi(start))`` (global-norm clipping at 1, plain SGD), where ``J`` is the
Jacobian of the incentives ``pen = -0.2 softmax(x)[:104]`` w.r.t. the logits. Every right-hand
side reads the previous sweep's tables (Jacobi), as the published ``jax.lax.scan`` does. The
recursions are carried in incentive space (104 coordinates: ``e_s`` rewards, and the budget's
derivative ``budget_cost`` per coordinate at the goal); the linear map to the logits is applied once per
outer iteration, which equals carrying them in logit space up to rounding.

Initialisation (as published, up to its sweep schedule): ``Q`` by 500 sweeps of the soft backup
from 0; ``dQ``, ``Q_L`` and ``Q~`` by 500 sweeps of policy evaluation under the *uniform* policy,
``Q~`` with the published initial reward ``e_s + A(s,a) dA(s,a) / beta`` (the follower's
advantage under the uniform policy, not the leader's).

The leader's objective reported beside it is the exact ``F``
(``solver.FollowerSolver.objective``) of the current logits, so that the numbers compare with
every other cell of ``table1``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
from numba import njit

from tabular_reference.common.kernel_tuples import kernel_tuple
from tabular_reference.common.optim import sgd_ascent
from tabular_reference.four_rooms.algorithms import PAPER_KEYS, RunConfig
from tabular_reference.four_rooms.dynamics import resolve_dynamics
from tabular_reference.four_rooms.env import BUDGET, FOUR_ROOMS, GAMMA, GOALS
from tabular_reference.four_rooms.leader import softmax
from tabular_reference.four_rooms.solver import FollowerSolver


@kernel_tuple
class AmdModel(NamedTuple):
    """What the recursions read: ``neighbours[S, 4]``, the leader's target cell, the discount,
    the follower's temperature ``beta``, the leader's budget cost ``budget_cost`` (the paper's
    lambda and beta) and
    the planning slip model ``P(d | a) = p_other + p_diff [d == a]``."""

    neighbours: np.ndarray
    target: int
    gamma: float
    beta: float
    budget_cost: float
    p_other: float
    p_diff: float


@kernel_tuple
class Recursions(NamedTuple):
    """The four tables (module docstring), for every context ``[G, ...]`` or for one:
    the follower's soft ``q[S, 4]``, its reward gradient ``dq[S, 4, D]``, the leader's
    ``leader_q[S, 4]`` and the hypergradient recursion ``hyper_q[S, 4, D]`` (``Q~``)."""

    q: np.ndarray
    dq: np.ndarray
    leader_q: np.ndarray
    hyper_q: np.ndarray


@kernel_tuple
class SweepContext(NamedTuple):
    """One context's sweep inputs: the follower's rewards ``penalty[S]``, the goal cell,
    whether the recursions evaluate the uniform policy (the published initialisation) and the
    leader's reward at the goal ``budget_reward = budget_cost sum_s pen(s)``."""

    penalty: np.ndarray
    goal: int
    uniform: bool
    budget_reward: float


@kernel_tuple
class SweepScratch(NamedTuple):
    """A sweep's state values of the previous tables: the follower's softmax policy
    ``policy[S, 4]``, the policy the other three recursions evaluate ``eval_policy[S, 4]``
    (uniform in the initialisation), ``v[S] = sum_a pi q + beta H(pi)``,
    ``v_leader[S]``, ``v_dq[S, D]``, ``v_hyper[S, D]`` and the neighbour sums ``sum_d[D]``,
    ``sum_hyper[D]`` of one state."""

    policy: np.ndarray
    eval_policy: np.ndarray
    v: np.ndarray
    v_leader: np.ndarray
    v_dq: np.ndarray
    v_hyper: np.ndarray
    sum_dq: np.ndarray
    sum_hyper: np.ndarray


@njit(cache=True, nogil=True)
def _policy(Q, beta, pi):
    """``pi = softmax(Q / beta)`` row-wise; returns nothing (fills ``pi[S, 4]``)."""
    for s in range(Q.shape[0]):
        m = max(max(Q[s, 0], Q[s, 1]), max(Q[s, 2], Q[s, 3]))
        z = 0.0
        for a in range(4):
            e = math.exp((Q[s, a] - m) / beta)
            pi[s, a] = e
            z += e
        for a in range(4):
            pi[s, a] /= z


@njit(cache=True, nogil=True, fastmath=True)
def _state_values(src, beta, uniform, work):
    """The state values of the tables ``src`` under the follower's softmax policy (``v``) and
    under the evaluated policy (``v_leader``, ``v_dq``, ``v_hyper``) into ``work``."""
    pi, pe = work.policy, work.eval_policy
    Q, dQ, QL, Qt = src.q, src.dq, src.leader_q, src.hyper_q
    V, VL, Vd, Vt = work.v, work.v_leader, work.v_dq, work.v_hyper
    S, D = dQ.shape[0], dQ.shape[2]
    _policy(Q, beta, pi)
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
        V[s] = v + beta * h
        VL[s] = vl
        p0, p1, p2, p3 = pe[s, 0], pe[s, 1], pe[s, 2], pe[s, 3]
        for k in range(D):
            Vd[s, k] = p0 * dQ[s, 0, k] + p1 * dQ[s, 1, k] + p2 * dQ[s, 2, k] + p3 * dQ[s, 3, k]
            Vt[s, k] = p0 * Qt[s, 0, k] + p1 * Qt[s, 1, k] + p2 * Qt[s, 2, k] + p3 * Qt[s, 3, k]


@njit(cache=True, nogil=True, fastmath=True)
def _backups(src, dst, model, ctx, work):
    """Every state's backups into ``dst`` from the state values in ``work``: the terminal goal
    (``Q = 1 + pen(goal)``, ``Q_L`` the budget, ``dQ = e_s``, ``Q~ = budget_cost``, ``e_s`` in the
    initialisation) and the four recursions' Bellman backups elsewhere."""
    Q, dQ, QL = src.q, src.dq, src.leader_q
    nQ, nd, nQL, nt = dst.q, dst.dq, dst.leader_q, dst.hyper_q
    V, VL, Vd, Vt = work.v, work.v_leader, work.v_dq, work.v_hyper
    tot_d, tot_t = work.sum_dq, work.sum_hyper
    nbr, gamma, beta, budget_cost = model.neighbours, model.gamma, model.beta, model.budget_cost
    p_other, p_diff = model.p_other, model.p_diff
    pen, goal, uniform = ctx.penalty, ctx.goal, ctx.uniform
    S, D = dQ.shape[0], dQ.shape[2]
    log4 = math.log(4.0)
    for s in range(S):
        if s == goal:
            for a in range(4):
                nQ[s, a] = 1.0 + pen[s]
                nQL[s, a] = ctx.budget_reward
                for k in range(D):
                    nd[s, a, k] = 0.0
                    nt[s, a, k] = 0.0 if uniform else budget_cost
                nd[s, a, s] = 1.0
                if uniform:
                    nt[s, a, s] = 1.0
            continue
        n0, n1, n2, n3 = nbr[s, 0], nbr[s, 1], nbr[s, 2], nbr[s, 3]
        tv = V[n0] + V[n1] + V[n2] + V[n3]
        tl = VL[n0] + VL[n1] + VL[n2] + VL[n3]
        for k in range(D):
            tot_d[k] = gamma * p_other * (Vd[n0, k] + Vd[n1, k] + Vd[n2, k] + Vd[n3, k])
            tot_t[k] = gamma * p_other * (Vt[n0, k] + Vt[n1, k] + Vt[n2, k] + Vt[n3, k])
        rl = 1.0 if s == model.target else 0.0
        mq = 0.25 * (Q[s, 0] + Q[s, 1] + Q[s, 2] + Q[s, 3])
        gd = gamma * p_diff
        for a in range(4):
            j = nbr[s, a]
            nQ[s, a] = pen[s] + gamma * (p_other * tv + p_diff * V[j])
            nQL[s, a] = rl + gamma * (p_other * tl + p_diff * VL[j])
            # the published initial reward uses the follower's uniform-policy advantage
            adv = (Q[s, a] - mq - beta * log4) / beta if uniform else (QL[s, a] - VL[s]) / beta
            for k in range(D):
                nd[s, a, k] = tot_d[k] + gd * Vd[j, k]
                nt[s, a, k] = (dQ[s, a, k] - Vd[s, k]) * adv + tot_t[k] + gd * Vt[j, k]
            nd[s, a, s] += 1.0
            if uniform:
                nt[s, a, s] += 1.0


@njit(cache=True, nogil=True)
def _sweep(src, dst, model, ctx, work):
    """One Jacobi sweep of one context: reads the tables ``src``, writes ``dst``
    (:class:`Recursions` of one context), ``work`` is :class:`SweepScratch`."""
    _state_values(src, model.beta, ctx.uniform, work)
    _backups(src, dst, model, ctx, work)


@njit(cache=True, nogil=True)
def sweeps(rec, penalty, goals, model, n_sweeps, uniform):
    """Advance the four recursions of every context ``g`` by ``n_sweeps`` Jacobi sweeps (module
    docstring). ``rec``: :class:`Recursions` ``[G, ...]``, updated in place.

    ``uniform = True`` is the published initialisation: ``dQ``, ``QL`` and ``Qt`` are evaluated
    under the uniform policy and ``Qt``'s reward is ``e_s + A(s,a) dA(s,a) / beta`` with the
    follower's uniform-policy advantages; ``Q`` always follows its own softmax policy. The two
    large tables are double-buffered (no copy per sweep)."""
    G, S = rec.q.shape[0], rec.q.shape[1]
    D = rec.dq.shape[3]
    work = SweepScratch(
        np.empty((S, 4)),
        np.empty((S, 4)),
        np.empty(S),
        np.empty(S),
        np.empty((S, D)),
        np.empty((S, D)),
        np.empty(D),
        np.empty(D),
    )
    nQ = np.empty((S, 4))
    nQL = np.empty((S, 4))
    bd = np.empty((S, 4, D))
    bt = np.empty((S, 4, D))
    budget_reward = 0.0
    for s in range(S):
        budget_reward += penalty[s]
    budget_reward *= model.budget_cost  # -budget_cost * budget = budget_cost * sum_s pen(s)
    for g in range(G):
        ctx = SweepContext(penalty, goals[g], uniform, budget_reward)
        for sw in range(n_sweeps):
            if sw % 2 == 0:
                src_d, src_t, dst_d, dst_t = rec.dq[g], rec.hyper_q[g], bd, bt
            else:
                src_d, src_t, dst_d, dst_t = bd, bt, rec.dq[g], rec.hyper_q[g]
            src = Recursions(rec.q[g], src_d, rec.leader_q[g], src_t)
            _sweep(src, Recursions(nQ, dst_d, nQL, dst_t), model, ctx, work)
            rec.q[g] = nQ
            rec.leader_q[g] = nQL
        if n_sweeps % 2 == 1:
            rec.dq[g] = bd
            rec.hyper_q[g] = bt


@njit(cache=True, nogil=True)
def start_gradient(rec, g, start, beta, out):
    """``out[D] = V~_g(start) = sum_a pi(a|start) Q~_g(start, a)``, ``pi = softmax(Q_g / beta)``."""
    pi = np.empty((rec.q.shape[1], 4))
    _policy(rec.q[g], beta, pi)
    for k in range(out.shape[0]):
        out[k] = 0.0
        for a in range(4):
            out[k] += pi[start, a] * rec.hyper_q[g, start, a, k]


@dataclass
class SingleLoopConfig:
    """One single-loop AMD run (module docstring): ``beta`` the follower temperature,
    ``budget_cost`` the leader's budget cost. Its record (:meth:`to_dict`) is in the paper's
    notation, as the ``table1`` results: ``lam`` = follower temperature, ``beta`` = budget
    cost."""

    beta: float
    budget_cost: float
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
        if not self.beta > 0:
            raise ValueError(f"follower temperature beta must be > 0, got {self.beta}")
        if not self.budget_cost >= 0:
            raise ValueError(f"budget_cost must be >= 0, got {self.budget_cost}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.iters < 1 or self.sweeps < 1 or self.init_sweeps < 0:
            raise ValueError("iters and sweeps must be >= 1 and init_sweeps >= 0")
        resolve_dynamics(self.dynamics)

    def to_dict(self) -> dict:
        """The record of the run's config, in the paper's notation (``lam``, ``beta``)."""
        edge = {field_name: key for key, field_name in PAPER_KEYS.items()}
        return {edge.get(k, k): v for k, v in asdict(self).items()}


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
    rec = Recursions(
        np.zeros((G, S, 4)), np.zeros((G, S, 4, S)), np.zeros((G, S, 4)), np.zeros((G, S, 4, S))
    )

    def pen_of(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(-BUDGET * softmax(x)[0, :-1])

    model = AmdModel(
        env.nbr,
        env.target,
        GAMMA,
        float(cfg.beta),
        float(cfg.budget_cost),
        plan.p_other,
        plan.p_diff,
    )
    # published initialisation: Q by its own soft backup, the rest under the uniform policy
    sweeps(rec, pen_of(x), goals, model, cfg.init_sweeps, True)
    exact = {
        solve: FollowerSolver(
            1,
            goals,
            RunConfig(
                algo="exact",
                beta=cfg.beta,
                budget_cost=cfg.budget_cost,
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
    grad_penalty = np.empty(S)
    bar = tqdm(range(cfg.iters + 1), disable=not progress, mininterval=5.0, leave=False)
    for t in bar:
        if t % cfg.eval_every == 0 or t > cfg.iters - cfg.eval_last:
            trace["iter"].append(t)
            trace["F"].append(float(exact["exact"].objective(x)[0]))
            trace["F_published_solve"].append(float(exact["published"].objective(x)[0]))
        if t == cfg.iters:
            break
        sweeps(rec, pen_of(x), goals, model, cfg.sweeps, False)
        xi = int(rng.integers(G))
        start_gradient(rec, xi, env.start, cfg.beta, grad_penalty)
        sigma = softmax(x)
        gs = np.zeros_like(sigma)
        gs[0, :-1] = -BUDGET * grad_penalty  # d pen(s) / d sigma_s = -0.2
        grad = sigma * (gs - (sigma * gs).sum(axis=-1, keepdims=True))
        x = np.asarray(sgd_ascent(x, grad, np.array([cfg.lr]), cfg.max_norm))
    it = np.array(trace["iter"])
    last = it > cfg.iters - cfg.eval_last
    return {
        "config": cfg.to_dict(),
        "trace": trace,
        "F_last": float(np.mean(np.array(trace["F"])[last])),
        "F_last_published_solve": float(np.mean(np.array(trace["F_published_solve"])[last])),
        "final_x": x[0].tolist(),
        "wall_s": time.perf_counter() - t0,
    }
