"""Hypergradient estimators (the math core: torch only, no TRL, no tabular code).

Modules: :mod:`temperature` (the follower temperature check), :mod:`grouped` (language-model
followers, completions grouped by prompt), :mod:`episodes` (batches of sampled episodes: scans
and per-state sums), :mod:`leader_values` (leader-value sources), :mod:`trajectory` (weight forms
and their composition ``hpgd_weights``), :mod:`published` (the published Four-Rooms estimator),
:mod:`zero_order` (Gaussian smoothing), :mod:`multilevel` (the randomised multilevel estimator for
followers the leader trains), :mod:`combine` (several followers: the weighted mean of their
objectives and estimates). The math: ``docs/theory.md``.
"""

from align_cbrl.estimators.combine import (
    combine_estimates,
    combined_hpgd_surrogate,
    follower_group_weights,
    follower_weights,
)
from align_cbrl.estimators.episodes import (
    discounted_returns,
    per_state_sum,
    segmented_scan,
    time_in_episode,
)
from align_cbrl.estimators.grouped import (
    group_weights,
    grouped_hpgd_gradient,
    hpgd_surrogate,
    naive_gradient,
    naive_surrogate,
    zero_order_gradient,
)
from align_cbrl.estimators.leader_values import (
    LeaderValues,
    crossfit_values,
    published_values,
    table_values,
    trajectory_values,
)
from align_cbrl.estimators.multilevel import (
    MultilevelEstimate,
    MultilevelSchedule,
    expected_multilevel,
    multilevel_combination,
    multilevel_estimate,
)
from align_cbrl.estimators.published import published_hpgd_weights
from align_cbrl.estimators.temperature import check_beta
from align_cbrl.estimators.trajectory import (
    HPGDWeights,
    covariance_weights,
    direct_weights,
    hpgd_weights,
    mc_weights,
)
from align_cbrl.estimators.zero_order import (
    gaussian_smoothing_gradient,
    sample_directions,
    smoothing_radius,
)

__all__ = [
    "HPGDWeights",
    "LeaderValues",
    "MultilevelEstimate",
    "MultilevelSchedule",
    "check_beta",
    "combine_estimates",
    "combined_hpgd_surrogate",
    "covariance_weights",
    "crossfit_values",
    "direct_weights",
    "discounted_returns",
    "expected_multilevel",
    "follower_group_weights",
    "follower_weights",
    "gaussian_smoothing_gradient",
    "group_weights",
    "grouped_hpgd_gradient",
    "hpgd_surrogate",
    "hpgd_weights",
    "mc_weights",
    "multilevel_combination",
    "multilevel_estimate",
    "naive_gradient",
    "naive_surrogate",
    "per_state_sum",
    "published_hpgd_weights",
    "published_values",
    "sample_directions",
    "segmented_scan",
    "smoothing_radius",
    "table_values",
    "time_in_episode",
    "trajectory_values",
    "zero_order_gradient",
]
