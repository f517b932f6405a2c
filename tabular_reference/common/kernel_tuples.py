"""Named tuples as numba kernel arguments, typed at the cost of plain arrays.

Numba types a named-tuple argument on every call in Python, field by field (about 1-3 us per
array field), where a plain array argument is typed in C. :func:`kernel_tuple` registers for a
``NamedTuple`` class a typing rule that looks the numba type up by what determines it (per array
field: class, dtype, number of dimensions, flags such as contiguity and writeability; per scalar:
its class, and for a Python ``int`` its size class; nested tuples recursively) and computes it with
numba's own rule the first time. The types are numba's, so the compiled and cached kernels are
the same; only the per-call typing is memoised. Fields must be arrays, numbers, bools or such
tuples (what the kernels of ``tabular_reference`` take).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from numba.core import types
from numba.extending import typeof_impl

__all__ = ["kernel_tuple"]

T = TypeVar("T", bound=type)

_TYPES: dict[tuple, types.Type] = {}


def _key(value: Any) -> Any:
    """What numba's typing of ``value`` depends on (``numba.core.typing.typeof``); the array
    flags enter as their bit mask (a finer key than contiguity and writeability alone)."""
    kind = type(value)
    if kind is np.ndarray:
        return (value.dtype, value.ndim, value.flags.num)
    if kind is int:  # numba types a Python int by its size: intp, int64 or uint64
        bits = value.bit_length()
        return (int, bits < 32, bits < 64, value >= 0)
    if isinstance(value, tuple):
        return (kind, *map(_key, value))
    if isinstance(value, np.ndarray):  # a subclass
        return (kind, value.dtype, value.ndim, value.flags.num)
    return kind


def kernel_tuple(cls: T) -> T:
    """Class decorator: memoise numba's typing of instances of the ``NamedTuple`` ``cls``."""

    @typeof_impl.register(cls)
    def _typeof(value: Any, context: Any) -> types.Type | None:
        key = (context.purpose, _key(value))
        numba_type = _TYPES.get(key)
        if numba_type is None:
            fields = [typeof_impl(v, context) for v in value]
            if any(t is None for t in fields):
                return None
            numba_type = types.BaseTuple.from_types(fields, type(value))
            _TYPES[key] = numba_type
        return numba_type

    return cls
