"""The randomised multilevel estimator (docs/theory.md §9) against exact enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from align_cbrl.estimators import (
    MultilevelSchedule,
    expected_multilevel,
    multilevel_combination,
    multilevel_estimate,
)


class CoinFollower:
    """A follower whose every update and every estimate consume one fair +-1 coin from ``coins``.

    State ``s`` moves towards 1 (``s <- s + 0.5 (1 - s) + 0.1 c``); the estimate at ``s`` is the
    nonlinear ``[sin(3 s), s^2] + 0.05 c'``, so each level has its own mean (a bias in ``n``)."""

    def __init__(self, coins: list[int], s0: float = -0.4):
        self.coins = iter(coins)
        self.s = s0

    def advance(self, steps: int) -> torch.Tensor:
        for _ in range(steps):
            self.s = self.s + 0.5 * (1.0 - self.s) + 0.1 * next(self.coins)
        c = next(self.coins)
        s = self.s
        return torch.tensor([math.sin(3 * s) + 0.05 * c, s * s - 0.05 * c], dtype=torch.float64)


def _enumerate(n_coins: int, value) -> torch.Tensor:
    total = torch.zeros(2, dtype=torch.float64)
    for coins in itertools.product((-1, 1), repeat=n_coins):
        total += value(list(coins))
    return total / 2**n_coins


def _level_mean(schedule: MultilevelSchedule, k: int) -> torch.Tensor:
    """E[g_k] by enumeration: a follower trained n_k steps, one estimate."""
    n = schedule.steps(k)
    return _enumerate(n + 1, lambda c: CoinFollower(c).advance(n))


@pytest.mark.parametrize(
    "schedule",
    [
        MultilevelSchedule(base_steps=1, max_level=3),
        MultilevelSchedule(base_steps=1, max_level=3, probabilities=(0.2, 0.3, 0.5)),
        MultilevelSchedule(base_steps=2, max_level=2, probabilities=(0.7, 0.3)),
    ],
)
def test_expectation_equals_top_level_by_enumeration(schedule: MultilevelSchedule) -> None:
    """E[g] over J ~ p and every coin equals E[g_{J_max}] (§9.2) to rounding."""
    expectation = torch.zeros(2, dtype=torch.float64)
    for J, p in enumerate(schedule.level_probabilities, start=1):
        n_coins = schedule.steps(J) + J + 1  # n_J updates and J + 1 estimates

        def value(coins: list[int], J: int = J) -> torch.Tensor:
            follower = CoinFollower(coins)
            out = multilevel_estimate(follower.advance, schedule, level=J)
            assert out.follower_steps == schedule.steps(J) and out.estimates == J + 1
            return out.gradient

        expectation += p * _enumerate(n_coins, value)
    top = _level_mean(schedule, schedule.max_level)
    base = _level_mean(schedule, 0)
    assert torch.allclose(expectation, top, rtol=0, atol=1e-12), (expectation, top)
    # the levels really differ, so the test would catch a wrong telescoping
    assert float((top - base).abs().max()) > 0.05
    means = [_level_mean(schedule, k) for k in range(schedule.max_level + 1)]
    assert torch.allclose(expected_multilevel(means, schedule), top, rtol=0, atol=1e-12)


def test_one_draw_runs_the_coupled_levels_on_one_follower() -> None:
    """advance is called with n_0, then the increments to n_1..n_J; g_{J-1}, g_J from that run."""
    calls: list[int] = []
    values = iter(
        [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0]), torch.tensor([7.0])]
    )

    def advance(steps: int) -> torch.Tensor:
        calls.append(steps)
        return next(values)

    schedule = MultilevelSchedule(base_steps=3, max_level=4, probabilities=(0.1, 0.2, 0.3, 0.4))
    out = multilevel_estimate(advance, schedule, level=3)
    assert calls == [3, 3, 6, 12]
    assert out.level == 3 and out.probability == 0.3 and out.follower_steps == 24
    assert float(out.gradient) == pytest.approx(1.0 + (7.0 - 4.0) / 0.3, abs=1e-15)
    assert float(out.top) == 7.0


def test_default_probabilities_and_expected_cost() -> None:
    """p_j ∝ 2^-j; expected steps n_0 J_max / (1 - 2^-J_max) (§9.3)."""
    s = MultilevelSchedule(base_steps=5, max_level=4)
    p = s.level_probabilities
    assert sum(p) == pytest.approx(1.0, abs=1e-15)
    assert all(p[j] == pytest.approx(2 * p[j + 1], rel=1e-15) for j in range(3))
    assert s.expected_steps() == pytest.approx(5 * 4 / (1 - 2**-4), rel=1e-14)


def test_level_draws_follow_the_probabilities() -> None:
    s = MultilevelSchedule(base_steps=1, max_level=3, probabilities=(0.5, 0.2, 0.3))
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = [0, 0, 0]
    for _ in range(n):
        counts[s.draw_level(g) - 1] += 1
    for c, p in zip(counts, (0.5, 0.2, 0.3), strict=True):
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    # reproducible from the generator's seed
    a = [s.draw_level(torch.Generator().manual_seed(7)) for _ in range(3)]
    assert len(set(a)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_steps": 1, "max_level": 0}, "max_level must be >= 1"),
        ({"base_steps": 0, "max_level": 2}, "base_steps must be >= 1"),
        ({"base_steps": 1, "max_level": 2, "probabilities": (0.5, 0.4)}, "must sum to 1"),
        ({"base_steps": 1, "max_level": 2, "probabilities": (1.5, -0.5)}, "finite and >= 0"),
        (
            {"base_steps": 1, "max_level": 3, "probabilities": (0.5, 0.5)},
            "one probability per level",
        ),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultilevelSchedule(**kwargs)


def test_non_finite_estimates_and_shapes_are_refused() -> None:
    s = MultilevelSchedule(base_steps=1, max_level=1)
    with pytest.raises(ValueError, match="not finite"):
        multilevel_estimate(lambda n: torch.tensor([float("nan")]), s, level=1)
    with pytest.raises(ValueError, match="share one shape"):
        multilevel_combination(torch.zeros(2), torch.zeros(2), torch.zeros(3), 0.5)
