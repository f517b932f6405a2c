"""The follower interface the leader talks to.

A follower is anything that (approximately) best-responds to the reward it is given, with a KL
temperature ``beta`` towards its reference policy: its target is
``pi*(y|p) ∝ pi_ref(y|p) exp(r(p, y) / beta)`` (``docs/theory.md §3``). The leader only uses
this interface, so it stays agnostic of how the follower is trained (TRL GRPO / RLOO, a user
function, an exact sampler on an enumerable task).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "Follower",
    "RewardFn",
    "RewardFunctionError",
    "call_reward_function",
    "reward_function_name",
    "validate_beta",
]

RewardFn = Callable[..., Sequence[float]]
"""TRL's reward-function signature: ``fn(prompts, completions, **kwargs) -> list[float]``.

``kwargs`` carry the dataset's extra columns (e.g. ``category``), one entry per completion,
plus TRL extras such as ``completion_ids`` and ``trainer_state``."""


class RewardFunctionError(ValueError):
    """A reward function returned an unusable output (wrong length, NaN/inf, None, non-number)."""


def validate_beta(beta: Any, who: str = "follower") -> float:
    """Return ``beta`` as a float, or raise if it is not a finite number > 0.

    ``beta`` is the follower's KL temperature, the leader's ``lambda``: with ``beta <= 0`` the
    follower has no regularised best response and the hypergradient is undefined."""
    try:
        value = float(beta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{who}: beta must be a number; set beta > 0, got {beta!r}") from err
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(
            f"{who}: beta={beta!r} is not allowed; set beta > 0 (e.g. beta=0.05). beta is the KL "
            "temperature of the follower (the leader's lambda): with beta <= 0 there is no "
            "KL-regularised best response pi* ∝ pi_ref exp(r / beta) for the leader to reason about."
        )
    return value


def reward_function_name(fn: Any) -> str:
    """The name TRL logs a reward function under (``__name__``, else the class name)."""
    name = getattr(fn, "__name__", None)
    if isinstance(name, str) and name:
        return name
    return type(fn).__name__


def call_reward_function(
    fn: RewardFn, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
) -> list[float]:
    """Call ``fn`` with TRL's signature and validate the output: one finite float per completion.

    Raises :class:`RewardFunctionError` naming the function and the first offending index."""
    name = reward_function_name(fn)
    out = fn(prompts=prompts, completions=completions, **kwargs)
    if out is None:
        raise RewardFunctionError(
            f"reward function {name!r} returned None; return one float per completion"
        )
    if hasattr(out, "detach"):
        out = out.detach().cpu().reshape(-1).tolist()
    try:
        values = list(out)
    except TypeError as err:
        raise RewardFunctionError(
            f"reward function {name!r} returned {type(out).__name__}; return a list of "
            f"{len(completions)} floats"
        ) from err
    if len(values) != len(completions):
        raise RewardFunctionError(
            f"reward function {name!r} returned {len(values)} rewards for {len(completions)} "
            "completions; return exactly one reward per completion"
        )
    result: list[float] = []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError) as err:
            raise RewardFunctionError(
                f"reward function {name!r} returned {v!r} at index {i} "
                f"(completion {completions[i]!r}); rewards must be finite floats"
            ) from err
        if not math.isfinite(f):
            raise RewardFunctionError(
                f"reward function {name!r} returned {f} at index {i} "
                f"(completion {completions[i]!r}); rewards must be finite floats"
            )
        result.append(f)
    return result


class Follower(ABC):
    """A KL-regularised learner with temperature ``beta`` (the leader's ``lambda``).

    Subclasses implement :meth:`train`, :meth:`sample`, :meth:`set_reward_function`,
    :meth:`save` and :meth:`load`. Contract:

    * ``train(steps)`` continues training warm-started (weights *and* optimiser/scheduler/RNG
      state persist across calls), so ``train(k); train(k)`` equals ``train(2 * k)``.
    * ``sample(prompts, n)`` returns ``n`` completions (strings) per prompt from the current
      policy, with the training generation settings unless overridden, without disturbing
      the training RNG stream.
    * ``save(dir)`` writes everything needed to continue identically, atomically; ``load(dir)``
      restores it into a follower built with the same arguments.
    """

    def __init__(self, name: str, beta: float) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"follower name must be a non-empty string, got {name!r}")
        self._name = name
        self._beta = validate_beta(beta, f"follower {name!r}")

    @property
    def name(self) -> str:
        """Identifier used in logs and checkpoints."""
        return self._name

    @property
    def beta(self) -> float:
        """KL temperature (> 0): the follower targets ``pi_ref * exp(r / beta)``."""
        return self._beta

    @property
    def continues_training(self) -> bool:
        """Whether :meth:`train` continues from the current state (warm start), so that more
        steps bring the follower closer to its best response: what the multilevel follower
        schedule needs (``docs/theory.md`` §9). The contract above says yes; a follower that
        restarts at every call, or never trains (an exact best response), says ``False``."""
        return True

    def sampling_state(self) -> Any:
        """An opaque copy of the state that decides :meth:`sample`'s randomness, or ``None``
        when it cannot be captured. Restoring it with :meth:`set_sampling_state` replays the
        same random numbers: common random numbers for coupled estimates (§9.4)."""
        return None

    def set_sampling_state(self, state: Any) -> None:
        """Restore what :meth:`sampling_state` returned (``None``: nothing to restore)."""
        if state is not None:
            raise ValueError(f"follower {self.name!r} cannot restore a sampling state")

    @abstractmethod
    def train(self, steps: int) -> dict[str, Any]:
        """Continue training for ``steps`` optimiser steps; return metrics of this chunk."""

    @abstractmethod
    def sample(self, prompts: list[str], n: int, **gen: Any) -> list[list[str]]:
        """``n`` completions for each prompt: ``result[i][k]`` is completion ``k`` of prompt ``i``."""

    @abstractmethod
    def set_reward_function(self, fn: RewardFn) -> None:
        """Replace the reward the follower optimises (TRL reward-function signature)."""

    @abstractmethod
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the full follower state to ``directory`` atomically."""

    @abstractmethod
    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restore the state written by :meth:`save`."""

    @staticmethod
    def _check_steps(steps: Any) -> int:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        return steps

    @staticmethod
    def _check_sample_args(prompts: Any, n: Any) -> list[str]:
        if isinstance(prompts, str):
            raise TypeError(
                "prompts must be a list of strings, not a single string; wrap it in [...]"
            )
        prompts = list(prompts)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        return prompts
