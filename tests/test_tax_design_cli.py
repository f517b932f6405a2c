"""``python -m tabular_reference tax-design``: end-to-end outputs and input errors."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from align_cbrl.utils.io import load_safetensors
from tabular_reference.tax_design.cli import register


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["tax-design", *argv])
    return args.func(args)


def test_end_to_end_small(tmp_path) -> None:
    out = tmp_path / "td"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("do not lose me")
    argv = ["--algo", "all", "--lam", "0.2", "--seeds", "2", "--iters", "3", "--bins", "21"]
    argv += ["--steps", "400", "800", "--zo-steps", "400", "--zo-c", "0.5"]
    argv += ["--workers", "1", "--no-progress", "--out", str(out)]
    assert _run(argv) == 0
    assert keep.read_text() == "do not lose me"
    labels = ("hpgd_s400", "hpgd_s800", "naive_s400", "naive_s800")
    labels += ("zero_order_c0.5", "zero_order_sampled_c0.5_s400")
    for label in labels:
        d = out / "lam0.2" / label
        config = json.loads((d / "config.json").read_text())
        assert config["iters"] == 3 and config["economy"]["n_bins"] == 21
        with open(d / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 4 * 2 and set(rows[0]) >= {"welfare", "tau", "v1", "v2", "v3"}
        params = load_safetensors(d / "final_params.safetensors")
        assert tuple(params["theta"].shape) == (2, 4)
        assert (out / f"rates_lam0.2_{label}.png").stat().st_size > 0
    assert (out / "welfare_lam0.2.png").stat().st_size > 0
    assert (out / "rates_lam0.2.png").stat().st_size > 0  # HPGD and zero-order side by side
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["jobs"]) == 6
    assert {c["algo"] for c in summary["comparisons"]} == set(labels[:4])
    assert {c["zero_order"] for c in summary["comparisons"]} == set(labels[4:])
    rows = {r["algo"]: r for r in summary["rows"]}
    assert set(rows) == set(labels)
    assert all(r["reference"] == "zero_order_sampled_c0.5_s400" for r in rows.values())
    # per-seed reach iterations agree with the metrics file
    with open(out / "lam0.2" / "hpgd_s800" / "metrics.csv") as fh:
        metrics = list(csv.DictReader(fh))
    target = rows["hpgd_s800"]["reference_final"]
    for seed, reach in enumerate(rows["hpgd_s800"]["reach_per_seed"]):
        hits = [int(m["iteration"]) for m in metrics if int(m["seed"]) == seed]
        hits = [i for i in hits if float(metrics[i * 2 + seed]["welfare"]) >= target]
        assert reach == (min(hits) if hits else None)
    assert [a["hpgd"] for a in summary["acceptance"]] == ["hpgd_s400", "hpgd_s800"]
    assert summary["acceptance"][1]["naive"] == "naive_s800"
    # --replot rebuilds the summary and plots from the files alone
    (out / "summary.json").unlink()
    (out / "welfare_lam0.2.png").unlink()
    assert _run(["--replot", "--out", str(out)]) == 0
    rebuilt = json.loads((out / "summary.json").read_text())
    assert rebuilt["comparisons"] == summary["comparisons"]
    assert (out / "welfare_lam0.2.png").stat().st_size > 0


def test_replot_without_results(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no finished tax-design jobs"):
        _run(["--replot", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--algo", "sgd"], "unknown algorithm 'sgd'"),
        (["--algo", "all", "hpgd"], "'all' cannot be combined"),
        (["--lam", "0"], "lam must be > 0"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--steps", "100"], "below one 200-step episode"),
        (["--steps", "600"], "must be a multiple of 400"),
        (["--zo-steps", "199"], "below one 200-step episode"),
        (["--zo-c", "0"], "c must be > 0"),
        (["--iters", "0"], "iters must be an integer >= 1"),
        (["--bins", "100"], "odd integer"),
        (["--zo-c", "-1"], "c must be > 0"),
    ],
)
def test_bad_arguments(tmp_path, argv: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        extra = [] if "--iters" in argv else ["--iters", "1"]
        _run([*argv, *extra, "--out", str(tmp_path), "--no-progress"])
    assert not any(tmp_path.iterdir())  # rejected before anything is written


def test_bad_workers(tmp_path) -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        _run(["--workers", "0", "--iters", "1", "--out", str(tmp_path / "x"), "--no-progress"])
    assert not (tmp_path / "x").exists()
