"""What ``validate`` needs of a harness (:mod:`four_rooms`, :mod:`tax_design`): a setting
dataclass chosen by preset name with command-line overrides, the contexts, the exact gradient
at the fixed point, independent estimates there and short outer-loop runs."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, ClassVar

import numpy as np

from tabular_reference.common.estimator_api import Estimator

__all__ = ["Harness"]


class Harness:
    """Base of the harnesses: ``env``, ``PRESETS`` (name -> setting dataclass) and the
    interface the runner calls (implemented by each subclass)."""

    env: ClassVar[str]
    PRESETS: ClassVar[dict[str, Any]]
    PAPER_KEYS: ClassVar[dict[str, str]] = {}
    """Setting field -> its name in the paper's notation, used in results files (``lam``)."""

    def __init__(self, setting: Any, preset: str = "default") -> None:
        self.s, self.preset = setting, preset

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> Harness:
        """The preset's setting with the overrides that are not None."""
        if preset not in cls.PRESETS:
            raise ValueError(
                f"unknown {cls.env} preset {preset!r}; choose one of {list(cls.PRESETS)}"
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(replace(cls.PRESETS[preset], **given), preset)

    def describe(self) -> dict:
        """The harness as ``validate.json`` records it (the setting in the paper's notation)."""
        setting = {self.PAPER_KEYS.get(k, k): v for k, v in asdict(self.s).items()}
        return {"env": self.env, "preset": self.preset, **setting}

    @property
    def contexts(self) -> list[str]:
        raise NotImplementedError

    def exact(self) -> list[tuple[float, np.ndarray]]:
        """``(F, dF/dx)`` per context at the fixed point."""
        raise NotImplementedError

    def estimates(
        self, est: Estimator, k: int, steps: int, m: int, seed: int, warmup: int
    ) -> np.ndarray:
        """``m`` independent estimates ``[m, P]`` in context ``k`` from ``steps`` steps each."""
        raise NotImplementedError

    def outer(self, name: str, seeds: list[int], iters: int, progress: bool) -> dict:
        """Outer-loop runs: ``F_last`` per seed, the curves ``t`` and ``F[seeds, len(t)]``."""
        raise NotImplementedError
