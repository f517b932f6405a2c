"""Hypergradient estimators (the math core: torch only, no TRL, no tabular code)."""

from align_cbrl.estimators.trajectory import (
    HPGDWeights,
    discounted_returns,
    hpgd_weights,
    per_state_sum,
    segmented_scan,
    time_in_episode,
)
from align_cbrl.estimators.zero_order import (
    gaussian_smoothing_gradient,
    sample_directions,
    smoothing_radius,
)

__all__ = [
    "HPGDWeights",
    "discounted_returns",
    "gaussian_smoothing_gradient",
    "hpgd_weights",
    "per_state_sum",
    "sample_directions",
    "segmented_scan",
    "smoothing_radius",
    "time_in_episode",
]
