"""Banded LU of ``M = I - gamma P_pi`` (numba), the linear algebra of the Four-Rooms solve.

In the row-major order of the free cells a move changes the index by at most the map's
bandwidth ``b``, so ``M`` is a band matrix, stored as ``band[i, j - i + b] = M[i, j]``
(``[n, 2 b + 1]``). ``M`` is strictly diagonally dominant (``gamma < 1``), so the LU needs no
pivoting.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tabular_reference.four_rooms.env import FOUR_ROOMS

__all__ = ["BAND", "band_lu", "band_solve", "band_solve_t"]

# the map's bandwidth, a compile-time constant of the fast LU path (any other width takes the
# generic loop)
BAND = int(FOUR_ROOMS.bandwidth)


@njit(cache=True, nogil=True)
def band_lu(band, n, width):
    """In-place LU of the band matrix ``band`` (``n`` rows, bandwidth ``width``); L's
    multipliers (column entry times the pivot's reciprocal) overwrite the lower band.

    For the map's own bandwidth (:data:`BAND`) the row updates run with a compile-time trip
    count (unrolled and vectorised by LLVM) after the step's multipliers are computed together:
    the same operations on the same operands in the same order per entry, so the factors are
    bit-identical to the generic loop, ~25-40% faster (``bench/four_rooms_speed.py``)."""
    if width == BAND:
        _band_lu_fixed(band, n)
        return
    b = width
    for k in range(n):
        inv = 1.0 / band[k, b]
        hi = min(n, k + b + 1)
        for i in range(k + 1, hi):
            mult = band[i, k - i + b] * inv
            if mult != 0.0:
                band[i, k - i + b] = mult
                for j in range(k + 1, hi):
                    band[i, j - i + b] -= mult * band[k, j - k + b]


@njit(cache=True, nogil=True)
def _band_lu_fixed(band, n):
    """:func:`band_lu` for ``width = BAND`` (a compile-time constant)."""
    mults = np.empty(BAND)
    for k in range(n):
        pivot_row = band[k]
        inv = 1.0 / pivot_row[BAND]
        n_below = min(n, k + BAND + 1) - k - 1
        for r in range(n_below):
            mults[r] = band[k + 1 + r, BAND - 1 - r] * inv
        if n_below == BAND:
            for r in range(BAND):
                _row_update(band[k + 1 + r], pivot_row, mults[r], BAND - 1 - r, BAND)
        else:
            for r in range(n_below):
                _row_update(band[k + 1 + r], pivot_row, mults[r], BAND - 1 - r, n_below)


@njit(cache=True, nogil=True, inline="always")
def _row_update(row, pivot_row, mult, offset, count):
    """Row ``i`` of step ``k``: store the multiplier, subtract ``mult`` x (U row ``k``)."""
    if mult != 0.0:
        row[offset] = mult
        for j in range(1, count + 1):
            row[offset + j] -= mult * pivot_row[BAND + j]


@njit(cache=True, nogil=True)
def band_solve(band, n, width, x):
    """Solve ``M x = rhs`` in place with the factors of :func:`band_lu` (for ``width = BAND``
    the interior rows run a compile-time trip count; same operations in the same order)."""
    if width == BAND and n > 2 * BAND:
        _band_solve_fixed(band, n, x)
        return
    b = width
    for i in range(n):
        s = x[i]
        for k in range(max(0, i - b), i):
            s -= band[i, k - i + b] * x[k]
        x[i] = s
    for i in range(n - 1, -1, -1):
        s = x[i]
        for j in range(i + 1, min(n, i + b + 1)):
            s -= band[i, j - i + b] * x[j]
        x[i] = s / band[i, b]


@njit(cache=True, nogil=True)
def _band_solve_fixed(band, n, x):
    """:func:`band_solve` for ``width = BAND``."""
    for i in range(BAND):
        s = x[i]
        for k in range(i):
            s -= band[i, k - i + BAND] * x[k]
        x[i] = s
    for i in range(BAND, n):
        s = x[i]
        row = band[i]
        for m in range(BAND):
            s -= row[m] * x[i - BAND + m]
        x[i] = s
    for i in range(n - 1, n - 1 - BAND, -1):
        s = x[i]
        for j in range(i + 1, n):
            s -= band[i, j - i + BAND] * x[j]
        x[i] = s / band[i, BAND]
    for i in range(n - 1 - BAND, -1, -1):
        s = x[i]
        row = band[i]
        for m in range(1, BAND + 1):
            s -= row[BAND + m] * x[i + m]
        x[i] = s / row[BAND]


@njit(cache=True, nogil=True)
def band_solve_t(band, n, width, x):
    """Solve ``M^T x = rhs`` in place with the factors of :func:`band_lu`."""
    b = width
    for i in range(n):  # U^T z = rhs
        s = x[i]
        for k in range(max(0, i - b), i):
            s -= band[k, i - k + b] * x[k]
        x[i] = s / band[i, b]
    for i in range(n - 1, -1, -1):  # L^T w = z
        s = x[i]
        for k in range(i + 1, min(n, i + b + 1)):
            s -= band[k, i - k + b] * x[k]
        x[i] = s
