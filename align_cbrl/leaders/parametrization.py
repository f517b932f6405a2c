"""Maps from unconstrained leader parameters ``theta`` to incentive weights ``w``.

* ``free``:            ``w = theta``.
* ``sigmoid``:         ``w = lo + (hi - lo) * sigmoid(theta)``, so ``w`` in ``(lo, hi)``
  (the tax experiment's ``sigmoid scaled to [0, 2]``, ``docs/theory.md`` §6).
* ``softmax_budget``:  ``w = budget * softmax(theta)[:K]`` over ``K + 1`` logits whose last slot
  is "unused", so ``sum_k |w_k| <= |budget|`` (the Four-Rooms penalty budget
  ``-0.2 * softmax(logits)`` with 104 cells + one unused slot, ``docs/theory.md`` §5).
  Without the unused slot the budget is always spent exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = ["WeightParametrization"]

_MODES = ("free", "sigmoid", "softmax_budget")


@dataclass(frozen=True)
class WeightParametrization:
    mode: str = "free"
    lo: float = 0.0
    hi: float = 1.0
    budget: float = 1.0
    unused_slot: bool = True

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"parametrization must be one of {_MODES}, got {self.mode!r}")
        if self.mode == "sigmoid" and not self.hi > self.lo:
            raise ValueError(
                f"sigmoid parametrization needs hi > lo, got lo={self.lo}, hi={self.hi}"
            )
        if self.mode == "softmax_budget" and not math.isfinite(self.budget):
            raise ValueError(f"softmax_budget needs a finite budget, got {self.budget}")

    def raw_size(self, k: int) -> int:
        """Number of raw parameters per row for ``k`` components."""
        return k + 1 if self.mode == "softmax_budget" and self.unused_slot else k

    def weights(self, theta: Tensor) -> Tensor:
        """``[..., raw_size(K)] -> [..., K]``."""
        if self.mode == "free":
            return theta
        if self.mode == "sigmoid":
            return self.lo + (self.hi - self.lo) * torch.sigmoid(theta)
        p = torch.softmax(theta, dim=-1)
        return self.budget * (p[..., :-1] if self.unused_slot else p)

    def inverse(self, w: Tensor) -> Tensor:
        """A ``theta`` with ``weights(theta) == w`` (free / sigmoid only; ``w`` strictly inside
        ``(lo, hi)`` for sigmoid)."""
        if self.mode == "free":
            return w.clone()
        if self.mode == "sigmoid":
            u = (w - self.lo) / (self.hi - self.lo)
            if bool(((u <= 0) | (u >= 1)).any()):
                raise ValueError(
                    f"initial sigmoid weights must lie strictly inside ({self.lo}, {self.hi})"
                )
            return torch.log(u) - torch.log1p(-u)
        raise ValueError(
            "softmax_budget weights are initialised from logits (init_std), not weights"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
