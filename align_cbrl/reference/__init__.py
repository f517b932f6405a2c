"""Exact references for the language-model core (enumerable tasks)."""

from align_cbrl.reference.tiny_language import (
    EOS,
    ExactOptimum,
    TinyLanguageConfig,
    TinyLanguageTask,
    enumerate_completions,
    exact_gradient,
    exact_objective,
    exact_policy,
    optimize_exact,
    reward_jacobians,
    sample_completions,
    sample_prompts,
)

__all__ = [
    "EOS",
    "ExactOptimum",
    "TinyLanguageConfig",
    "TinyLanguageTask",
    "enumerate_completions",
    "exact_gradient",
    "exact_objective",
    "exact_policy",
    "optimize_exact",
    "reward_jacobians",
    "sample_completions",
    "sample_prompts",
]
