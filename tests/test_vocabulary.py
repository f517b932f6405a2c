"""One algorithm vocabulary (docs/theory.md §8): canonical names, accepted aliases, clear errors,
and the tabular edges that translate the paper's notation."""

from __future__ import annotations

import pytest

from align_cbrl.estimators.vocabulary import (
    ALGORITHM_ALIASES,
    CANONICAL_ALGORITHMS,
    canonical_algorithm,
)


def test_aliases_map_to_canonical_names() -> None:
    assert canonical_algorithm("zo", CANONICAL_ALGORITHMS) == "zero-order"
    assert canonical_algorithm("zero_order", CANONICAL_ALGORITHMS) == "zero-order"
    assert canonical_algorithm("amd", CANONICAL_ALGORITHMS) == "exact"
    assert canonical_algorithm("hpgd", CANONICAL_ALGORITHMS) == "hpgd"
    assert set(ALGORITHM_ALIASES.values()) <= {*CANONICAL_ALGORITHMS, "zero-order-sampled"}


def test_unknown_or_unavailable_names_are_one_line_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown algorithm 'sgd'; choose one of hpgd, exact"
    ) as e:
        canonical_algorithm("sgd", ("hpgd", "exact"))
    assert "aliases: amd" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown algorithm 'zo'"):
        canonical_algorithm("zo", ("hpgd", "naive"))  # an alias of a name not offered


def test_four_rooms_config_edge_uses_the_papers_notation() -> None:
    from tabular_reference.four_rooms.algorithms import RunConfig

    cfg = RunConfig.from_dict({"algo": "zo", "lam": 0.003, "beta": 3.0, "lrs": [0.1], "seeds": [0]})
    assert (cfg.algo, cfg.beta, cfg.budget_cost) == ("zero-order", 0.003, 3.0)
    d = cfg.to_dict()
    assert (d["algo"], d["lam"], d["beta"]) == ("zero-order", 0.003, 3.0)
    assert "budget_cost" not in d and RunConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"unknown keys \['budget_cost'\]"):
        RunConfig.from_dict({**d, "budget_cost": 1.0})


def test_tax_design_jobs_accept_aliases() -> None:
    from tabular_reference.tax_design.algorithms import AlgoSettings
    from tabular_reference.tax_design.sweep import make_jobs

    jobs = make_jobs(["zo", "amd", "zero_order_sampled"], [0.1], [0], 2, AlgoSettings(), [50.0])
    assert sorted(j.algo for j in jobs) == ["exact", "zero-order", "zero-order-sampled"]
    with pytest.raises(ValueError, match="unknown algorithm 'sgd'"):
        make_jobs(["sgd"], [0.1], [0], 2, AlgoSettings(), [50.0])
