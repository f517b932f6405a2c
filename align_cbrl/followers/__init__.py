"""Followers: learners with a KL temperature ``beta`` that (approximately) best-respond to a
reward. :class:`Follower` is the interface the leader uses; :class:`GRPOFollower` and
:class:`RLOOFollower` wrap TRL's trainers (imported lazily, TRL is optional), configured by
:class:`TRLFollowerConfig`; :class:`FunctionFollower` wraps user callables;
:class:`ExactFollower` samples the exact best response on an enumerable task;
:class:`SoftmaxFollower` learns it there by exact mirror-descent steps (a warm-started learner).

Modules: ``base`` (the interface, reward-function checks), ``function_follower``, ``exact``,
``learning``,
``trl_config`` (our settings + TRL's config passed through), ``trl_followers`` (train / sample),
``trl_checkpoint`` (save / load), ``kl_penalty`` (the KL as a reward term) and ``trl_compat``
(the only module that touches TRL's private internals; supported TRL versions)."""

from typing import Any

from align_cbrl.followers.base import (
    Follower,
    RewardFn,
    RewardFunctionError,
    call_reward_function,
    reward_function_name,
    validate_beta,
)
from align_cbrl.followers.exact import ExactFollower
from align_cbrl.followers.function_follower import FunctionFollower
from align_cbrl.followers.learning import SoftmaxFollower

__all__ = [
    "ExactFollower",
    "Follower",
    "FunctionFollower",
    "GRPOFollower",
    "RLOOFollower",
    "RewardFn",
    "RewardFunctionError",
    "SoftmaxFollower",
    "TRLFollower",
    "TRLFollowerConfig",
    "call_reward_function",
    "reward_function_name",
    "validate_beta",
]

_TRL_NAMES = {"GRPOFollower", "RLOOFollower", "TRLFollower", "TRLFollowerConfig"}


def __getattr__(name: str) -> Any:
    if name in _TRL_NAMES:
        from align_cbrl.followers import trl_followers

        return getattr(trl_followers, name)
    raise AttributeError(f"module 'align_cbrl.followers' has no attribute {name!r}")
