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
    band = np.zeros((E.n_cells, 2 * banded.BAND + 1))
    band[:, banded.BAND] = 1.0
    for s in range(E.n_cells):
        if s == goal:
            continue
        for d in range(4):
            j = E.nbr[s, d]
            band[s, j - s + banded.BAND] -= GAMMA * (plan.p_other + plan.p_diff * pi[s, d])
    return band


def _widen(band: np.ndarray, extra: int) -> np.ndarray:
    """The same matrix stored with bandwidth ``BAND + extra`` (takes the generic loops)."""
    n, b = band.shape[0], banded.BAND
    W = np.zeros((n, 2 * (b + extra) + 1))
    W[:, extra : extra + 2 * b + 1] = band
    return W


def _dense(band: np.ndarray) -> np.ndarray:
    n, b = band.shape[0], banded.BAND
    M = np.zeros((n, n))
    for i in range(n):
        for j in range(max(0, i - b), min(n, i + b + 1)):
            M[i, j] = band[i, j - i + b]
    return M


@pytest.mark.parametrize(("seed", "goal"), [(0, E.goals[0]), (1, 0), (2, E.n_cells - 1)])
def test_fixed_band_paths_equal_generic_loops_bit_for_bit(seed: int, goal: int) -> None:
    assert E.bandwidth == banded.BAND
    band = _matrix(seed, goal)
    M = _dense(band)
    fast, generic = band.copy(), _widen(band, 1)
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
