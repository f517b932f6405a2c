"""kernel_tuple: the memoised numba type of a named-tuple kernel argument is numba's own typing
of it, field by field, whatever the arrays' layout, dtype and writeability or the size of an int
field; kernels called with such tuples see the right specialisation."""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import njit
from numba.core import types

from tabular_reference.common.kernel_tuples import kernel_tuple


@kernel_tuple
class Pair(NamedTuple):
    a: np.ndarray
    n: int
    x: float


@kernel_tuple
class Outer(NamedTuple):
    pair: Pair
    b: np.ndarray


def _numba_rule(value):
    """Numba's typing of a named tuple: the tuple of its fields' types, with its class."""
    fields = [_numba_rule(v) if isinstance(v, tuple) else numba.typeof(v) for v in value]
    return types.BaseTuple.from_types(fields, type(value))


def test_memoised_type_is_numbas_typing_for_every_variant():
    base = np.arange(12.0).reshape(3, 4)
    readonly = base.copy()
    readonly.flags.writeable = False
    values = [
        Pair(base, 1, 0.5),
        Pair(base.T, 1, 0.5),  # F layout
        Pair(base[:, ::2], 1, 0.5),  # A layout
        Pair(readonly, 1, 0.5),
        Pair(base.astype(np.float32), 1, 0.5),
        Pair(base[0], 1, 0.5),  # 1-d
        Pair(base, 2**40, 0.5),  # int64 (intp too)
        Pair(base, 2**63, 0.5),  # uint64
        Pair(base, np.int32(3), np.float32(0.5)),  # numpy scalars
        Pair(base, True, 0.5),
        Outer(Pair(base, 1, 0.5), np.zeros(2, np.int64)),
        Outer(Pair(base.T, 1, 0.5), np.zeros(2, np.int64)),
    ]
    for value in values:  # in this order a stale memo of an earlier variant would show
        assert numba.typeof(value) == _numba_rule(value), value


@njit
def _weighted_sum(pair):
    return pair.a.sum() * pair.n + pair.x


def test_kernels_specialise_on_the_memoised_types():
    base = np.arange(12.0).reshape(3, 4)
    for a in (base, base.T, base[:, ::2]):
        assert _weighted_sum(Pair(a, 3, 0.5)) == a.sum() * 3 + 0.5
    layouts = {sig[0].types[0].layout for sig in _weighted_sum.signatures}
    assert layouts == {"C", "F", "A"}
