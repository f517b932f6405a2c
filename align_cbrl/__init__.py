"""align_cbrl: incentive alignment with contextual bilevel reinforcement learning.

A leader shapes the rewards of followers across contexts and learns how to shape them from what
the followers do, with HPGD (hyper policy gradient descent). The math core
(``align_cbrl.estimators``, ``leaders``, ``rewards``, ``objective``, ``reference``) depends on torch
only; TRL integrations (``followers``, ``trainer``) are imported on first use, so
``import align_cbrl`` stays light.

The names most people need are available at the top level::

    from align_cbrl import HPGDConfig, HPGDTrainer                      # orchestrated training
    from align_cbrl import HPGDReward, HPGDCallback, HPGDArguments      # plugin mode in TRL
    from align_cbrl import WeightLeader, BilevelRewards, build_components
    from align_cbrl import load_leader, FrozenShapedReward              # reuse a trained leader
    from align_cbrl import hpgd_surrogate, hpgd_weights                 # the estimators
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it (imported lazily on first attribute access)
_EXPORTS: dict[str, str] = {
    # estimators (math core)
    "hpgd_surrogate": "align_cbrl.estimators",
    "grouped_hpgd_gradient": "align_cbrl.estimators",
    "naive_surrogate": "align_cbrl.estimators",
    "zero_order_gradient": "align_cbrl.estimators",
    "hpgd_weights": "align_cbrl.estimators",
    "discounted_returns": "align_cbrl.estimators",
    "per_state_sum": "align_cbrl.estimators",
    # leaders, rewards, objective
    "Leader": "align_cbrl.leaders",
    "WeightLeader": "align_cbrl.leaders",
    "NeuralShapingLeader": "align_cbrl.leaders",
    "build_leader": "align_cbrl.leaders",
    "load_leader": "align_cbrl.leaders",
    "RewardComponent": "align_cbrl.rewards",
    "build_component": "align_cbrl.rewards",
    "build_components": "align_cbrl.rewards",
    "register_component": "align_cbrl.rewards",
    "load_reward_config": "align_cbrl.rewards",
    "BilevelRewards": "align_cbrl.objective",
    # followers and training (TRL)
    "Follower": "align_cbrl.followers",
    "GRPOFollower": "align_cbrl.followers",
    "RLOOFollower": "align_cbrl.followers",
    "FunctionFollower": "align_cbrl.followers",
    "ExactFollower": "align_cbrl.followers",
    "TRLFollowerConfig": "align_cbrl.followers",
    "HPGDConfig": "align_cbrl.trainer",
    "HPGDTrainer": "align_cbrl.trainer",
    "HPGDReward": "align_cbrl.trainer",
    "HPGDCallback": "align_cbrl.trainer",
    "HPGDArguments": "align_cbrl.trainer",
    "FrozenShapedReward": "align_cbrl.trainer",
    # infrastructure
    "LeaderSync": "align_cbrl.distributed",
    # multi-process runs that end and fail cleanly (docs/reliability.md)
    "init_process_group": "align_cbrl.distributed",
    "fault_context": "align_cbrl.trainer.faults",
    "finish_run": "align_cbrl.trainer.faults",
    "run_and_leave": "align_cbrl.trainer.faults",
    "CheckpointManager": "align_cbrl.checkpoint",
    "MetricsLogger": "align_cbrl.metrics",
    "load_config": "align_cbrl.config_parser",
    "set_cpu_defaults": "align_cbrl.utils.env",
    # prompt sets and tiny local models (tests, recipes, the quickstart)
    "load_prompts": "align_cbrl.data",
    "build_tiny_lm": "align_cbrl.models",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'align_cbrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
