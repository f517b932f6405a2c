"""A follower whose training and sampling are user functions (the leader stays agnostic).

Use it for followers that are not TRL trainers: a custom RL loop or an API-served model (the
exact best response on an enumerable task is one: :class:`~align_cbrl.followers.exact.ExactFollower`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from align_cbrl.followers.base import Follower, RewardFn

__all__ = ["FunctionFollower"]

_FORMAT = 1
_JSON = "follower.json"

SampleFn = Callable[..., list[list[str]]]
TrainFn = Callable[..., Mapping[str, Any] | None]


class FunctionFollower(Follower):
    """A follower driven by callables.

    Args:
        name: follower name.
        beta: KL temperature (> 0) the functions implement.
        sample_fn: ``sample_fn(prompts, n, reward_fn=..., **gen) -> list[list[str]]``.
        train_fn: ``train_fn(steps, reward_fn=...) -> dict | None`` (default: no training,
            e.g. for an exact best response that always samples the current optimum).
        state_fn: ``state_fn() -> dict`` of JSON-serialisable state for :meth:`save`.
        load_state_fn: ``load_state_fn(state)`` restoring what ``state_fn`` returned.
        reward_fn: optional initial reward function (TRL signature).
        continues_training: whether ``train_fn`` continues from the current state (warm
            start; :attr:`Follower.continues_training`); default: ``train_fn is not None``.
    """

    def __init__(
        self,
        name: str,
        beta: float,
        sample_fn: SampleFn,
        train_fn: TrainFn | None = None,
        *,
        state_fn: Callable[[], Mapping[str, Any]] | None = None,
        load_state_fn: Callable[[Mapping[str, Any]], None] | None = None,
        reward_fn: RewardFn | None = None,
        continues_training: bool | None = None,
    ) -> None:
        super().__init__(name, beta)
        if not callable(sample_fn):
            raise TypeError("sample_fn must be callable: sample_fn(prompts, n, reward_fn=...)")
        if train_fn is not None and not callable(train_fn):
            raise TypeError("train_fn must be callable: train_fn(steps, reward_fn=...)")
        if (state_fn is None) != (load_state_fn is None):
            raise ValueError("give both state_fn and load_state_fn, or neither")
        self._sample_fn = sample_fn
        self._train_fn = train_fn
        self._state_fn = state_fn
        self._load_state_fn = load_state_fn
        self._reward_fn: RewardFn | None = reward_fn
        self.global_step = 0
        self._continues = train_fn is not None if continues_training is None else continues_training

    @property
    def continues_training(self) -> bool:
        return bool(self._continues)

    @property
    def reward_fn(self) -> RewardFn | None:
        """The current reward function."""
        return self._reward_fn

    def set_reward_function(self, fn: RewardFn) -> None:
        if not callable(fn):
            raise TypeError(f"reward function must be callable, got {type(fn).__name__}")
        self._reward_fn = fn

    def train(self, steps: int) -> dict[str, Any]:
        steps = self._check_steps(steps)
        metrics: dict[str, Any] = {}
        if self._train_fn is not None and steps > 0:
            out = self._train_fn(steps, reward_fn=self._reward_fn)
            metrics.update(dict(out or {}))
        self.global_step += steps
        metrics.update(global_step=self.global_step, steps=steps)
        return metrics

    def sample(self, prompts: list[str], n: int, **gen: Any) -> list[list[str]]:
        prompts = self._check_sample_args(prompts, n)
        out = self._sample_fn(prompts, n, reward_fn=self._reward_fn, **gen)
        if len(out) != len(prompts) or any(len(group) != n for group in out):
            raise ValueError(
                f"sample_fn of follower {self.name!r} must return {len(prompts)} lists of {n} "
                "completions (one list per prompt)"
            )
        return [list(group) for group in out]

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``follower.json`` (name, beta, step, user state) into ``directory`` atomically."""
        from align_cbrl.utils.io import atomic_directory, atomic_write_json

        state = dict(self._state_fn()) if self._state_fn is not None else None
        with atomic_directory(directory) as tmp:
            atomic_write_json(
                tmp / _JSON,
                {
                    "format": _FORMAT,
                    "kind": "function",
                    "name": self.name,
                    "beta": self.beta,
                    "global_step": self.global_step,
                    "state": state,
                },
            )

    def load(self, directory: str | os.PathLike[str]) -> None:
        from align_cbrl.utils.io import read_json

        path = Path(directory) / _JSON
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a follower checkpoint ({_JSON} missing)")
        meta = read_json(path)
        if meta.get("kind") != "function" or meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a FunctionFollower checkpoint")
        if float(meta["beta"]) != self.beta:
            raise ValueError(
                f"{path} was saved with beta={meta['beta']}, this follower has beta={self.beta}"
            )
        self.global_step = int(meta["global_step"])
        if meta.get("state") is not None:
            if self._load_state_fn is None:
                raise ValueError(f"{path} holds user state but this follower has no load_state_fn")
            self._load_state_fn(meta["state"])
