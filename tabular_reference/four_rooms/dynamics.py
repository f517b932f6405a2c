"""Four-Rooms slip dynamics as a named, explicit part of the model.

A move direction ``d`` in {up, right, down, left} follows the chosen action ``a`` with
probability ``P(d | a) = p_other + (p_intended - p_other) [d == a]``; a move into a wall stays.
Two such models are kept apart:

* ``plan``   -- the transitions the follower's best response is solved in, and in which AMD,
  zero-order and the reported exact objective ``F`` are computed;
* ``sample`` -- the transitions HPGD's trajectories are drawn from.

Presets (``--dynamics NAME``):

``paper`` (default) -- 0.56 / 0.44/3 for planning, sampling and ``F`` alike: the coherent
    problem whose exact values the paper's Table 1 reports (the published code's transition
    matrix puts ``1 - 0.44`` on the intended move and ``0.44 / 3`` on each other move).
``published`` -- plans and evaluates in 0.56 / 0.44/3 but samples from the environment that
    replaces the action by a uniform one with probability ``4/3 * 0.33 = 0.44`` (0.67 / 0.11),
    exactly what the published HPGD runs did (a planning/sampling mismatch).
``notes`` -- 0.67 / 0.11 everywhere (the model of earlier results; keeps them reproducible).

Custom models: a mapping ``{"plan": [p_intended, p_other], "sample": [p_intended, p_other]}``
(``sample`` defaults to ``plan``); each pair must be non-negative with ``p_intended + 3 p_other = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Dynamics", "SlipModel", "resolve_dynamics"]

_SLIP = 4.0 / 3.0 * 0.33  # probability that the environment replaces the chosen action (0.44)


@dataclass(frozen=True)
class SlipModel:
    """``P(d | a) = p_other + (p_intended - p_other) [d == a]`` over the four directions."""

    p_intended: float
    p_other: float

    def __post_init__(self) -> None:
        for name in ("p_intended", "p_other"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"slip model: {name} must be a finite probability >= 0, got {v!r}")
        total = self.p_intended + 3.0 * self.p_other
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"slip model: p_intended + 3 * p_other must be 1 (the four directions' "
                f"probabilities), got {self.p_intended} + 3 * {self.p_other} = {total:.6g}"
            )

    @property
    def p_diff(self) -> float:
        """``p_intended - p_other``: the weight of the chosen action in ``P(d | a)``."""
        return self.p_intended - self.p_other

    def as_list(self) -> list[float]:
        return [self.p_intended, self.p_other]


@dataclass(frozen=True)
class Dynamics:
    """The planning and the sampling slip models of one named configuration."""

    name: str
    plan: SlipModel
    sample: SlipModel

    @property
    def mismatched(self) -> bool:
        """Whether trajectories are sampled from other transitions than the follower plans in."""
        return self.plan != self.sample

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "plan": self.plan.as_list(), "sample": self.sample.as_list()}


_PAPER = SlipModel(1.0 - _SLIP, _SLIP / 3.0)  # 0.56 / 0.1467
_NOTES = SlipModel(1.0 - _SLIP + _SLIP / 4.0, _SLIP / 4.0)  # 0.67 / 0.11
PRESETS: dict[str, Dynamics] = {
    "paper": Dynamics("paper", _PAPER, _PAPER),
    "published": Dynamics("published", _PAPER, _NOTES),
    "notes": Dynamics("notes", _NOTES, _NOTES),
}


def _slip(value: Any, where: str) -> SlipModel:
    if isinstance(value, SlipModel):
        return value
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, int | float) for v in value)
    ):
        raise ValueError(
            f"dynamics: {where} must be a pair [p_intended, p_other] of numbers, got {value!r}"
        )
    try:
        return SlipModel(float(value[0]), float(value[1]))
    except ValueError as exc:
        raise ValueError(f"dynamics: {where}: {exc}") from None


def resolve_dynamics(spec: str | Mapping[str, Any] | Dynamics) -> Dynamics:
    """A :class:`Dynamics` from a preset name, a ``{plan, sample}`` mapping or itself.

    Raises ``ValueError`` (one line, says what to fix) for unknown presets, malformed mappings,
    negative probabilities or pairs that do not sum to one."""
    if isinstance(spec, Dynamics):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(
                f"unknown dynamics preset {spec!r}; choose one of {', '.join(PRESETS)} "
                "or give {plan: [p_intended, p_other], sample: [...]}"
            )
        return PRESETS[spec]
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"name", "plan", "sample"})
        if unknown or "plan" not in spec:
            raise ValueError(
                "dynamics mapping needs 'plan' (and optionally 'sample', 'name'): "
                f"[p_intended, p_other] pairs; got keys {sorted(spec)}"
            )
        plan = _slip(spec["plan"], "plan")
        sample = _slip(spec.get("sample", spec["plan"]), "sample")
        for name, preset in PRESETS.items():
            if preset.plan == plan and preset.sample == sample:
                return (
                    preset
                    if spec.get("name", name) == name
                    else Dynamics(spec["name"], plan, sample)
                )
        return Dynamics(str(spec.get("name", "custom")), plan, sample)
    raise ValueError(f"dynamics must be a preset name or a mapping, got {type(spec).__name__}")
