"""``python -m tabular_reference validate`` (docs/validate.md): a user's estimator given as
module:function runs through it, a deliberately biased one is flagged by the verdict while HPGD
passes, the JSON and the figure are written, and bad estimators are one-line errors."""

from __future__ import annotations

import json

import pytest

from tabular_reference.cli import main
from tabular_reference.validate.runner import ALPHA


def _validate(tmp_path, *extra: str) -> int:
    return main(["validate", "--out", str(tmp_path), "--no-progress", *extra])


def test_biased_user_estimator_is_flagged_and_hpgd_passes(tmp_path, capsys):
    """Four-Rooms, the default model (lambda 0.005, beta 1, both goals) at 10,000 steps, M = 100:
    the same-trajectory product (a user's module:function, biased by Cov(Dhat, Ghat)) is BIASED;
    HPGD (built-in, fused) and a user's re-derivation of it that returns the hypergradient
    itself pass the same test; the short outer loop runs the user estimator in HPGD's place."""
    rc = _validate(
        tmp_path,
        "--estimator",
        "tests.estimator_examples:same_trajectory_hpgd",
        "--reference",
        "hpgd,tests.estimator_examples:hpgd_dense",
        "--estimates",
        "100",
        "--steps-grid",
        "10000",
        "--iters",
        "4",
        "--seeds",
        "2",
    )
    assert rc == 0
    line = capsys.readouterr().out.splitlines()[0]
    head = "verdict [four-rooms/default] tests.estimator_examples:same_trajectory_hpgd: BIASED"
    assert line.startswith(head)
    res = json.loads((tmp_path / "validate.json").read_text())
    assert res["unbiased"] is False
    for ref in ("hpgd", "tests.estimator_examples:hpgd_dense"):
        for row in res["bias"][ref]:
            assert row["p_value"] >= ALPHA / 2, (ref, row)
    assert all(r["p_value"] < 1e-6 for r in res["bias"][res["candidate"]])  # decisive
    assert len(res["outer"]["tests.estimator_examples:same_trajectory_hpgd"]["F_last"]) == 2
    assert (tmp_path / "validate.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope_module_xyz:fn", "cannot import module"),
        ("tests.estimator_examples:wrong_shape", "returned shape"),
        ("tests.estimator_examples:nan_estimate", "returned NaN"),
    ],
)
def test_bad_estimators_fail_with_one_line(tmp_path, capsys, spec, message):
    rc = _validate(
        tmp_path,
        "--estimator",
        spec,
        "--estimates",
        "4",
        "--steps",
        "500",
        "--steps-grid",
        "500",
        "--iters",
        "0",
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err
    assert not (tmp_path / "validate.json").exists()


def test_tax_design_validate_writes_its_results(tmp_path):
    """The tax-design harness end to end at a tiny size: the exact gradient it reports is the
    model's, every estimator has its rows, the outer loop ran the candidate in HPGD's place."""
    import torch

    from tabular_reference.tax_design.economy import Economy
    from tabular_reference.tax_design.hypergradient import exact_hypergradient
    from tabular_reference.tax_design.rewards import initial_theta

    rc = _validate(
        tmp_path,
        "--env",
        "tax-design",
        "--estimator",
        "tests.estimator_examples:hpgd_dense",
        "--estimates",
        "4",
        "--steps",
        "400",
        "--steps-grid",
        "400",
        "--iters",
        "2",
        "--seeds",
        "1",
        "--warmup",
        "1",
    )
    assert rc == 0
    res = json.loads((tmp_path / "validate.json").read_text())
    _, g, _ = exact_hypergradient(Economy(), initial_theta(1), 0.1)
    assert res["exact"][0]["norm"] == pytest.approx(float(torch.linalg.vector_norm(g)), rel=1e-12)
    assert set(res["bias"]) == {"tests.estimator_examples:hpgd_dense", "hpgd"}
    assert all(len(rows) == 1 and "rel_bias" in rows[0] for rows in res["bias"].values())
    assert len(res["outer"]["tests.estimator_examples:hpgd_dense"]["F"][0]) == 3
