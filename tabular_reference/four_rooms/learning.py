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

from tabular_reference.four_rooms import kernels as K
from tabular_reference.four_rooms.env import FOUR_ROOMS, GAMMA
from tabular_reference.four_rooms.leader import budget, penalties, softmax
from tabular_reference.four_rooms.solver import FollowerSolution, SolverSettings

__all__ = ["LearningFollower", "soft_vi_sweeps"]


@njit(cache=True, nogil=True)
def soft_vi_sweeps(pen, goal, V, nbr, gamma, beta, p_oth, p_diff, n_sweeps, W):
    """``n_sweeps`` synchronous soft value-iteration sweeps of every run ``r``: ``V[r]`` (in
    place) ``<- T(V[r])`` under ``pen[r]``, goal ``goal[r]`` terminal with value 1 (module
    docstring); ``W[S]`` is scratch."""
    R, n = V.shape
    q = np.empty(4)
    for r in range(R):
        for _k in range(n_sweeps):
            for s in range(n):
                if s == goal[r]:
                    W[s] = 1.0
                    continue
                m = K.soft_q(pen[r], s, V[r], nbr, gamma, p_oth, p_diff, q)
                z = 0.0
                for a in range(4):
                    z += math.exp((q[a] - m) / beta)
                W[s] = m + beta * math.log(z)
            V[r, :] = W


@njit(cache=True, nogil=True)
def policy_values(
    pen, goal, vgoal, V, nbr, start, target, gamma, beta, p_oth, p_diff, b, want_grad, F, mug,
    gpen, pi, resid,
):  # fmt: skip
    """For every run: the softmax policy ``pi[r]`` of the table ``V[r]``, the soft Bellman
    residual ``resid[r] = max|T(V) - V|``, the exact leader value ``F[r]`` of that policy and,
    with ``want_grad``, the (HG) formula evaluated at it (``gpen[r]``, ``mug[r]``)."""
    R, n = V.shape
    AB = np.empty((n, 2 * b + 1))
    ent = np.empty(n)
    for r in range(R):
        resid[r] = K.soft_q_policy(
            pen[r], goal[r], V[r], nbr, gamma, beta, p_oth, p_diff, pi[r], ent
        )
        K.build_m(pi[r], goal[r], nbr, gamma, p_oth, p_diff, b, AB)
        F[r], mug[r] = K.leader_and_grad(
            pi[r], goal[r], vgoal[r], start, target, nbr, gamma, beta, p_diff, b, AB, want_grad,
            gpen[r],
        )  # fmt: skip


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
        pl = self.plan
        soft_vi_sweeps(
            self._pen(x), self.goals[ctx], V, self.env.nbr, GAMMA, self.cfg.beta, pl.p_other,
            pl.p_diff, int(steps), self._scratch,
        )  # fmt: skip
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
        cfg, env, pl = self.cfg, self.env, self.plan
        R, S = x.shape[0], env.n_cells
        sigma = softmax(x)
        goal = self.goals[ctx]
        vgoal = -cfg.budget_cost * budget(sigma, goal, cfg.budget_mode)
        out = FollowerSolution(
            F=np.empty(R), gpen=np.zeros((R, S)), mug=np.zeros(R), pi=np.empty((R, S, 4)),
            sigma=sigma, goal=goal, vgoal=vgoal, V=np.ascontiguousarray(self.V[runs, ctx]),
        )  # fmt: skip
        self.last_residual = np.empty(R)
        policy_values(
            self._pen(x), goal, vgoal, out.V, env.nbr, env.start, env.target, GAMMA, cfg.beta,
            pl.p_other, pl.p_diff, env.bandwidth, want_grad, out.F, out.mug, out.gpen, out.pi,
            self.last_residual,
        )  # fmt: skip
        return out

    def set_tables(self, ctx: np.ndarray, V: np.ndarray, runs: np.ndarray | None = None) -> None:
        """Replace the stored tables of ``(runs[i], ctx[i])`` by ``V[i]`` (e.g. an exact
        solution at a nearby ``x``: :meth:`FollowerSolver.solve` returns one)."""
        runs = np.arange(len(ctx)) if runs is None else np.asarray(runs)
        self.V[runs, ctx] = V
