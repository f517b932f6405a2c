"""The Four-Rooms hypergradient, exact and estimated from samples (``docs/theory.md`` §2, §4, §5).

* :func:`exact_hypergradient` -- ``dF_xi/dx`` from the exact follower by the adjoint method
  (:mod:`tabular_reference.four_rooms.solver`), chained through the softmax logits.
* :func:`hypergradient` -- the HPGD estimate from ``steps_per_iter`` sampled environment steps of
  the solved follower: the core estimator's per-step weights contracted with the analytic
  Jacobians of the state-based rewards (``d pen(s)`` at non-goal cells, ``d vgoal`` at the goal).

Estimators (``form``, ``leader_q``): ``"mc"`` / ``"covariance"`` of
:func:`align_cbrl.estimators.trajectory.hpgd_weights` with the leader-value source ``leader_q``
(``"crossfit"``; ``"table"``, whose critic tables come from :class:`LeaderCritic`;
``"trajectory"``), ``"published"``
(:func:`align_cbrl.estimators.published.published_hpgd_weights`) or ``"naive"``. ``mc`` /
``crossfit``, ``published`` and ``naive`` run fused in numba
(:mod:`tabular_reference.four_rooms.hpgd_kernels`, equal to the library estimators on the same
batch) unless the backend is ``"library"``, which samples with :func:`kernels.sample_with_actions`
from numba's global generator and runs the torch estimators (the earlier random stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from align_cbrl.estimators.episodes import discounted_returns, per_state_sum, time_in_episode
from align_cbrl.estimators.published import published_hpgd_weights
from align_cbrl.estimators.trajectory import HPGDWeights, hpgd_weights
from tabular_reference.four_rooms import hpgd_kernels as HK
from tabular_reference.four_rooms import kernels as K
from tabular_reference.four_rooms.dynamics import SlipModel
from tabular_reference.four_rooms.env import FOUR_ROOMS, GAMMA, MAX_EPISODE_STEPS
from tabular_reference.four_rooms.leader import logits_gradient
from tabular_reference.four_rooms.solver import FollowerSolution, FollowerSolver, SolverSettings

__all__ = [
    "Buffers",
    "LeaderCritic",
    "exact_hypergradient",
    "follower_advantage_gradient",
    "hypergradient",
    "sample_buffers",
]

# estimators with a fused numba kernel: (form, leader_q) -> hpgd_kernels form code
FUSED = {
    ("mc", "crossfit"): HK.FORM_CROSSFIT,
    ("published", None): HK.FORM_PUBLISHED,
    ("naive", None): HK.FORM_NAIVE,
}
_RUN_CHUNK = 8  # runs per estimator call in the library path


class EstimatorSettings(SolverSettings, Protocol):
    """What the estimate reads from a run configuration (``algorithms.RunConfig``), besides
    what the solver reads."""

    steps_per_iter: int
    n_envs: int
    estimator_backend: str


@dataclass(frozen=True)
class Buffers:
    """Preallocated ``[R, T]`` sample arrays (the fused path fills ``states``, ``actions`` and
    ``taus``; the library path ``states``, ``actions``, ``leader_rewards``, ``episode_start``)."""

    states: np.ndarray
    actions: np.ndarray
    leader_rewards: np.ndarray
    episode_start: np.ndarray
    taus: np.ndarray


def sample_buffers(n_runs: int, n_steps: int) -> Buffers:
    """Empty :class:`Buffers` for ``n_runs`` runs of ``n_steps`` steps."""
    return Buffers(
        np.empty((n_runs, n_steps), dtype=np.int64),
        np.empty((n_runs, n_steps), dtype=np.int64),
        np.empty((n_runs, n_steps)),
        np.empty((n_runs, n_steps), dtype=np.bool_),
        np.empty((n_runs, n_steps), dtype=np.int64),
    )


def exact_hypergradient(
    solver: FollowerSolver, x: np.ndarray, ctx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(F_xi(x)[R], dF_xi/dx[R, 105])`` for the contexts ``ctx[R]``, exactly (adjoint)."""
    sol = solver.solve(x, ctx, True)
    cfg = solver.cfg
    return sol.F, logits_gradient(
        sol.sigma, sol.gpen, sol.mug, cfg.budget_cost, sol.goal, cfg.budget_mode
    )


def follower_advantage_gradient(pi: np.ndarray, goal: int, plan: SlipModel) -> np.ndarray:
    """Exact ``dA(s, a) / dpen(j)``, ``[S, 4, S]``: how the follower's advantage under the
    policy ``pi[S, 4]`` moves with the state rewards, ``dA(s, a) = gamma sum_s' (P(s'|s,a) -
    P_pi(s'|s)) dV(s')`` with ``dV = (I - gamma P_pi)^{-1}`` (the goal terminal: no successors,
    its reward fixed). For analyses that replace the estimated follower factor by the exact one."""
    S = FOUR_ROOMS.n_cells
    P = FOUR_ROOMS.dense_transitions(plan)
    P_pi = np.einsum("sa,sat->st", pi, P)
    P_pi[goal] = 0.0
    rhs = np.eye(S)
    rhs[goal] = 0.0
    dV = np.linalg.solve(np.eye(S) - GAMMA * P_pi, rhs)  # dV[s, j] = dV(s) / dpen(j)
    dA = GAMMA * np.einsum("sat,tj->saj", P - P_pi[:, None, :], dV)
    dA[goal] = 0.0
    return dA


def hypergradient(
    sol: FollowerSolution,
    cfg: EstimatorSettings,
    form: str,
    tables: tuple[np.ndarray, np.ndarray] | None = None,
    buffers: Buffers | None = None,
    leader_q: str | None = "crossfit",
    rng_state: np.ndarray | None = None,
) -> np.ndarray:
    """One HPGD estimate ``dF_xi/dx[R, 105]`` per run from ``cfg.steps_per_iter`` steps of the
    follower ``sol.pi`` sampled in the ``sample`` slip model of ``cfg.dynamics`` (module
    docstring). ``tables = (q_table[R, S, 4], v_table[R, S])`` for ``leader_q="table"``; the fused
    path draws from ``rng_state[R, 4]`` (xoshiro256+ states, :func:`hpgd_kernels.seed_state`,
    advanced in place), the library path from numba's global generator
    (:func:`kernels.seed_rng`); ``buffers``: preallocated :func:`sample_buffers`."""
    R = sol.pi.shape[0]
    if buffers is None:
        buffers = sample_buffers(R, cfg.steps_per_iter)
    key = (form, None if form in ("naive", "published") else leader_q)
    if cfg.estimator_backend == "fused" and key in FUSED:
        gpen, mug = _fused(sol, cfg, FUSED[key], buffers, rng_state)
    else:
        gpen, mug = _library(sol, cfg, form, leader_q, tables, buffers)
    return logits_gradient(sol.sigma, gpen, mug, cfg.budget_cost, sol.goal, cfg.budget_mode)


def _sampler_args(sol: FollowerSolution, cfg: EstimatorSettings) -> tuple:
    """Arguments shared by both samplers: policy, context, layout and the sampling slip model."""
    env, sample = FOUR_ROOMS, cfg.model.sample
    steps = cfg.steps_per_iter // cfg.n_envs
    return (
        sol.pi, sol.goal, sol.vgoal, env.start, env.target, env.nbr, sample.p_intended,
        sample.p_other, cfg.n_envs, steps, MAX_EPISODE_STEPS,
    )  # fmt: skip


def _fused(
    sol: FollowerSolution,
    cfg: EstimatorSettings,
    code: int,
    buffers: Buffers,
    rng_state: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    R = sol.pi.shape[0]
    if rng_state is None or rng_state.shape != (R, 4) or rng_state.dtype != np.uint64:
        raise ValueError(
            f"the fused HPGD path needs rng_state: uint64 [{R}, 4] xoshiro256+ states "
            "(hpgd_kernels.seed_state per run)"
        )
    gpen = np.empty((R, FOUR_ROOMS.n_cells))
    mug = np.empty(R)
    HK.sample_and_estimate(
        *_sampler_args(sol, cfg), GAMMA, cfg.beta, code, rng_state, buffers.states,
        buffers.actions, buffers.taus, gpen, mug,
    )  # fmt: skip
    if np.isnan(mug).any():
        raise RuntimeError(
            "hpgd-published: a run had no finished episode in its batch; raise steps_per_iter"
        )
    return gpen, mug


def _library(
    sol: FollowerSolution,
    cfg: EstimatorSettings,
    form: str,
    leader_q: str | None,
    tables: tuple[np.ndarray, np.ndarray] | None,
    buffers: Buffers,
) -> tuple[np.ndarray, np.ndarray]:
    b = buffers
    K.sample_with_actions(
        *_sampler_args(sol, cfg), b.states, b.actions, b.leader_rewards, b.episode_start
    )
    R, S = sol.pi.shape[0], FOUR_ROOMS.n_cells
    gpen = np.empty((R, S))
    lead = np.empty((R, S))
    # Runs are independent: estimate in chunks of runs so that the estimator's [runs, T]
    # temporaries stay cache-sized (two workers on the whole batch slow each other down ~1.5x).
    for lo in range(0, R, _RUN_CHUNK):
        sl = slice(lo, min(R, lo + _RUN_CHUNK))
        st = torch.from_numpy(b.states[sl])
        w = _library_weights(
            st,
            torch.from_numpy(b.actions[sl]),
            torch.from_numpy(b.leader_rewards[sl]),
            torch.from_numpy(b.episode_start[sl]),
            torch.from_numpy(sol.goal[sl]),
            cfg.beta,
            form,
            leader_q,
            None if tables is None else (tables[0][sl], tables[1][sl]),
        )
        gpen[sl] = per_state_sum(w.follower, st, S).numpy()
        lead[sl] = per_state_sum(w.leader, st, S).numpy()
    rows = np.arange(R)
    gpen[rows, sol.goal] = 0.0  # the goal's follower reward (1) does not depend on x
    return gpen, lead[rows, sol.goal]  # only the goal's leader reward depends on x


def _library_weights(
    st: torch.Tensor,
    ac: torch.Tensor,
    lr: torch.Tensor,
    es: torch.Tensor,
    goal: torch.Tensor,
    beta: float,
    form: str,
    leader_q: str | None,
    tables: tuple[np.ndarray, np.ndarray] | None,
) -> HPGDWeights:
    """The library estimators (torch) on one chunk of sampled runs."""
    S = FOUR_ROOMS.n_cells
    if form == "published":
        tau = time_in_episode(es)
        done = (st == goal[:, None]) | (tau == MAX_EPISODE_STEPS - 1)
        return published_hpgd_weights(
            st, ac, lr, es, GAMMA, beta, n_states=S, n_actions=4, done=done
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
    return hpgd_weights(st, lr, es, GAMMA, beta, form=form, n_states=S, **kw)


class LeaderCritic:
    """Leader critic tables for the covariance form, per (run, context): EMA (rate ``ema``)
    of the mean observed leader return ``Ghat_t`` per (state, action) and per state over each
    iteration's visits (first visit: copied). Used from the next iteration on, so they are
    independent of the current sample; unvisited (s, a) entries fall back to ``v(s)`` (zero
    advantage)."""

    def __init__(self, n_runs: int, n_ctx: int, n_states: int, ema: float) -> None:
        self.q = np.zeros((n_runs, n_ctx, n_states, 4))
        self.q_seen = np.zeros((n_runs, n_ctx, n_states, 4), dtype=bool)
        self.v = np.zeros((n_runs, n_ctx, n_states))
        self.v_seen = np.zeros((n_runs, n_ctx, n_states), dtype=bool)
        self.ema = ema

    def tables(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(len(ctx))
        v = self.v[rows, ctx]
        q = np.where(self.q_seen[rows, ctx], self.q[rows, ctx], v[:, :, None])
        return np.ascontiguousarray(q), np.ascontiguousarray(v)

    def update(self, ctx: np.ndarray, buffers: Buffers) -> None:
        """Blend in the leader returns of the batch just sampled (library path)."""
        R, S = buffers.states.shape[0], self.v.shape[-1]
        rows = np.arange(R)
        G = discounted_returns(
            torch.from_numpy(buffers.leader_rewards), torch.from_numpy(buffers.episode_start), GAMMA
        )
        st = torch.from_numpy(buffers.states)
        sa = st * 4 + torch.from_numpy(buffers.actions)
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
