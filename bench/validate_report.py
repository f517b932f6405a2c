"""The results table of ``docs/validate.md`` from ``validate`` runs (``OUT/validate.json``).

Run: ``python bench/validate_report.py --run "Four-Rooms=runs/validate/fr_default_bchg_10s" ...
[--json docs/validate.json] [--img docs/img]``: prints one markdown row per (setting,
estimator), writes the runs' essentials to one JSON and copies each figure to
``IMG/validate_<run directory name>.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from align_cbrl.utils.io import atomic_write_json

HEADER = (
    "| setting | estimator | rel. bias ± s.e. | cosine | noise ratio (p) | spread, one estimate "
    "| outer-loop F (mean ± s.e., seeds) | candidate minus this |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _cell(rows: list[dict], key: str, fmt: str) -> str:
    return " / ".join("failed" if "error" in r else format(r[key], fmt) for r in rows)


def rows_of(label: str, res: dict) -> list[str]:
    out = []
    cand = res["candidate"]
    for name, rows in res["bias"].items():
        bias = " / ".join(
            "failed" if "error" in r else f"{r['rel_bias']:.3g} ± {r['rel_se']:.2g}" for r in rows
        )
        cos = " / ".join(
            "failed" if "error" in r else f"{r['cosine']:.3f} ± {r['cosine_se']:.3f}" for r in rows
        )
        ratio = " / ".join(
            "failed" if "error" in r else f"{r['noise_ratio']:.2f} ({r['p_value']:.2g})"
            for r in rows
        )
        F = "n/a"
        if name in res["outer"]:
            v = np.asarray(res["outer"][name]["F_last"])
            F = f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(len(v)):.3f} ({len(v)})"
        diff = "(candidate)" if name == cand else "n/a"
        if name in res["comparisons"]:
            c = res["comparisons"][name]
            diff = f"{c['diff']:+.3f} ± {c['se']:.3f}"
        spread = _cell(rows, "rel_spread", ".3g")
        out.append(f"| {label} | `{name}` | {bias} | {cos} | {ratio} | {spread} | {F} | {diff} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", action="append", required=True, help="LABEL=DIR of a validate run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--img", default=None)
    args = ap.parse_args()
    print(HEADER)
    merged = []
    for spec in args.run:
        label, _, path = spec.partition("=")
        res = json.loads((Path(path) / "validate.json").read_text())
        print("\n".join(rows_of(label, res)))
        keep = (
            "candidate",
            "references",
            "harness",
            "sizes",
            "contexts",
            "exact",
            "bias",
            "variance",
            "comparisons",
            "unbiased",
            "verdict",
            "wall_s",
            "cpu_s",
        )
        entry = {"label": label, **{k: res[k] for k in keep}}
        entry["outer_F_last"] = {n: o["F_last"] for n, o in res["outer"].items()}
        merged.append(entry)
        if args.img:
            dest = Path(args.img) / f"validate_{Path(path).name}.png"
            shutil.copyfile(Path(path) / "validate.png", dest)
    if args.json:
        atomic_write_json(args.json, {"runs": merged})


if __name__ == "__main__":
    main()
