"""The tax-design table in the docs is rendered from docs/tax_design.json (and stays in sync)."""

from __future__ import annotations

import json

import pytest

from tabular_reference.tax_design.report import BEGIN, END, describe, render_table, update_file
from tests.helpers import ROOT


def _data() -> dict:
    row = {
        "lam": 0.1,
        "algo": "hpgd_s60000",
        "final_mean": 37.5,
        "final_se": 0.25,
        "iters_to_zo_sampled_final": 12.5,
        "n_seeds_reaching": 2,
        "n_seeds": 2,
        "half_gain_iteration": 40,
        "rates": [0.6, 0.2, 0.1, 0.3],
        "reference": "zero_order_sampled_c50_s60000",
    }
    ref = {**row, "algo": "zero_order_sampled_c50_s60000", "final_mean": 30.0, "final_se": 0.5}
    exact = {**row, "algo": "exact", "final_se": 0.0, "n_seeds": 1, "n_seeds_reaching": 0}
    extra = {**row, "algo": "hpgd_s10000", "n_seeds_reaching": 1}
    return {"wall_s": 1.0, "rows": [exact, ref, row], "extra": [{"rows": [extra]}]}


def test_describe() -> None:
    assert describe("hpgd_s60000") == "HPGD, 60,000 steps"
    assert describe("naive_s10000") == "naive, 10,000 steps"
    assert describe("zero_order_sampled_c50_s60000_crn") == (
        "zero-order, sampled values, c = 50, 2 x 60,000 steps, CRN"
    )
    assert describe("zero_order_c0.5") == "zero-order, exact values (oracle), c = 0.5"
    assert describe("exact") == "exact gradient (ceiling)"


def test_render_table() -> None:
    lines = render_table(_data()).splitlines()
    assert lines[2:] == [
        "| 0.1 | HPGD, 60,000 steps | 37.500 ± 0.250 | 12.5 (2/2) | 40 | 0.600 / 0.200 / 0.100 / 0.300 |",
        "| 0.1 | HPGD, 10,000 steps | 37.500 ± 0.250 | 12.5 (1/2) | 40 | 0.600 / 0.200 / 0.100 / 0.300 |",
        "| 0.1 | zero-order, sampled values, c = 50, 2 x 60,000 steps | 30.000 ± 0.500 | (reference) "
        "| 40 | 0.600 / 0.200 / 0.100 / 0.300 |",
        "| 0.1 | exact gradient (ceiling) | 37.500 | never (0/1) | 40 | 0.600 / 0.200 / 0.100 / 0.300 |",
    ]


def test_update_file(tmp_path) -> None:
    p = tmp_path / "doc.md"
    p.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    assert update_file(p, _data())
    assert p.read_text() == f"intro\n{BEGIN}\n{render_table(_data())}{END}\noutro\n"
    assert not update_file(p, _data())
    q = tmp_path / "none.md"
    q.write_text("no markers")
    with pytest.raises(ValueError, match="no"):
        update_file(q, _data())


@pytest.mark.parametrize("doc", ["README.md", "docs/tax_design.md"])
def test_docs_table_is_rendered_from_json(doc: str) -> None:
    data = json.loads((ROOT / "docs/tax_design.json").read_text())
    text = (ROOT / doc).read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block == "\n" + render_table(data), "run bench/tax_design_table.py --write"
