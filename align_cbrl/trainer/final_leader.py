"""The final leader of a run as a ``save_pretrained`` folder (``docs/shaping_artifact.md``):
the training summary its model card shows, and the save itself, shared by orchestrated runs
and the plugin callback.

The summary holds the estimator, the number of leader updates, the last objective estimate,
the exact objective where the run knows it, and per context the mean incentive paid and its
mean cost per completion on the run's last scored completions:

    incentive_c = mean_{i: c(p_i) = c} i_x(p_i, y_i),   cost_c = mean_{i: c(p_i) = c} cost_x(i_x(p_i, y_i))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from align_cbrl.objective import BilevelRewards
from align_cbrl.rewards.callable import InMemoryCallableError
from align_cbrl.trainer.reward_function import ShapedReward

__all__ = [
    "incentive_by_context",
    "orchestrated_training_summary",
    "plugin_training_summary",
    "reward_spec_or_warn",
    "save_final_leader",
    "save_run_leader",
]


def incentive_by_context(
    bilevel: BilevelRewards, scores: torch.Tensor, contexts: Sequence[Any] | None
) -> dict[str, dict[str, float]]:
    """``{context: {"incentive", "cost", "completions"}}`` of one scored batch at the current
    leader (module docstring); one entry ``"(all)"`` without contexts."""
    with torch.no_grad():
        inc = bilevel.leader(scores, contexts)
        cost = bilevel.leader.cost(inc)
    keys = ["(all)"] * scores.shape[0] if contexts is None else [str(c) for c in contexts]
    out: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(keys):
        rows = torch.tensor([k == key for k in keys])
        out[key] = {
            "incentive": float(inc[rows].mean()),
            "cost": float(cost[rows].mean()),
            "completions": int(rows.sum()),
        }
    return out


def plugin_training_summary(
    estimator: str,
    history: Sequence[Mapping[str, float]],
    update_every: int,
    bilevel: BilevelRewards,
    last_groups: Any,
    context_column: str | None,
) -> dict[str, Any]:
    """The summary of a plugin run from the callback's update history and the groups of its
    last update (``GroupedSamples`` or ``None``)."""
    summary: dict[str, Any] = {
        "mode": "plugin",
        "estimator": estimator,
        "iterations": len(history),
        "follower_steps": update_every,
    }
    if history:
        summary["objective_estimate"] = history[-1].get("objective_estimate")
    if last_groups is not None:
        ctx = None if context_column is None else last_groups.columns.get(context_column)
        summary["by_context"] = incentive_by_context(bilevel, last_groups.scores, ctx)
        summary["by_context_source"] = "on the completions of the last leader update"
    return summary


def reward_spec_or_warn(reward: ShapedReward) -> bool:
    """Whether ``reward``'s spec can be saved; if not (an in-memory function component),
    warn once, naming the fix. Called before training, so the warning comes early."""
    try:
        reward.reward_spec()
    except InMemoryCallableError as err:
        warnings.warn(
            f"the final leader will be saved without its reward spec: {err}",
            UserWarning,
            stacklevel=3,
        )
        return False
    return True


def save_final_leader(
    reward: ShapedReward,
    directory: str | os.PathLike[str],
    training: Mapping[str, Any],
) -> Path:
    """``reward``'s leader with the reward spec (in-memory function components as placeholders
    that ``FrozenShapedReward.from_pretrained(dir, components=...)`` fills) and ``training``."""
    spec = reward.reward_spec(strict=False)
    return reward.leader.save_pretrained(directory, rewards=spec, training=training)


def orchestrated_training_summary(trainer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of an orchestrated run (an ``HPGDTrainer`` and its ``summary.json``
    content); per context on the held-out evaluation's completions."""
    cfg = trainer.config
    out: dict[str, Any] = {
        "mode": "orchestrated",
        "estimator": cfg.leader.estimator,
        "iterations": cfg.iterations,
        "follower_steps": cfg.follower_steps,
        "objective_estimate": summary["final"].get("objective_estimate"),
    }
    for key, name in (
        ("eval/objective_estimate", "eval_objective_estimate"),
        ("eval/objective_exact", "objective_exact"),
        ("exact_optimum", "exact_optimum"),
    ):
        if summary.get(key) is not None:
            out[name] = summary[key]
    column = trainer.setup.context_column
    batches = trainer.eval_batches
    if batches:
        contexts = None if column is None else [c for b in batches for c in b.columns[column]]
        scores = torch.cat([b.scores for b in batches])
        out["by_context"] = incentive_by_context(trainer.bilevel, scores, contexts)
        out["by_context_source"] = "on the held-out evaluation completions"
    return out


def save_run_leader(trainer: Any, summary: Mapping[str, Any]) -> Path:
    """An orchestrated run's final ``<output_dir>/leader``."""
    setup = trainer.setup
    reward = ShapedReward(trainer.bilevel, setup.components, context_column=setup.context_column)
    training = orchestrated_training_summary(trainer, summary)
    return save_final_leader(reward, trainer.output_dir / "leader", training)
