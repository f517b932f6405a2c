"""The shaped reward as a TRL reward function (plugin mode, and the followers' reward in
orchestrated mode).

``HPGDReward(prompts, completions, **columns) -> list[float]`` returns

    r_x(p, y) = sum_k a_{c,k} s_k(p, y) + i_x(p, y)           (follower reward, objective.py)

for each completion: the follower's base mix of the named reward components plus the leader's
current incentive, evaluated without gradients. TRL logs a reward function under its
``__name__``; this object also reports the mean of every component, of the incentive and of the
leader's reward ``rbar_x`` through TRL's ``log_metric`` hook (``<name>/<component>``).

The function keeps no data. Whoever needs the scored groups subscribes a sink
(:meth:`HPGDReward.subscribe`); the plugin's :class:`~align_cbrl.trainer.callback.HPGDCallback`
does so with its own :class:`~align_cbrl.trainer.groups.GroupBuffer` and estimates the
hypergradient from the same groups: no extra generation. TRL calls reward functions once per
generation batch, with ``num_generations`` consecutive completions per prompt
(``RepeatSampler(mini_repeat_count=num_generations)``), which is the group layout the
estimator needs.

A reward component that raises or returns unusable scores stops training with a one-line error
naming the component and, under TRL, the training step (``at training step N``: the optimiser
step whose batch was being scored; docs/reliability.md).

The function refuses to run in a process other than the one that built it (TRL's
``AsyncGRPOTrainer`` scores in a rollout worker process): the leader lives, and is updated, in
the training process, so a copy elsewhere would shape rewards with a leader that never moves.
The scoring itself is :class:`ShapedReward`, shared with
:class:`~align_cbrl.trainer.frozen_reward.FrozenShapedReward` (a saved leader's shaping, frozen,
which has neither sinks nor the process check).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from align_cbrl.followers.base import RewardFunctionError
from align_cbrl.objective import BilevelRewards
from align_cbrl.rewards.base import (
    ComponentOutputError,
    RewardComponent,
    RewardComponentError,
    add_context,
    score_components,
)
from align_cbrl.rewards.spec import reward_spec
from align_cbrl.trainer.groups import ScoredBatch

__all__ = ["HPGDReward", "ScoredCall", "ShapedReward"]

# TRL passes these to reward functions besides the dataset columns
_TRL_EXTRAS = frozenset(
    {"trainer_state", "log_extra", "log_metric", "completion_ids", "environments", "prompt"}
)


class ScoredCall(NamedTuple):
    """One reward call: the texts, the batch's context values, the component scores
    ``[B, K]`` and the shaped rewards returned to TRL."""

    prompts: list[str]
    completions: list[str]
    contexts: list[Any] | None
    scores: torch.Tensor
    rewards: list[float]


def _as_text(x: Any) -> str:
    """Plain text of a prompt/completion (conversational ones: the last message's content)."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict) and "content" in x[-1]:
        return str(x[-1]["content"])
    raise TypeError(f"expected a string or a list of chat messages, got {type(x).__name__}")


class ShapedReward:
    """A TRL reward function ``r_x`` = base component mix + the leader's incentive, evaluated
    without gradients (the shared part of :class:`HPGDReward` and
    :class:`~align_cbrl.trainer.frozen_reward.FrozenShapedReward`).

    Args:
        bilevel: the reward pair around the leader (``BilevelRewards``); its leader's
            parameters are read at every call.
        components: the reward components, in the order of ``bilevel.component_names``.
        context_column: the dataset column holding each prompt's context (``category``);
            ``None`` if the leader and mixes use no context.
        name: ``__name__`` (the key TRL logs the reward under).
        log_components: report component means through TRL's ``log_metric``.
    """

    def __init__(
        self,
        bilevel: BilevelRewards,
        components: Sequence[RewardComponent],
        *,
        context_column: str | None = "category",
        name: str = "hpgd_reward",
        log_components: bool = True,
    ) -> None:
        names = [c.name for c in components]
        if names != list(bilevel.component_names):
            raise ValueError(
                f"components {names} must match the leader's component_names "
                f"{list(bilevel.component_names)} (same names, same order)"
            )
        self.bilevel = bilevel
        self.components = list(components)
        self.context_column = context_column
        self.__name__ = name
        self.log_components = log_components

    @property
    def leader(self) -> Any:
        return self.bilevel.leader

    def reward_spec(self, *, strict: bool = True) -> dict[str, Any]:
        """The components' specs, both mixes and the context column as JSON
        (:func:`~align_cbrl.rewards.spec.reward_spec`; what a saved leader stores)."""
        return reward_spec(
            self.components,
            self.bilevel.follower.config,
            self.bilevel.upper.mix.config,
            self.context_column,
            strict=strict,
        )

    def save_pretrained(
        self, directory: str | os.PathLike[str], *, training: Mapping[str, Any] | None = None
    ) -> Any:
        """The leader with this reward's spec, as a folder (:meth:`Leader.save_pretrained`)."""
        return self.leader.save_pretrained(directory, rewards=self, training=training)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        return self.score(prompts, completions, kwargs).rewards

    def score(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> ScoredCall:
        """Score one TRL call: texts, the batch's contexts, component scores, both rewards;
        logs the batch means through ``kwargs["log_metric"]``."""
        prompts_t = [_as_text(p) for p in prompts]
        completions_t = [_as_text(c) for c in completions]
        B = len(completions_t)
        if len(prompts_t) != B:
            raise RewardFunctionError(
                f"{self.__name__}: got {len(prompts_t)} prompts for {B} completions"
            )
        columns = {
            k: list(v)
            for k, v in kwargs.items()
            if k not in _TRL_EXTRAS and isinstance(v, list | tuple) and len(v) == B
        }
        contexts = None
        if self.context_column is not None:
            if self.context_column not in columns:
                raise RewardFunctionError(self._missing_column(columns))
            contexts = columns[self.context_column]
        try:
            scores = score_components(self.components, prompts_t, completions_t, columns)
        except (RewardComponentError, ComponentOutputError) as err:
            state = kwargs.get("trainer_state")
            if state is not None:  # TRL scores the batch of the step it is about to take
                add_context(err, f"at training step {int(state.global_step) + 1}")
            raise
        with torch.no_grad():
            out = self.bilevel(scores, contexts)
        r = out.r.tolist()
        bad = [i for i, v in enumerate(r) if not math.isfinite(v)]
        if bad:
            raise RewardFunctionError(
                f"{self.__name__}: shaped reward is {r[bad[0]]} at index {bad[0]} (completion "
                f"{completions_t[bad[0]]!r}); the leader's parameters are not finite"
            )
        log_metric = kwargs.get("log_metric")
        if self.log_components and callable(log_metric):
            for k, v in self.batch_metrics(scores, out).items():
                log_metric(f"{self.__name__}/{k}", v)
        return ScoredCall(prompts_t, completions_t, contexts, scores, r)

    def _missing_column(self, columns: Mapping[str, Any]) -> str:
        if not columns:
            return (
                f"{self.__name__}: the dataset has no {self.context_column!r} column (it has no "
                f"columns besides the prompt); add one or build {type(self).__name__}(..., "
                "context_column=None)"
            )
        return (
            f"{self.__name__}: the dataset has no {self.context_column!r} column; its columns "
            f"are {sorted(columns)}; name the one that holds each prompt's context with "
            f"{type(self).__name__}(..., context_column=...) (e.g. "
            f"context_column={sorted(columns)[0]!r}) or pass context_column=None"
        )

    def batch_metrics(self, scores: torch.Tensor, out: Any) -> dict[str, float]:
        """Means of every component, the incentive, ``rbar`` and the base reward of a batch."""
        metrics = {c.name: float(scores[:, k].mean()) for k, c in enumerate(self.components)}
        metrics.update(
            incentive=float(out.incentive.mean()),
            leader_reward=float(out.rbar.mean()),
            base_reward=float((out.r - out.incentive).mean()),
        )
        return metrics


class HPGDReward(ShapedReward):
    """The live shaped reward of a leader that is being trained (:class:`ShapedReward`, module
    docstring): every scored batch goes to the subscribed sinks (the plugin's callback), and a
    call in another process than the one that built it is refused.

    Args: those of :class:`ShapedReward`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sinks: list[Callable[[ScoredBatch], None]] = []
        self._pid = os.getpid()

    def subscribe(self, sink: Callable[[ScoredBatch], None]) -> None:
        """Call ``sink(ScoredBatch)`` after every scored batch (e.g. a ``GroupBuffer``)."""
        if not callable(sink):
            raise TypeError("sink must be callable with one ScoredBatch")
        if sink not in self._sinks:
            self._sinks.append(sink)

    def unsubscribe(self, sink: Callable[[ScoredBatch], None]) -> None:
        self._sinks = [s for s in self._sinks if s is not sink]

    def __getstate__(self) -> dict[str, Any]:
        # a copy in another process (an out-of-process rollout worker) cannot reach the sinks
        state = dict(self.__dict__)
        state["_sinks"] = []
        return state

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        if os.getpid() != self._pid:
            raise RewardFunctionError(
                f"{self.__name__} was called in process {os.getpid()}, not in the training "
                f"process {self._pid} that holds the leader (an out-of-process rollout worker, "
                "e.g. TRL's AsyncGRPOTrainer): leader updates would never reach it; use "
                "GRPOTrainer or RLOOTrainer, which score in the training process, or a "
                "FrozenShapedReward of a trained leader"
            )
        call = self.score(prompts, completions, kwargs)
        if self._sinks:
            state = kwargs.get("trainer_state")
            column = self.context_column
            batch = ScoredBatch(
                prompts=call.prompts,
                completions=call.completions,
                columns={} if call.contexts is None else {column: list(call.contexts)},
                scores=call.scores,
                step=None if state is None else int(state.global_step),
                logger=kwargs.get("log_metric"),
            )
            for sink in self._sinks:
                sink(batch)
        return call.rewards
