"""HPGD training for language-model followers: orchestrated (:class:`HPGDTrainer` +
:class:`HPGDConfig`) and plugin mode (:class:`HPGDReward` + :class:`HPGDCallback` in your own
TRL script). See ``docs/trainer.md``."""

from typing import Any

from align_cbrl.trainer.arguments import HPGDArguments
from align_cbrl.trainer.config import FollowerConfig, HPGDConfig, LeaderConfig, RewardsConfig
from align_cbrl.trainer.estimation import (
    Direction,
    GroupedSamples,
    build_optimizer,
    leader_surrogate,
    leader_update,
)
from align_cbrl.trainer.frozen_reward import FrozenShapedReward
from align_cbrl.trainer.groups import GroupBuffer, ScoredBatch
from align_cbrl.trainer.reward_function import HPGDReward, ShapedReward
from align_cbrl.trainer.stats import FollowerStats, LeaderStats, UpdateResult
from align_cbrl.trainer.strategies import Estimator, build_estimator

__all__ = [
    "Direction",
    "Estimator",
    "FollowerConfig",
    "FollowerStats",
    "FrozenShapedReward",
    "GroupBuffer",
    "GroupedSamples",
    "HPGDArguments",
    "HPGDCallback",
    "HPGDConfig",
    "HPGDReward",
    "HPGDTrainer",
    "LeaderConfig",
    "LeaderStats",
    "RewardsConfig",
    "RunExistsError",
    "ScoredBatch",
    "ShapedReward",
    "UpdateResult",
    "build_estimator",
    "build_optimizer",
    "leader_surrogate",
    "leader_update",
]


def __getattr__(name: str) -> Any:
    # the trainer and the callback import TRL / transformers: load them on first use
    if name in ("HPGDTrainer", "RunExistsError"):
        from align_cbrl.trainer import hpgd_trainer

        return getattr(hpgd_trainer, name)
    if name == "HPGDCallback":
        from align_cbrl.trainer.callback import HPGDCallback

        return HPGDCallback
    raise AttributeError(f"module 'align_cbrl.trainer' has no attribute {name!r}")
