"""Assemble ``docs/table1.json`` (and a figure and markdown) from ``table1`` result directories.

Run after the grid, the selected-settings rerun and any HPGD variants::

    python -m tabular_reference table1 --out results/table1                  # full grid
    python -m tabular_reference table1 --out results/table1 --selected-only  # selected
    python -m tabular_reference table1 --out results/t1_published --dynamics published --algos hpgd
    python -m tabular_reference table1 --out results/t1_published_pub --dynamics published \\
        --algos hpgd --hpgd-algo hpgd-published
    python -m tabular_reference table1 --settings results/table1/selected.json \\
        --out results/t1_pubsolve_005 --lams 0.005 --algos amd,zo --follower-solve published
    python bench/four_rooms_amd_single_loop.py --json results/amd_single_loop.json
    python bench/table1_report.py --grid results/table1 \\
        --variant published/hpgd=results/t1_published \\
        --variant published/hpgd-published=results/t1_published_pub \\
        --cells-variant "paper, published follower solve=results/t1_pubsolve_005" \\
        --amd-variant "paper, single-loop AMD=results/amd_single_loop.json"

Writes ``--json`` (default ``docs/table1.json``) with ``{"preset", "wall_s", "selected_wall_s",
"cells": [27 rows], "variants": {name: [9 HPGD rows]}, "other_variants": {name: [AMD / zero-order
rows of a variant]}, "wins", "n_within"}``, ``--png`` (ours vs the paper per cell) and prints the
markdown table used in the README and docs/four_rooms.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tabular_reference.common.plots import pyplot, save_figure

NAMES = {"hpgd": "HPGD", "amd": "AMD", "zo": "ZO"}


def _load(path: Path) -> dict[str, Any]:
    f = path / "table1.json"
    if not f.is_file():
        raise SystemExit(f"{f} not found: run `python -m tabular_reference table1 --out {path}`")
    return json.loads(f.read_text())


def _amd_row(r: dict[str, Any], metric: str = "mean") -> dict[str, Any]:
    """A row of the single-loop AMD bench in the layout of ``cells`` (``within`` as in table1);
    ``metric`` = ``"mean"`` (exact F, the table's metric) or ``"mean_published_solve"`` (F of the
    published truncated follower solve)."""
    tol = max(2 * r["paper_se"], 0.05)
    m = r[metric]
    se = r["se" if metric == "mean" else "se_published_solve"]
    return {
        "lam": r["lam"],
        "beta": r["beta"],
        "algo": "amd",
        "mean": m,
        "se": se,
        "paper_mean": r["paper_mean"],
        "paper_se": r["paper_se"],
        "within": bool(abs(m - r["paper_mean"]) <= tol),
        "lr": r["lr"],
        "c": None,
        "escaped_seeds": None,
        "n_seeds": r["n"],
    }


def _best_rows(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per (lam, beta), the learning rate with the highest mean of ``metric`` (table1's rule)."""
    best: dict[tuple[float, float], dict[str, Any]] = {}
    for r in rows:
        k = (r["lam"], r["beta"])
        if k not in best or r[metric] > best[k][metric]:
            best[k] = r
    return [_amd_row(best[k], metric) for k in sorted(best)]


def _cell(c: dict[str, Any]) -> str:
    flag = "" if c["within"] else " ✗"
    esc = "" if c.get("escaped_seeds") is None else f" [{c['escaped_seeds']}]"
    return f"{c['mean']:.3f} ± {c['se']:.3f}{esc}{flag}"


def markdown(report: dict[str, Any]) -> str:
    cells = {(c["lam"], c["beta"], c["algo"]): c for c in report["cells"]}
    var_names = list(report["variants"])
    head = "| λ | β | HPGD | AMD | ZO | paper HPGD / AMD / ZO |"
    sep = "|---|---|---|---|---|---|"
    for v in var_names:
        head += f" HPGD, {v} |"
        sep += "---|"
    lines = [head, sep]
    variants = {
        v: {(c["lam"], c["beta"]): c for c in rows} for v, rows in report["variants"].items()
    }
    for lam in sorted({k[0] for k in cells}):
        for beta in sorted({k[1] for k in cells if k[0] == lam}):
            row = [f"{lam:g}", f"{beta:g}"]
            for a in ("hpgd", "amd", "zo"):
                c = cells.get((lam, beta, a))
                row.append("–" if c is None else _cell(c))
            p = [cells.get((lam, beta, a)) for a in ("hpgd", "amd", "zo")]
            row.append(
                " / ".join(
                    "–" if c is None else f"{c['paper_mean']:.2f} ± {c['paper_se']:.3f}" for c in p
                )
            )
            for v in var_names:
                c = variants[v].get((lam, beta))
                row.append("–" if c is None else _cell(c))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    cells = report["cells"]
    keys = sorted({(c["lam"], c["beta"]) for c in cells})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=120, sharey=True)
    for ax, algo in zip(axes, ("hpgd", "amd", "zo")):
        xs = np.arange(len(keys))
        rows = {(c["lam"], c["beta"]): c for c in cells if c["algo"] == algo}
        ours = [rows[k]["mean"] if k in rows else np.nan for k in keys]
        ours_se = [rows[k]["se"] if k in rows else np.nan for k in keys]
        pm = [rows[k]["paper_mean"] if k in rows else np.nan for k in keys]
        pse = [rows[k]["paper_se"] if k in rows else np.nan for k in keys]
        ax.errorbar(xs - 0.12, pm, yerr=pse, fmt="s", color="0.4", label="paper", capsize=2)
        ax.errorbar(
            xs + 0.12, ours, yerr=ours_se, fmt="o", color="tab:blue", label="ours", capsize=2
        )
        if algo == "hpgd":
            for i, (v, vrows) in enumerate(report["variants"].items()):
                vr = {(c["lam"], c["beta"]): c for c in vrows}
                ax.errorbar(
                    xs + 0.24 + 0.1 * i,
                    [vr[k]["mean"] if k in vr else np.nan for k in keys],
                    yerr=[vr[k]["se"] if k in vr else np.nan for k in keys],
                    fmt="^",
                    ms=4,
                    capsize=2,
                    color=("tab:green", "tab:orange", "tab:purple")[i % 3],
                    label=v,
                )
        ax.set_xticks(xs, [f"λ={k[0]:g}\nβ={k[1]:g}" for k in keys], fontsize=6)
        ax.set_title(f"{NAMES[algo]} (preset {report['preset']})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("exact F, mean over the last 1,000 iterations")
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grid", type=Path, required=True, help="full-grid results directory")
    ap.add_argument(
        "--selected", type=Path, default=None, help="selected-settings dir (default GRID/selected)"
    )
    ap.add_argument(
        "--variant", action="append", default=[], help="NAME=DIR of an HPGD-only table1 run"
    )
    ap.add_argument(
        "--amd-variant",
        action="append",
        default=[],
        help="NAME=JSON of bench/four_rooms_amd_single_loop.py (AMD rows of that variant)",
    )
    ap.add_argument(
        "--cells-variant",
        action="append",
        default=[],
        help="NAME=DIR of a table1 run over any columns (e.g. --follower-solve published)",
    )
    ap.add_argument("--json", type=Path, default=Path("docs/table1.json"))
    ap.add_argument("--png", type=Path, default=Path("docs/img/table1.png"))
    args = ap.parse_args()
    grid = _load(args.grid)
    sel_dir = args.selected or args.grid / "selected"
    sel = _load(sel_dir) if (sel_dir / "table1.json").is_file() else None
    variants: dict[str, list[dict[str, Any]]] = {}
    for spec in args.variant:
        name, _, d = spec.partition("=")
        if not d:
            raise SystemExit(f"--variant needs NAME=DIR, got {spec!r}")
        variants[name] = [c for c in _load(Path(d))["cells"] if c["algo"] == "hpgd"]
    other: dict[str, list[dict[str, Any]]] = {}
    for spec in args.cells_variant:
        name, _, d = spec.partition("=")
        if not d:
            raise SystemExit(f"--cells-variant needs NAME=DIR, got {spec!r}")
        other[name] = _load(Path(d))["cells"]
    for spec in args.amd_variant:
        name, _, f = spec.partition("=")
        if not f or not Path(f).is_file():
            raise SystemExit(f"--amd-variant needs NAME=JSON of an existing file, got {spec!r}")
        rows = json.loads(Path(f).read_text())["rows"]
        other[name] = _best_rows(rows, "mean")
        other[name + ", F of the published solve"] = _best_rows(rows, "mean_published_solve")
    report = {
        "preset": grid["preset"],
        "hpgd_algo": grid.get("hpgd_algo", "hpgd"),
        "wall_s": grid["wall_s"],
        "compute_s": grid.get("compute_s"),
        "selected_wall_s": None if sel is None else sel["wall_s"],
        "cells": grid["cells"],
        "selected_cells": None if sel is None else sel["cells"],
        "variants": variants,
        "other_variants": other,
        "wins": grid["wins"],
        "n_within": sum(c["within"] for c in grid["cells"]),
        "n_within_variants": {v: sum(c["within"] for c in rows) for v, rows in variants.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.png)
    print(markdown(report))
    print(
        f"\n{report['n_within']}/{len(report['cells'])} cells within max(2 x paper s.e., 0.05); "
        f"grid {report['wall_s'] / 60:.1f} min"
        + (
            ""
            if report["selected_wall_s"] is None
            else f", selected {report['selected_wall_s'] / 60:.1f} min"
        )
    )
    for w in report["wins"]:
        print(
            f"win lam={w['lam']:g} beta={w['beta']:g}: {w['margin_over_amd']:+.3f} over AMD, "
            f"{w['diff_over_zo']:+.3f} over ZO (2 s.e. {2 * w['se_diff_zo']:.3f}): "
            f"{'holds' if w['holds'] else 'does not hold'}"
        )
    for name, rows in report["other_variants"].items():
        print(f"\n{name}:")
        for c in rows:
            print(
                f"  lam {c['lam']:g} beta {c['beta']:g} {NAMES[c['algo']]}: {_cell(c)} "
                f"(paper {c['paper_mean']:.2f} ± {c['paper_se']:.3f}, lr {c['lr']})"
            )
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
