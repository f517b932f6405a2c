"""Language models without downloads: tiny local ones built from scratch
(:mod:`align_cbrl.models.tiny`, whose tokenizer helpers and cache settings are there) and the
real SmolLM2 path (:mod:`align_cbrl.models.real`, optional dependencies)."""

from align_cbrl.models.tiny import (
    build_tiny_lm,
    build_word_tokenizer,
    completion_logprobs,
    enumerate_completions,
    load_tiny_lm,
    require_model_dir,
)

__all__ = [
    "build_tiny_lm",
    "build_word_tokenizer",
    "completion_logprobs",
    "enumerate_completions",
    "load_tiny_lm",
    "require_model_dir",
]
