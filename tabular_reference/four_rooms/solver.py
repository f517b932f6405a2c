"""The exact Four-Rooms follower and leader value for a batch of runs (``docs/theory.md`` §5).

:class:`FollowerSolver` solves, for every run ``r`` with leader logits ``x[r]`` and context (goal)
``ctx[r]``, the soft-optimal follower in the planning slip model (banded Newton,
:func:`kernels.solve_batch_cached`, warm-started per (run, context)) or, with
``follower_solve="published"``, the published code's truncated Q iteration; then the exact
leader value ``F_xi(x)`` and, on request, its gradient with respect to the state rewards by the
adjoint (:func:`kernels.leader_and_grad`). Results come back as a :class:`FollowerSolution`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tabular_reference.four_rooms import kernels
from tabular_reference.four_rooms.dynamics import Dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS
from tabular_reference.four_rooms.kernel_args import (
    Contexts,
    FactorCache,
    Newton,
    SolveOutputs,
    follower_model,
    solve_outputs,
)
from tabular_reference.four_rooms.leader import budget, penalties, softmax

__all__ = ["FollowerSolution", "FollowerSolver", "SolverSettings"]

# the published code's follower solve: 100 policy improvements x 5 sweeps from Q = 0
PUBLISHED_IMPROVEMENTS, PUBLISHED_SWEEPS = 100, 5


class SolverSettings(Protocol):
    """What the solver reads from a run configuration (``algorithms.RunConfig``)."""

    beta: float
    budget_cost: float
    budget_mode: str
    step_reward: float
    tol: float
    max_newton: int
    follower_solve: str

    @property
    def model(self) -> Dynamics: ...


@dataclass(frozen=True)
class FollowerSolution:
    """One solve for ``R`` runs: leader value ``F[R]``, ``grad_penalty[R, S] = dF/dpen`` and
    ``grad_goal_value[R] = dF/dvgoal`` (only when solved with ``want_grad``; otherwise unset),
    the follower's policy ``pi[R, S, 4]``, ``sigma = softmax(x)`` ``[R, 105]``, the goal cell
    ``goal[R]``, the leader's goal reward ``goal_value[R] = -budget_cost * budget`` (``vgoal``
    in ``docs/theory.md`` §5) and the follower values ``V[R, S]`` (a warm start for a nearby
    solve)."""

    F: np.ndarray
    grad_penalty: np.ndarray
    grad_goal_value: np.ndarray
    pi: np.ndarray
    sigma: np.ndarray
    goal: np.ndarray
    goal_value: np.ndarray
    V: np.ndarray

    @classmethod
    def from_outputs(
        cls, out: SolveOutputs, sigma: np.ndarray, contexts: Contexts, V: np.ndarray
    ) -> FollowerSolution:
        """The solution whose arrays are the buffers ``out`` of a batched solve of
        ``contexts`` at ``sigma``, with follower values ``V``."""
        return cls(
            F=out.value,
            grad_penalty=out.grad_penalty,
            grad_goal_value=out.grad_goal_value,
            pi=out.policy,
            sigma=sigma,
            goal=contexts.goal,
            goal_value=contexts.goal_value,
            V=V,
        )


class FollowerSolver:
    """Batched exact follower/leader for fixed settings, with warm starts per (run, context).

    ``goals[C]``: the cell index of each context. ``newton_total / newton_calls`` is the mean
    number of Newton steps per solve."""

    def __init__(self, n_runs: int, goals: np.ndarray, cfg: SolverSettings) -> None:
        self.env = FOUR_ROOMS
        self.goals = goals
        self.cfg = cfg
        self.plan = cfg.model.plan
        self.model = follower_model(cfg.beta, self.plan)
        S, C = self.env.n_cells, len(goals)
        self.V = np.zeros((n_runs, C, S))
        if cfg.follower_solve != "published":
            # per (run, context) slot r * C + c: the factorised M(pi) and entropies of the
            # policy of the stored V[r, c] (kernels.solve_batch_cached), valid once solved
            self._factors = np.empty((n_runs * C, S, 2 * self.env.bandwidth + 1))
            self._neg_entropy = np.empty((n_runs * C, S))
            self._factors_valid = np.zeros(n_runs * C, dtype=np.bool_)
        self.newton_total = 0
        self.newton_calls = 0

    def solve(
        self,
        x: np.ndarray,
        ctx: np.ndarray,
        want_grad: bool,
        store: bool = True,
        runs: np.ndarray | None = None,
    ) -> FollowerSolution:
        """Solve for runs with contexts ``ctx[R]`` at logits ``x[R, 105]``, warm-started from
        the stored solution of each (run, context) (its first Newton step reuses that
        solution's factorised ``M(pi)``, :func:`kernels.soft_newton`). ``store=False`` leaves
        the stored solutions as they are (a solve at a nearby point, e.g. zero-order's
        perturbed one). ``runs[R]`` (optional) names the runs of the rows when ``x`` holds a
        subset of them; by default row ``r`` is run ``r``."""
        cfg = self.cfg
        R = x.shape[0]
        sigma = softmax(x)
        penalty = np.ascontiguousarray(penalties(sigma) + cfg.step_reward)
        goal = self.goals[ctx]
        goal_value = -cfg.budget_cost * budget(sigma, goal, cfg.budget_mode)
        contexts = Contexts(penalty, goal, goal_value)
        rows = np.arange(R) if runs is None else np.asarray(runs)
        V = self.V[rows, ctx]  # a copy (fancy indexing)
        out = solve_outputs(R)
        sol = FollowerSolution.from_outputs(out, sigma, contexts, V)
        if cfg.follower_solve == "published":
            kernels.solve_batch_published(
                self.model, contexts, PUBLISHED_IMPROVEMENTS, PUBLISHED_SWEEPS, want_grad, out
            )
            self.newton_calls += R
            return sol
        cache = FactorCache(
            rows * len(self.goals) + ctx, self._factors, self._neg_entropy, self._factors_valid
        )
        newton = Newton(float(cfg.tol), int(cfg.max_newton))
        kernels.solve_batch_cached(self.model, newton, contexts, V, want_grad, out, cache, store)
        steps, res = out.newton_steps, out.residual
        if (steps < 0).any():
            bad = int(np.argmax(steps < 0))
            raise RuntimeError(
                f"follower solve did not converge (run {bad}, residual {res[bad]:.2e} > tol "
                f"{cfg.tol:.1e} after {cfg.max_newton} Newton steps); raise max_newton or tol"
            )
        if store:
            self.V[rows, ctx] = V
        self.newton_total += int(steps.sum())
        self.newton_calls += R
        return sol

    def values(self, x: np.ndarray) -> np.ndarray:
        """Exact ``F_xi(x)`` per run and context, ``[R, C]``."""
        R = x.shape[0]
        return np.stack([self.solve(x, np.full(R, k), False).F for k in range(len(self.goals))], 1)

    def objective(self, x: np.ndarray) -> np.ndarray:
        """``F(x) = mean over contexts of F_xi(x)`` (all runs), ``[R]``."""
        R = x.shape[0]
        tot = np.zeros(R)
        for k in range(len(self.goals)):
            tot += self.solve(x, np.full(R, k), False).F
        return tot / len(self.goals)
