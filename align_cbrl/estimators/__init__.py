"""Hypergradient estimators (the math core: torch only, no TRL, no tabular code)."""

from align_cbrl.estimators.grouped import (
    check_beta,
    group_weights,
    hpgd_gradient,
    hpgd_surrogate,
    naive_gradient,
    naive_surrogate,
    zero_order_gradient,
)
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
    "check_beta",
    "discounted_returns",
    "gaussian_smoothing_gradient",
    "group_weights",
    "hpgd_gradient",
    "hpgd_surrogate",
    "hpgd_weights",
    "naive_gradient",
    "naive_surrogate",
    "per_state_sum",
    "sample_directions",
    "segmented_scan",
    "smoothing_radius",
    "time_in_episode",
    "zero_order_gradient",
]
