"""Reward components (swappable by YAML), their registry, and fixed component mixes."""

from align_cbrl.rewards.base import (
    ComponentOutputError,
    RewardComponent,
    RewardComponentError,
    score_components,
    validate_scores,
)
from align_cbrl.rewards.callable import CallableReward, import_callable
from align_cbrl.rewards.contexts import ContextIndex
from align_cbrl.rewards.embedding import EmbeddingSimilarityReward, mean_pool
from align_cbrl.rewards.hf_classifier import SequenceClassifierReward
from align_cbrl.rewards.mix import ComponentMix, MixConfig
from align_cbrl.rewards.model_dirs import resolve_model_dir
from align_cbrl.rewards.registry import (
    RewardConfig,
    build_component,
    build_components,
    known_components,
    load_reward_config,
    register_component,
)
from align_cbrl.rewards.rule_based import FormatReward, KeywordReward, LengthReward

__all__ = [
    "CallableReward",
    "ComponentMix",
    "ComponentOutputError",
    "ContextIndex",
    "EmbeddingSimilarityReward",
    "FormatReward",
    "KeywordReward",
    "LengthReward",
    "MixConfig",
    "RewardComponent",
    "RewardComponentError",
    "RewardConfig",
    "SequenceClassifierReward",
    "build_component",
    "build_components",
    "import_callable",
    "known_components",
    "load_reward_config",
    "mean_pool",
    "register_component",
    "resolve_model_dir",
    "score_components",
    "validate_scores",
]
