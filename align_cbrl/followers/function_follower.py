"""A follower whose training and sampling are user functions (the leader stays agnostic).

Use it for followers that are not TRL trainers: a custom RL loop, an API-served model, or an
exact best response on an enumerable task (:meth:`FunctionFollower.exact_best_response`, which
samples from ``pi* ∝ pi_ref exp(r / beta)`` computed by enumeration, handy to test a leader
without follower error).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from align_cbrl.followers.base import Follower, RewardFn, call_reward_function

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
        from align_cbrl.utils.io import atomic_write_json, replace_directory

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent)
        )
        try:
            state = dict(self._state_fn()) if self._state_fn is not None else None
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
            replace_directory(tmp, directory)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)

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

    # ------------------------------------------------------------------ exact best response
    @classmethod
    def exact_best_response(
        cls,
        prompts: Sequence[str],
        completions: Sequence[str],
        log_pi_ref: torch.Tensor,
        beta: float,
        *,
        contexts: Mapping[str, Sequence[Any]] | None = None,
        seed: int = 0,
        name: str = "exact",
    ) -> FunctionFollower:
        """A follower that samples exactly from ``pi*(y|p) ∝ pi_ref(y|p) exp(r(p, y) / beta)``.

        ``log_pi_ref[i, j] = log pi_ref(completions[j] | prompts[i])`` (e.g. from
        :func:`align_cbrl.models.completion_logprobs`); ``contexts`` maps a column name to one
        value per prompt and reaches the reward function as kwargs, like a dataset column. The
        reward is re-evaluated on every completion at each ``sample`` call, so the follower
        always best-responds to the current reward. Sampling uses a private generator whose
        state is saved by :meth:`save`.
        """
        prompts = list(prompts)
        completions = list(completions)
        log_pi_ref = torch.as_tensor(log_pi_ref, dtype=torch.float64)
        if log_pi_ref.shape != (len(prompts), len(completions)):
            raise ValueError(
                f"log_pi_ref has shape {tuple(log_pi_ref.shape)}, expected "
                f"[{len(prompts)} prompts, {len(completions)} completions]"
            )
        contexts = {k: list(v) for k, v in (contexts or {}).items()}
        for k, v in contexts.items():
            if len(v) != len(prompts):
                raise ValueError(
                    f"context column {k!r} has {len(v)} values for {len(prompts)} prompts"
                )
        index = {p: i for i, p in enumerate(prompts)}
        gen = torch.Generator().manual_seed(int(seed))
        holder: dict[str, FunctionFollower] = {}

        def log_pi_star(reward_fn: RewardFn | None) -> torch.Tensor:
            if reward_fn is None:
                raise RuntimeError(f"follower {name!r} has no reward function; set one first")
            rows = []
            for i, p in enumerate(prompts):
                kw = {k: [v[i]] * len(completions) for k, v in contexts.items()}
                r = call_reward_function(reward_fn, [p] * len(completions), completions, **kw)
                rows.append(torch.tensor(r, dtype=torch.float64))
            return torch.log_softmax(log_pi_ref + torch.stack(rows) / holder["f"].beta, dim=-1)

        def sample_fn(ps: list[str], n: int, reward_fn: RewardFn | None = None, **gen_kw: Any):
            if gen_kw:
                raise ValueError(f"exact best response takes no generation settings, got {gen_kw}")
            missing = [p for p in ps if p not in index]
            if missing:
                raise ValueError(f"prompts {missing[:5]} are not among the enumerated prompts")
            lp = log_pi_star(reward_fn)
            out = []
            for p in ps:
                idx = torch.multinomial(lp[index[p]].exp(), n, replacement=True, generator=gen)
                out.append([completions[j] for j in idx.tolist()])
            return out

        def state_fn() -> dict[str, Any]:
            return {"generator": gen.get_state().tolist()}

        def load_state_fn(state: Mapping[str, Any]) -> None:
            gen.set_state(torch.tensor(state["generator"], dtype=torch.uint8))

        follower = cls(name, beta, sample_fn, None, state_fn=state_fn, load_state_fn=load_state_fn)
        holder["f"] = follower
        follower.log_pi_star = lambda: log_pi_star(follower.reward_fn)  # type: ignore[attr-defined]
        return follower
