"""The Four-Rooms hypergradient, exact and estimated from samples (``docs/theory.md`` §2, §4, §5).

* :func:`exact_hypergradient` -- ``dF_xi/dx`` from the exact follower by the adjoint method
  (:mod:`tabular_reference.four_rooms.solver`), chained through the softmax logits.
* :func:`estimate` -- the harness of the estimator interface (``docs/validate.md``): any
  estimator (a built-in name of :mod:`tabular_reference.four_rooms.estimators`, a function,
  ``"module:function"``) on ``steps_per_iter`` sampled environment steps of the solved follower.
  Built-ins with a fused path (``hpgd``, ``hpgd-published``, ``naive``) sample and estimate in
  one numba pass (:mod:`tabular_reference.four_rooms.hpgd_kernels`, equal to the library
  estimators on the same batch) unless the backend is ``"library"``; every other estimator gets
  a batch from :func:`kernels.sample_with_actions` (numba's global generator) as a
  :class:`~tabular_reference.common.estimator_api.Batch`.
* :func:`hypergradient` -- the same by the core's options (``form``, ``leader_q``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from align_cbrl.estimators.trajectory import HPGDWeights
from tabular_reference.common.estimator_api import Estimator, check_result, resolve
from tabular_reference.four_rooms import hpgd_kernels
from tabular_reference.four_rooms.batch import (
    Buffers,
    EstimatorSettings,
    make_batch,
    make_model,
    sample_buffers,
    sample_library,
    sampler_args,
    weights_to_state_sums,
)
from tabular_reference.four_rooms.dynamics import SlipModel
from tabular_reference.four_rooms.env import FOUR_ROOMS, GAMMA
from tabular_reference.four_rooms.estimators import builtin_for
from tabular_reference.four_rooms.kernel_args import Gradients, Samples, estimator_model
from tabular_reference.four_rooms.leader import logits_gradient
from tabular_reference.four_rooms.solver import FollowerSolution, FollowerSolver

__all__ = [
    "FUSED",
    "Buffers",
    "estimate",
    "exact_hypergradient",
    "follower_advantage_gradient",
    "hypergradient",
    "sample_buffers",
]

# estimators with a fused numba kernel: (form, leader_q) -> hpgd_kernels form code
FUSED = {
    ("mc", "crossfit"): hpgd_kernels.FORM_CROSSFIT,
    ("published", None): hpgd_kernels.FORM_PUBLISHED,
    ("naive", None): hpgd_kernels.FORM_NAIVE,
}
_RUN_CHUNK = 8  # runs per estimator call in the library path


def exact_hypergradient(
    solver: FollowerSolver, x: np.ndarray, ctx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(F_xi(x)[R], dF_xi/dx[R, 105])`` for the contexts ``ctx[R]``, exactly (adjoint)."""
    sol = solver.solve(x, ctx, True)
    cfg = solver.cfg
    return sol.F, logits_gradient(
        sol.sigma, sol.grad_penalty, sol.grad_goal_value, cfg.budget_cost, sol.goal, cfg.budget_mode
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


def estimate(
    estimator: str | Estimator | Any,
    sol: FollowerSolution,
    cfg: EstimatorSettings,
    buffers: Buffers | None = None,
    rng_state: np.ndarray | None = None,
    memory: dict | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One estimate ``dF_xi/dx[R, 105]`` per run from ``cfg.steps_per_iter`` steps of the
    follower ``sol.pi`` sampled in the ``sample`` slip model of ``cfg.dynamics`` (module
    docstring). The fused path draws from ``rng_state[R, 4]`` (xoshiro256+ states,
    :func:`hpgd_kernels.seed_state`, advanced in place), the interface path from numba's global
    generator (:func:`kernels.seed_rng`). ``memory``: the job's estimator memory (kept by the
    caller across iterations); ``rng``: the job's generator for estimators that randomise;
    ``buffers``: preallocated :func:`sample_buffers`."""
    est = resolve(estimator, "four-rooms")
    R = sol.pi.shape[0]
    if buffers is None:
        buffers = sample_buffers(R, cfg.steps_per_iter)
    if cfg.estimator_backend == "fused" and est.fused is not None:
        gpen, mug = _fused(sol, cfg, est.fused, buffers, rng_state)
        return logits_gradient(sol.sigma, gpen, mug, cfg.budget_cost, sol.goal, cfg.budget_mode)
    sample_library(sol, cfg, buffers)
    memory = {} if memory is None else memory
    rng = np.random.default_rng(0) if rng is None else rng
    S, P = FOUR_ROOMS.n_cells, FOUR_ROOMS.n_params
    gpen, mug, out = np.empty((R, S)), np.empty(R), np.full((R, P), np.nan)
    weighted = np.zeros(R, dtype=bool)
    # Runs are independent: estimate in chunks of runs so that the estimator's [runs, T]
    # temporaries stay cache-sized (two workers on the whole batch slow each other down ~1.5x).
    for lo in range(0, R, _RUN_CHUNK):
        sl = slice(lo, min(R, lo + _RUN_CHUNK))
        runs = np.arange(sl.start, sl.stop)
        batch = make_batch(sol, cfg, buffers, sl, runs)
        model = make_model(sol, cfg, sl, R, memory, rng)
        res = check_result(est.fn(batch, model), len(runs), P, est.name)
        if isinstance(res, HPGDWeights):
            gpen[sl], mug[sl] = weights_to_state_sums(res, batch.states, sol.goal[sl])
            weighted[sl] = True
        else:
            out[sl] = res
    if weighted.all():  # the chain rule on all rows at once, as before the interface
        return logits_gradient(sol.sigma, gpen, mug, cfg.budget_cost, sol.goal, cfg.budget_mode)
    w = np.flatnonzero(weighted)
    out[w] = logits_gradient(
        sol.sigma[w], gpen[w], mug[w], cfg.budget_cost, sol.goal[w], cfg.budget_mode
    )
    return out


def hypergradient(
    sol: FollowerSolution,
    cfg: EstimatorSettings,
    form: str,
    tables: tuple[np.ndarray, np.ndarray] | None = None,
    buffers: Buffers | None = None,
    leader_q: str | None = "crossfit",
    rng_state: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`estimate` with the built-in of the core's options (``form`` ``"mc"`` /
    ``"covariance"`` / ``"naive"`` with ``leader_q``, or ``"published"``;
    :func:`estimators.builtin_for`). ``tables = (q_table[R, S, 4], v_table[R, S])`` for
    ``leader_q="table"``."""
    return estimate(builtin_for(form, leader_q, tables), sol, cfg, buffers, rng_state)


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
    sampler, followers = sampler_args(sol, cfg)
    hpgd_kernels.sample_and_estimate(
        sampler,
        estimator_model(code, cfg.beta),
        followers,
        rng_state,
        Samples(buffers.states, buffers.actions, buffers.taus),
        Gradients(gpen, mug),
    )
    if np.isnan(mug).any():
        raise RuntimeError(
            "hpgd-published: a run had no finished episode in its batch; raise steps_per_iter"
        )
    return gpen, mug
