"""The published single-loop AMD's recursions (``four_rooms.amd_single_loop``): at their joint
fixed point the hypergradient recursion equals the derivative of the leader value, checked
against central finite differences of the converged leader recursion itself."""

from __future__ import annotations

import numpy as np
import pytest

from tabular_reference.four_rooms.amd_single_loop import (
    AmdModel,
    Recursions,
    SingleLoopConfig,
    run_single_loop,
    start_gradient,
    sweeps,
)
from tabular_reference.four_rooms.dynamics import resolve_dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.env import GAMMA


def _converged(pen, goal, lam, beta, n=3000):
    S = E.n_cells
    rec = Recursions(
        np.zeros((1, S, 4)), np.zeros((1, S, 4, S)), np.zeros((1, S, 4)), np.zeros((1, S, 4, S))
    )
    plan = resolve_dynamics("paper").plan
    goals = np.array([goal])
    model = AmdModel(E.nbr, E.target, GAMMA, lam, beta, plan.p_other, plan.p_diff)
    sweeps(rec, pen, goals, model, 500, True)
    sweeps(rec, pen, goals, model, n, False)
    return rec


def _leader_value(rec, lam):
    q = rec.q[0, E.start] / lam
    p = np.exp(q - q.max())
    p /= p.sum()
    return float(p @ rec.leader_q[0, E.start])


@pytest.mark.parametrize("lam", [0.05, 0.01])
def test_fixed_point_gradient_matches_finite_differences(lam):
    rng = np.random.default_rng(3)
    beta = 2.0
    pen = np.ascontiguousarray(-0.2 * rng.dirichlet(np.ones(E.n_cells)) * 30)
    goal = E.goals[0]
    rec = _converged(pen, goal, lam, beta)
    g = np.empty(E.n_cells)
    start_gradient(rec, 0, E.start, lam, g)
    h = 1e-5
    for _ in range(2):
        v = rng.normal(size=E.n_cells)
        fp = _leader_value(_converged(pen + h * v, goal, lam, beta), lam)
        fm = _leader_value(_converged(pen - h * v, goal, lam, beta), lam)
        fd = (fp - fm) / (2 * h)
        assert g @ v == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_short_run_and_bad_input():
    rec = run_single_loop(
        SingleLoopConfig(
            beta=0.005,
            budget_cost=1.0,
            lr=0.5,
            seed=0,
            iters=3,
            sweeps=5,
            init_sweeps=5,
            eval_last=2,
        )
    )
    assert rec["trace"]["iter"] == [0, 2, 3]
    assert np.isfinite(rec["F_last"]) and np.isfinite(rec["F_last_published_solve"])
    assert (rec["config"]["lam"], rec["config"]["beta"]) == (0.005, 1.0)  # the paper's notation
    with pytest.raises(ValueError, match="follower temperature beta"):
        run_single_loop(SingleLoopConfig(beta=0.0, budget_cost=1.0, lr=0.5, seed=0))
    with pytest.raises(ValueError, match="preset"):
        run_single_loop(
            SingleLoopConfig(beta=0.005, budget_cost=1.0, lr=0.5, seed=0, dynamics="nope")
        )
