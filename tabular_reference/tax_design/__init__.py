"""Tax design (``docs/theory.md`` §6) as an exact tabular economy.

Modules: :mod:`economy` (grid, actions, contexts), :mod:`kernel` (asset transition, income tax),
:mod:`rewards` (household utility with VAT, social welfare), :mod:`solver` (exact households and
welfare), :mod:`learning` (households trained by soft value-iteration sweeps, warm-started),
:mod:`sampling` (trajectories), :mod:`hypergradient` (``hypergradient()`` from
trajectories, ``exact_hypergradient()``), :mod:`critic` (learned leader values),
:mod:`algorithms` (outer loops), :mod:`sweep` (experiments, results, plots), :mod:`report`,
:mod:`cli`.
"""

from tabular_reference.tax_design.algorithms import ALGORITHMS, AlgoSettings, History, run_batch
from tabular_reference.tax_design.economy import Economy, EconomyConfig
from tabular_reference.tax_design.hypergradient import exact_hypergradient, hypergradient
from tabular_reference.tax_design.solver import soft_policy_iteration, welfare

__all__ = [
    "ALGORITHMS",
    "AlgoSettings",
    "Economy",
    "EconomyConfig",
    "History",
    "exact_hypergradient",
    "hypergradient",
    "run_batch",
    "soft_policy_iteration",
    "welfare",
]
