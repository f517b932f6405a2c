"""Four-Rooms followers that *learn* instead of being solved (``docs/accelerated.md``).

A :class:`LearningFollower` keeps one soft value table ``V[S]`` per (run, context) and trains it
by **soft value-iteration sweeps** (synchronous, Jacobi): one follower update is

    V(s) <- beta log sum_a exp(Q_V(s, a) / beta),   Q_V(s, a) = pen(s) + gamma sum_d P(d|a) V(nbr(s, d))

at every non-goal cell (the goal is terminal with ``V = 1``), under the leader's current
penalties ``pen`` (``docs/theory.md`` §1, §5). The follower acts with the softmax policy of its
table, ``pi(a|s) = softmax_a(Q_V(s, a) / beta)``. The sweep is a ``gamma``-contraction with the
soft-optimal ``V*`` as its fixed point, so ``n`` sweeps from a table ``V_0`` leave an error of at
most ``gamma^n ||V_0 - V*||_inf``; the policy error is that divided by ``beta``.

``advance(x, ctx, steps)`` continues the training by ``steps`` sweeps from the stored table
(**warm start**: the table carries over from one call, and one outer iteration, to the next).
With ``warm_start=False`` every call restarts from the initial table (``V = 0``, goal 1), so the
follower cannot continue a run: the multilevel estimator refuses it. ``steps = None`` is the
``n = inf`` case, the exact solver (:class:`tabular_reference.four_rooms.solver.FollowerSolver`).

:meth:`LearningFollower.solution` returns a :class:`FollowerSolution` of the *learned* policy
(its ``F`` the exact leader value of that policy), which
:func:`tabular_reference.four_rooms.hypergradient.hypergradient` samples from unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tabular_reference.four_rooms import kernels
from tabular_reference.four_rooms.env import FOUR_ROOMS
from tabular_reference.four_rooms.kernel_args import Contexts, follower_model, solve_outputs
from tabular_reference.four_rooms.leader import budget, penalties, softmax
from tabular_reference.four_rooms.solver import FollowerSolution, SolverSettings

__all__ = ["LearningFollower", "soft_vi_sweeps"]


@njit(cache=True, nogil=True)
def soft_vi_sweeps(model, penalty, goal, V, n_sweeps, scratch):
    """``n_sweeps`` synchronous soft value-iteration sweeps of every run ``r``: ``V[r]`` (in
    place) ``<- T(V[r])`` under ``penalty[r]``, goal ``goal[r]`` terminal with value 1 (module
    docstring); ``scratch[S]`` holds the new values of a sweep."""
    R, n = V.shape
    beta = model.temperature
    q = np.empty(4)
    for r in range(R):
        for _k in range(n_sweeps):
            for s in range(n):
                if s == goal[r]:
                    scratch[s] = 1.0
                    continue
                m = kernels.soft_q(model, penalty[r], s, V[r], q)
                z = 0.0
                for a in range(4):
                    z += math.exp((q[a] - m) / beta)
                scratch[s] = m + beta * math.log(z)
            V[r, :] = scratch


@njit(cache=True, nogil=True)
def policy_values(model, contexts, V, want_grad, out):
    """For every run: the softmax policy ``out.policy[r]`` of the table ``V[r]``, the soft
    Bellman residual ``out.residual[r] = max|T(V) - V|``, the exact leader value
    ``out.value[r]`` of that policy and, with ``want_grad``, the (HG) formula evaluated at it
    (``out.grad_penalty[r]``, ``out.grad_goal_value[r]``); ``out.newton_steps`` is not
    written."""
    R, n = V.shape
    factors = np.empty((n, 2 * model.bandwidth + 1))
    neg_entropy = np.empty(n)
    for r in range(R):
        goal = contexts.goal[r]
        policy = out.policy[r]
        out.residual[r] = kernels.soft_q_policy(
            model, contexts.penalty[r], goal, V[r], policy, neg_entropy
        )
        kernels.build_m(model, policy, goal, factors)
        kernels.write_leader_values(model, contexts, r, factors, want_grad, out)


class LearningFollower:
    """Soft value-iteration followers for ``n_runs`` runs and the contexts ``goals[C]``.

    Args:
        n_runs, goals, cfg: as :class:`FollowerSolver` (``cfg`` gives ``beta``, the budget and
            the planning slip model).
        warm_start: keep each (run, context) table between calls (the default); ``False``
            restarts every :meth:`advance` from the initial table.

    ``updates[R]`` counts the sweeps each run has trained, all contexts together."""

    def __init__(
        self, n_runs: int, goals: np.ndarray, cfg: SolverSettings, warm_start: bool = True
    ) -> None:
        self.env = FOUR_ROOMS
        self.goals = np.asarray(goals, dtype=np.int64)
        self.cfg = cfg
        self.plan = cfg.model.plan
        self.model = follower_model(cfg.beta, self.plan)
        self.warm_start = bool(warm_start)
        self.V = np.zeros((n_runs, len(self.goals), self.env.n_cells))
        self.updates = np.zeros(n_runs, dtype=np.int64)
        self._scratch = np.empty(self.env.n_cells)
        self.last_residual = np.zeros(0)

    def _pen(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(penalties(softmax(x)) + self.cfg.step_reward)

    def initial_table(self, n: int) -> np.ndarray:
        """The cold-start table of ``n`` runs: ``V = 0`` (the goal's entry is set by the first
        sweep)."""
        return np.zeros((n, self.env.n_cells))

    def advance(self, x: np.ndarray, ctx: np.ndarray, steps: int, runs: np.ndarray | None = None):
        """Train the tables of ``(runs[i], ctx[i])`` by ``steps >= 0`` sweeps at logits ``x[i]``
        (from the stored tables; from the initial table when ``warm_start`` is off)."""
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
            raise ValueError(f"follower steps must be an integer >= 0, got {steps!r}")
        runs = np.arange(x.shape[0]) if runs is None else np.asarray(runs)
        V = self.V[runs, ctx] if self.warm_start else self.initial_table(len(runs))
        soft_vi_sweeps(self.model, self._pen(x), self.goals[ctx], V, int(steps), self._scratch)
        self.V[runs, ctx] = V
        np.add.at(self.updates, runs, int(steps))

    def solution(
        self,
        x: np.ndarray,
        ctx: np.ndarray,
        want_grad: bool = False,
        runs: np.ndarray | None = None,
    ) -> FollowerSolution:
        """The learned follower of ``(runs[i], ctx[i])`` at logits ``x[i]``: its softmax policy,
        the exact leader value ``F`` of that policy and (``want_grad``) the (HG) formula at it;
        ``V`` is the learned table. ``last_residual[R]`` keeps its ``max|T(V) - V|``."""
        runs = np.arange(x.shape[0]) if runs is None else np.asarray(runs)
        cfg = self.cfg
        R = x.shape[0]
        sigma = softmax(x)
        goal = self.goals[ctx]
        goal_value = -cfg.budget_cost * budget(sigma, goal, cfg.budget_mode)
        V = np.ascontiguousarray(self.V[runs, ctx])
        out = solve_outputs(R)
        out.grad_penalty[:] = 0.0
        out.grad_goal_value[:] = 0.0
        contexts = Contexts(self._pen(x), goal, goal_value)
        policy_values(self.model, contexts, V, want_grad, out)
        self.last_residual = out.residual
        return FollowerSolution.from_outputs(out, sigma, contexts, V)

    def set_tables(self, ctx: np.ndarray, V: np.ndarray, runs: np.ndarray | None = None) -> None:
        """Replace the stored tables of ``(runs[i], ctx[i])`` by ``V[i]`` (e.g. an exact
        solution at a nearby ``x``: :meth:`FollowerSolver.solve` returns one)."""
        runs = np.arange(len(ctx)) if runs is None else np.asarray(runs)
        self.V[runs, ctx] = V
