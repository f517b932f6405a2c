"""Context values -> row indices (``docs/theory.md §1``: the context ``xi``).

For language-model followers a context is one dataset column of the prompt, e.g.
``category``. Leaders and reward mixes keep one table row per known context value; this module
maps a batch of raw values (or already-encoded indices) to those rows, and says clearly what to
fix when a value is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["ContextIndex"]


class ContextIndex:
    """Maps the values of one context column to row indices ``0..C-1``.

    Args:
        values: the known context values, one table row each (order = row order).
        column: the dataset column the values come from (used in error messages).
        default: optional declared fallback: a value from ``values`` whose row is used for any
            unknown value. ``None`` (the default) makes unknown values an error.
    """

    def __init__(
        self, values: Sequence[Any], column: str = "category", default: Any | None = None
    ) -> None:
        values = list(values)
        if not values:
            raise ValueError(f"context column {column!r}: give at least one context value")
        keys = [self._key(v) for v in values]
        if len(set(keys)) != len(keys):
            dup = sorted({str(k) for k in keys if keys.count(k) > 1})
            raise ValueError(f"context column {column!r}: duplicate context values {dup}")
        self.values: list[Any] = values
        self.column = column
        self._rows = {k: i for i, k in enumerate(keys)}
        if default is not None and self._key(default) not in self._rows:
            raise ValueError(
                f"context column {column!r}: default {default!r} is not one of the context "
                f"values {values}; the default must name an existing row"
            )
        self.default = default

    @staticmethod
    def _key(value: Any) -> Any:
        if isinstance(value, Tensor):
            value = value.item()
        return value

    def __len__(self) -> int:
        return len(self.values)

    def index_of(self, value: Any, position: int | None = None) -> int:
        """Row of one context value (the default's row for unknown values, if declared)."""
        row = self._rows.get(self._key(value))
        if row is not None:
            return row
        if self.default is not None:
            return self._rows[self._key(self.default)]
        where = "" if position is None else f" at batch index {position}"
        raise KeyError(
            f"unknown {self.column!r} value {value!r}{where}; known values: {self.values}. "
            f"Add it to the context values or declare a default context"
        )

    def encode(self, contexts: Sequence[Any] | Tensor, batch_size: int | None = None) -> Tensor:
        """Rows for a batch: a list of raw values, or a LongTensor of row indices
        (checked to lie in ``0..C-1``). Returns a LongTensor ``[B]``."""
        if isinstance(contexts, Tensor) and not contexts.is_floating_point():
            rows = contexts.long().reshape(-1)
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
                bad = int(((rows < 0) | (rows >= len(self))).nonzero()[0, 0])
                raise IndexError(
                    f"{self.column!r} row index {int(rows[bad])} at batch index {bad} is out of "
                    f"range 0..{len(self) - 1} (known values: {self.values})"
                )
        elif isinstance(contexts, str) or not isinstance(contexts, Sequence | Tensor):
            raise TypeError(
                f"contexts for column {self.column!r} must be a list of values or a LongTensor "
                f"of row indices, got {type(contexts).__name__}"
            )
        else:
            rows = torch.tensor(
                [self.index_of(v, i) for i, v in enumerate(contexts)], dtype=torch.long
            )
        if batch_size is not None and rows.numel() != batch_size:
            raise ValueError(
                f"got {rows.numel()} {self.column!r} contexts for a batch of {batch_size}"
            )
        return rows

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description (values, column, default)."""
        return {"values": list(self.values), "column": self.column, "default": self.default}
