"""The randomised multilevel (accelerated) hypergradient estimator (``docs/theory.md`` §9).

When the leader controls how long its followers train, the bias of an inexact follower can be
traded for variance (Blanchet and Glynn's randomised multilevel Monte Carlo construction, the
idea behind the paper's accelerated HPGD). Let ``g_k`` be the hypergradient estimate computed
from a follower trained ``n_k = n_0 2^k`` steps in one warm-started run (level ``k`` continues
level ``k - 1``). Draw a level ``J`` in ``1..J_max`` with probability ``p_J`` and return

    g = g_0 + (g_J - g_{J-1}) / p_J                                                    (§9.1)

Statements (for a fixed leader and follower start):

* **Expectation.** ``E[g] = E[g_0] + sum_j p_j E[g_j - g_{j-1}] / p_j = E[g_{J_max}]``: the
  telescoping sum leaves the estimate of the longest training, whose bias is that of a
  follower trained ``n_0 2^{J_max}`` steps.                                           (§9.2)
* **Cost.** The run trains ``n_J`` follower steps and computes ``J + 1`` estimates; the expected
  number of follower steps is ``sum_j p_j n_j``; with ``p_j ∝ 2^{-j}`` (the default) it is
  ``n_0 J_max / (1 - 2^{-J_max})``, logarithmic in the top level's ``n_0 2^{J_max}``.      (§9.3)
* **Variance.** ``Var[g] <= 2 Var[g_0] + 2 sum_j E||g_j - g_{j-1}||^2 / p_j``; computing
  ``g_{J-1}`` and ``g_J`` from the same run with common random numbers keeps the differences,
  and with them the variance, small. Levels whose differences shrink slower than ``p_j`` make
  the variance grow with ``J_max``.                                                    (§9.4)

The follower is only seen through a callable ``advance(steps) -> estimate`` that continues its
training by ``steps`` more updates (warm start) and returns the hypergradient estimate at the
reached state. Everything here is torch only; the tabular reference and the language-model
trainer plug their followers in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "MultilevelEstimate",
    "MultilevelSchedule",
    "expected_multilevel",
    "multilevel_combination",
    "multilevel_estimate",
]

_SUM_TOL = 1e-9


@dataclass(frozen=True)
class MultilevelSchedule:
    """The level distribution of §9.1: level ``j`` trains ``base_steps * 2**j`` follower steps.

    Attributes:
        base_steps: ``n_0 >= 1``, the follower steps of level 0 (and of plain HPGD's ``g_0``).
        max_level: ``J_max >= 1``.
        probabilities: ``p_1 .. p_{J_max}`` (non-negative, summing to 1); ``None`` gives the
            default ``p_j ∝ 2^{-j}``.
    """

    base_steps: int
    max_level: int
    probabilities: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.base_steps, bool) or not isinstance(self.base_steps, int):
            raise ValueError(f"base_steps must be an integer >= 1, got {self.base_steps!r}")
        if self.base_steps < 1:
            raise ValueError(f"base_steps must be >= 1 follower step, got {self.base_steps}")
        if isinstance(self.max_level, bool) or not isinstance(self.max_level, int):
            raise ValueError(f"max_level must be an integer >= 1, got {self.max_level!r}")
        if self.max_level < 1:
            raise ValueError(
                f"max_level must be >= 1 (level 0 alone is plain HPGD with base_steps), "
                f"got {self.max_level}"
            )
        if self.probabilities is not None:
            p = tuple(float(v) for v in self.probabilities)
            object.__setattr__(self, "probabilities", p)
            if len(p) != self.max_level:
                raise ValueError(
                    f"give one probability per level 1..{self.max_level}, got {len(p)} values"
                )
            if any(not math.isfinite(v) or v < 0 for v in p):
                raise ValueError(f"level probabilities must be finite and >= 0, got {list(p)}")
            if abs(sum(p) - 1.0) > _SUM_TOL:
                raise ValueError(
                    f"level probabilities must sum to 1, got sum {sum(p)!r} for {list(p)}"
                )

    @property
    def level_probabilities(self) -> tuple[float, ...]:
        """``(p_1, ..., p_{J_max})``; the default ``p_j = 2^{-j} / sum_i 2^{-i}``."""
        if self.probabilities is not None:
            return self.probabilities
        w = [2.0**-j for j in range(1, self.max_level + 1)]
        total = sum(w)
        return tuple(v / total for v in w)

    def steps(self, level: int) -> int:
        """``n_level = n_0 2^level``: total follower steps reached at ``level``."""
        if not 0 <= level <= self.max_level:
            raise ValueError(f"level must be in 0..{self.max_level}, got {level}")
        return self.base_steps * 2**level

    def expected_steps(self) -> float:
        """``sum_j p_j n_j`` (§9.3): follower steps per estimate, in expectation."""
        return sum(p * self.steps(j) for j, p in enumerate(self.level_probabilities, start=1))

    def draw_level(self, generator: torch.Generator | None = None) -> int:
        """One draw of ``J`` from ``p`` (a single uniform from ``generator``)."""
        u = float(torch.rand((), dtype=torch.float64, generator=generator))
        acc = 0.0
        probs = self.level_probabilities
        for j, p in enumerate(probs, start=1):
            acc += p
            if u < acc:
                return j
        return max(j for j, p in enumerate(probs, start=1) if p > 0)


@dataclass(frozen=True)
class MultilevelEstimate:
    """One draw of §9.1.

    Attributes:
        gradient: ``g_0 + (g_J - g_{J-1}) / p_J``.
        level: the drawn ``J``.
        probability: ``p_J``.
        follower_steps: follower updates this estimate trained (``n_J``).
        estimates: how many level estimates were computed (``J + 1``).
        top: ``g_J``, the estimate at the reached (longest) training.
    """

    gradient: Tensor
    level: int
    probability: float
    follower_steps: int
    estimates: int
    top: Tensor


def multilevel_combination(g0: Tensor, g_prev: Tensor, g_top: Tensor, probability: float) -> Tensor:
    """``g_0 + (g_J - g_{J-1}) / p_J`` (§9.1) for estimates of one shape."""
    if not (g0.shape == g_prev.shape == g_top.shape):
        raise ValueError(
            f"level estimates must share one shape, got {tuple(g0.shape)}, "
            f"{tuple(g_prev.shape)}, {tuple(g_top.shape)}"
        )
    if not probability > 0:
        raise ValueError(f"p_J must be > 0, got {probability}")
    return g0 + (g_top - g_prev) / probability


def multilevel_estimate(
    advance: Callable[[int], Tensor],
    schedule: MultilevelSchedule,
    *,
    generator: torch.Generator | None = None,
    level: int | None = None,
) -> MultilevelEstimate:
    """Draw ``J``, run the coupled levels, return §9.1 with its cost.

    Args:
        advance: ``advance(steps)`` continues the follower's training by ``steps`` updates from
            where the previous call left it and returns the hypergradient estimate there. Its
            first call here trains ``n_0`` steps (warm-started from the follower's state before
            this estimate); later calls bring it to ``n_1, ..., n_J``.
        schedule: the levels and their probabilities.
        generator: the source of the level draw (seeded by the caller for reproducibility).
        level: force ``J`` (enumeration in tests, diagnostics); the draw is then skipped and the
            returned gradient is the §9.1 value for that ``J`` with the schedule's ``p_J``.
    """
    probs = schedule.level_probabilities
    if level is None:
        level = schedule.draw_level(generator)
    elif not 1 <= level <= schedule.max_level:
        raise ValueError(f"level must be in 1..{schedule.max_level}, got {level}")
    p = probs[level - 1]
    if p <= 0:
        raise ValueError(f"level {level} has probability 0 and cannot be used")
    done = schedule.base_steps
    g0 = _checked(advance(done), 0)
    g_prev, g_top = g0, g0
    for k in range(1, level + 1):
        target = schedule.steps(k)
        g_prev, g_top = g_top, _checked(advance(target - done), k)
        done = target
    return MultilevelEstimate(
        gradient=multilevel_combination(g0, g_prev, g_top, p),
        level=level,
        probability=p,
        follower_steps=done,
        estimates=level + 1,
        top=g_top,
    )


def expected_multilevel(values: Sequence[Tensor], schedule: MultilevelSchedule) -> Tensor:
    """``sum_J p_J (g_0 + (g_J - g_{J-1}) / p_J)`` for known level means ``values[k] = E[g_k]``
    (§9.2); equals ``values[J_max]`` up to rounding."""
    if len(values) != schedule.max_level + 1:
        raise ValueError(f"give {schedule.max_level + 1} level values, got {len(values)}")
    out = torch.zeros_like(values[0])
    for j, p in enumerate(schedule.level_probabilities, start=1):
        if p > 0:
            out = out + p * multilevel_combination(values[0], values[j - 1], values[j], p)
    return out


def _checked(g: Tensor, level: int) -> Tensor:
    if not isinstance(g, Tensor):
        raise TypeError(
            f"advance() must return a tensor estimate, got {type(g).__name__} at level {level}"
        )
    if not bool(torch.isfinite(g).all()):
        raise ValueError(
            f"the follower's hypergradient estimate at level {level} is not finite; "
            "check the follower's rewards and its training for NaN / inf"
        )
    return g
