"""Tax design (reference notes, section 4) as an exact tabular economy.

Modules: :mod:`economy` (grid, actions, contexts), :mod:`kernel` (asset transition, income tax),
:mod:`rewards` (household utility with VAT, social welfare), :mod:`solver` (exact households,
welfare and hypergradient), :mod:`sampling` (trajectories), :mod:`hpgd` (trajectory estimator),
:mod:`algorithms` (outer loops), :mod:`sweep` (experiments, results, plots), :mod:`cli`.
"""

from tabular_reference.tax_design.algorithms import ALGORITHMS, AlgoSettings, History, run_batch
from tabular_reference.tax_design.economy import Economy, EconomyConfig
from tabular_reference.tax_design.hpgd import hpgd_gradient
from tabular_reference.tax_design.solver import (
    soft_policy_iteration,
    welfare,
    welfare_and_grad,
)

__all__ = [
    "ALGORITHMS",
    "AlgoSettings",
    "Economy",
    "EconomyConfig",
    "History",
    "hpgd_gradient",
    "run_batch",
    "soft_policy_iteration",
    "welfare",
    "welfare_and_grad",
]
