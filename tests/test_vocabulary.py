"""One algorithm vocabulary (docs/theory.md §8): one spelling per name, clear errors for any
other, and the tabular edges that translate the paper's notation."""

from __future__ import annotations

import pytest

from align_cbrl.estimators.vocabulary import ALGORITHMS, check_algorithm


def test_names_have_one_spelling() -> None:
    assert check_algorithm("zero_order", ALGORITHMS) == "zero_order"
    assert check_algorithm("hpgd", ALGORITHMS) == "hpgd"
    for old in ("zo", "zero-order", "amd"):  # pre-1.0 spellings
        with pytest.raises(ValueError, match=f"unknown algorithm '{old}'"):
            check_algorithm(old, ALGORITHMS)


def test_unknown_or_unavailable_names_are_one_line_errors() -> None:
    with pytest.raises(
        ValueError, match=r"^unknown algorithm 'zero-order' \(did you mean 'zero_order'\?\); "
    ) as e:
        check_algorithm("zero-order", ALGORITHMS)
    assert str(e.value).endswith("choose one of hpgd, naive, zero_order, exact, fixed")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown algorithm 'naive'; choose one of hpgd, exact"):
        check_algorithm("naive", ("hpgd", "exact"))  # a name this loop does not offer


def test_four_rooms_config_edge_uses_the_papers_notation() -> None:
    from tabular_reference.four_rooms.algorithms import RunConfig

    cfg = RunConfig.from_dict(
        {"algo": "zero_order", "lam": 0.003, "beta": 3.0, "lrs": [0.1], "seeds": [0]}
    )
    assert (cfg.algo, cfg.beta, cfg.budget_cost) == ("zero_order", 0.003, 3.0)
    d = cfg.to_dict()
    assert (d["algo"], d["lam"], d["beta"]) == ("zero_order", 0.003, 3.0)
    assert "budget_cost" not in d and RunConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"unknown keys \['budget_cost'\]"):
        RunConfig.from_dict({**d, "budget_cost": 1.0})
    with pytest.raises(ValueError, match="unknown algorithm 'zo'"):
        RunConfig.from_dict({**d, "algo": "zo"}).validate()


def test_tax_design_jobs_take_the_names() -> None:
    from tabular_reference.tax_design.algorithms import AlgoSettings
    from tabular_reference.tax_design.sweep import make_jobs

    jobs = make_jobs(
        ["zero_order", "exact", "zero_order_sampled"], [0.1], [0], 2, AlgoSettings(), [50.0]
    )
    assert sorted(j.algo for j in jobs) == ["exact", "zero_order", "zero_order_sampled"]
    for bad in ("sgd", "zo", "amd"):
        with pytest.raises(ValueError, match=f"unknown algorithm '{bad}'"):
            make_jobs([bad], [0.1], [0], 2, AlgoSettings(), [50.0])
