"""Locally built tiny language models (no downloads): see :mod:`align_cbrl.models.tiny`."""

from align_cbrl.models.tiny import (
    DEFAULT_EOS,
    TINY_CORPUS,
    build_bpe_tokenizer,
    build_tiny_lm,
    build_word_tokenizer,
    completion_logprobs,
    default_cache_dir,
    enumerate_completions,
    load_tiny_lm,
)

__all__ = [
    "DEFAULT_EOS",
    "TINY_CORPUS",
    "build_bpe_tokenizer",
    "build_tiny_lm",
    "build_word_tokenizer",
    "completion_logprobs",
    "default_cache_dir",
    "enumerate_completions",
    "load_tiny_lm",
]
