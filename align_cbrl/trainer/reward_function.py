"""The shaped reward as a TRL reward function (plugin mode, and the followers' reward in
orchestrated mode).

``HPGDReward(prompts, completions, **columns) -> list[float]`` returns

    r_x(p, y) = sum_k a_{c,k} s_k(p, y) + i_x(p, y)           (follower reward, objective.py)

for each completion: the follower's base mix of the named reward components plus the leader's
current incentive, evaluated without gradients. TRL logs a reward function under its
``__name__``; this object also reports the mean of every component, of the incentive and of the
leader's reward ``rbar_x`` through TRL's ``log_metric`` hook (``<name>/<component>``), and keeps
them in :attr:`HPGDReward.last_metrics`.

With ``buffer=True`` it also keeps what TRL generated (prompts, completions, dataset columns,
component scores) so that :class:`~align_cbrl.trainer.callback.HPGDCallback` can estimate the
hypergradient from the same groups: no extra generation. TRL calls reward functions once per
generation batch, with ``num_generations`` consecutive completions per prompt
(``RepeatSampler(mini_repeat_count=num_generations)``), which is the group layout the
estimator needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from align_cbrl.followers.base import RewardFunctionError
from align_cbrl.objective import BilevelRewards
from align_cbrl.rewards.base import RewardComponent, score_components
from align_cbrl.trainer.estimation import GroupedSamples

__all__ = ["HPGDReward"]

# TRL passes these to reward functions besides the dataset columns
_TRL_EXTRAS = frozenset(
    {"trainer_state", "log_extra", "log_metric", "completion_ids", "environments", "prompt"}
)


def _as_text(x: Any) -> str:
    """Plain text of a prompt/completion (conversational ones: the last message's content)."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict) and "content" in x[-1]:
        return str(x[-1]["content"])
    raise TypeError(f"expected a string or a list of chat messages, got {type(x).__name__}")


class HPGDReward:
    """TRL-compatible shaped reward ``r_x`` = base component mix + the leader's incentive.

    Args:
        bilevel: the reward pair around the leader (``BilevelRewards``); its leader's
            parameters are read at every call, so updates take effect immediately.
        components: the reward components, in the order of ``bilevel.component_names``.
        context_column: the dataset column holding each prompt's context (``category``);
            ``None`` if the leader and mixes use no context.
        name: ``__name__`` (the key TRL logs the reward under).
        buffer: keep the scored groups for :class:`HPGDCallback`.
        log_components: report component means through TRL's ``log_metric``.
    """

    def __init__(
        self,
        bilevel: BilevelRewards,
        components: Sequence[RewardComponent],
        *,
        context_column: str | None = "category",
        name: str = "hpgd_reward",
        buffer: bool = True,
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
        self.buffer_enabled = buffer
        self.log_components = log_components
        self.buffer: list[dict[str, Any]] = []
        self.last_metrics: dict[str, float] = {}
        self.calls = 0

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
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
                raise RewardFunctionError(
                    f"{self.__name__}: the dataset has no {self.context_column!r} column (got "
                    f"{sorted(columns)}); add it or build HPGDReward(context_column=None)"
                )
            contexts = columns[self.context_column]
        scores = score_components(self.components, prompts_t, completions_t, columns)
        with torch.no_grad():
            out = self.bilevel(scores, contexts)
        r = out.r.tolist()
        bad = [i for i, v in enumerate(r) if not math.isfinite(v)]
        if bad:
            raise RewardFunctionError(
                f"{self.__name__}: shaped reward is {r[bad[0]]} at index {bad[0]} (completion "
                f"{completions_t[bad[0]]!r}); the leader's parameters are not finite"
            )
        metrics = {c.name: float(scores[:, k].mean()) for k, c in enumerate(self.components)}
        metrics.update(
            incentive=float(out.incentive.mean()),
            leader_reward=float(out.rbar.mean()),
            base_reward=float((out.r - out.incentive).mean()),
        )
        self.last_metrics = metrics
        log_metric = kwargs.get("log_metric")
        if self.log_components and callable(log_metric):
            for k, v in metrics.items():
                log_metric(f"{self.__name__}/{k}", v)
        state = kwargs.get("trainer_state")
        if self.buffer_enabled:
            self.buffer.append(
                {
                    "prompts": prompts_t,
                    "completions": completions_t,
                    "columns": columns,
                    "scores": scores,
                    "step": None if state is None else int(state.global_step),
                }
            )
        self.calls += 1
        return r

    def take_groups(self, group_size: int, beta: float, follower: str = "trl") -> GroupedSamples:
        """Everything buffered since the last call, as groups of ``group_size`` completions
        (checks that consecutive entries share their prompt); empties the buffer."""
        if not self.buffer:
            raise RuntimeError(
                f"{self.__name__}: nothing buffered; TRL has not called the reward yet"
            )
        items, self.buffer = self.buffer, []
        cols = sorted(set.intersection(*(set(b["columns"]) for b in items)))
        return GroupedSamples(
            follower=follower,
            beta=beta,
            group_size=group_size,
            prompts=[p for b in items for p in b["prompts"]],
            completions=[c for b in items for c in b["completions"]],
            columns={k: [v for b in items for v in b["columns"][k]] for k in cols},
            scores=torch.cat([b["scores"] for b in items]),
        )
