"""The banded LU / solves of the Four-Rooms follower: the fixed-bandwidth fast paths against the
generic loops (bit for bit) and against a dense solve."""

from __future__ import annotations

import numpy as np
import pytest

from tabular_reference.four_rooms import banded
from tabular_reference.four_rooms.dynamics import resolve_dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.env import GAMMA


def _matrix(seed: int, goal: int) -> np.ndarray:
    """Band storage (``b = BAND``) of ``M = I - gamma P_pi`` for a random policy."""
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(4) * 0.3, size=E.n_cells)
    plan = resolve_dynamics("paper").plan
    AB = np.zeros((E.n_cells, 2 * banded.BAND + 1))
    AB[:, banded.BAND] = 1.0
    for s in range(E.n_cells):
        if s == goal:
            continue
        for d in range(4):
            j = E.nbr[s, d]
            AB[s, j - s + banded.BAND] -= GAMMA * (plan.p_other + plan.p_diff * pi[s, d])
    return AB


def _widen(AB: np.ndarray, extra: int) -> np.ndarray:
    """The same matrix stored with bandwidth ``BAND + extra`` (takes the generic loops)."""
    n, b = AB.shape[0], banded.BAND
    W = np.zeros((n, 2 * (b + extra) + 1))
    W[:, extra : extra + 2 * b + 1] = AB
    return W


def _dense(AB: np.ndarray) -> np.ndarray:
    n, b = AB.shape[0], banded.BAND
    M = np.zeros((n, n))
    for i in range(n):
        for j in range(max(0, i - b), min(n, i + b + 1)):
            M[i, j] = AB[i, j - i + b]
    return M


@pytest.mark.parametrize(("seed", "goal"), [(0, E.goals[0]), (1, 0), (2, E.n_cells - 1)])
def test_fixed_band_paths_equal_generic_loops_bit_for_bit(seed: int, goal: int) -> None:
    assert E.bandwidth == banded.BAND
    AB = _matrix(seed, goal)
    M = _dense(AB)
    fast, generic = AB.copy(), _widen(AB, 1)
    banded.band_lu(fast, E.n_cells, banded.BAND)
    banded.band_lu(generic, E.n_cells, banded.BAND + 1)
    assert np.array_equal(fast, generic[:, 1:-1])
    rhs = np.random.default_rng(seed + 10).normal(size=E.n_cells)
    for solve in (banded.band_solve, banded.band_solve_t):
        x_fast, x_gen = rhs.copy(), rhs.copy()
        solve(fast, E.n_cells, banded.BAND, x_fast)
        solve(generic, E.n_cells, banded.BAND + 1, x_gen)
        assert np.array_equal(x_fast, x_gen)
        A = M if solve is banded.band_solve else M.T
        np.testing.assert_allclose(A @ x_fast, rhs, rtol=0, atol=1e-12)
