"""Table 1 variant: the published *single-loop* AMD (``tabular_reference.four_rooms.amd_single_loop``)
against our exact AMD in the lambda = 0.005 cells, where exact AMD ends above the paper.

Each run: 10,000 outer iterations x 100 warm-started sweeps of the four recursions for both
contexts, one sampled context per step, lr / clipping as the grid; metric = mean exact F over the
last 1,000 iterations (the table's), also with the published truncated follower solve. Prints a
table (mean ± s.e. over seeds beside exact AMD's and the paper's value) and writes ``--json``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/four_rooms_amd_single_loop.py
--json results/amd_single_loop.json`` (lr 0.5 and 0.1, 3 seeds; ``--iters 200`` for a quick check;
``--from-json FILE`` re-summarises finished runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from tabular_reference.four_rooms.amd_single_loop import SingleLoopConfig, run_single_loop
from tabular_reference.four_rooms.table1 import PAPER


def _one(cfg: SingleLoopConfig) -> dict:
    t = time.process_time()
    rec = run_single_loop(cfg)
    rec["cpu_s"] = time.process_time() - t
    return rec


def _se(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def summarise(recs: list[dict], exact_amd: Path) -> list[dict]:
    """Per (lam, beta, lr): mean ± s.e. over seeds of both metrics, beside exact AMD (from the
    table1 JSON ``exact_amd``) and the paper."""
    exact = {}
    if exact_amd.is_file():
        for cell in json.loads(exact_amd.read_text()).get("cells", []):
            if cell["algo"] == "amd":
                exact[(cell["lam"], cell["beta"])] = cell["mean"]
    rows = []
    keys = sorted({(r["config"]["lam"], r["config"]["beta"], r["config"]["lr"]) for r in recs})
    for lam, beta, lr in keys:
        sel = [
            r
            for r in recs
            if (r["config"]["lam"], r["config"]["beta"], r["config"]["lr"]) == (lam, beta, lr)
        ]
        f = np.array([r["F_last"] for r in sel])
        fp = np.array([r["F_last_published_solve"] for r in sel])
        pm, ps = PAPER[(lam, beta)]["amd"]
        rows.append(
            dict(
                lam=lam,
                beta=beta,
                lr=lr,
                n=len(f),
                mean=float(f.mean()),
                se=_se(f),
                mean_published_solve=float(fp.mean()),
                se_published_solve=_se(fp),
                exact_amd=exact.get((lam, beta), float("nan")),
                paper_mean=pm,
                paper_se=ps,
            )
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lams", default="0.005", help="comma-separated follower temperatures")
    p.add_argument("--betas", default="1,3,5", help="comma-separated budget costs")
    p.add_argument("--lrs", default="0.5,0.1", help="comma-separated learning rates")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iters", type=int, default=10_000)
    p.add_argument("--sweeps", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--exact-amd",
        type=Path,
        default=Path("docs/table1.json"),
        help="table1 JSON with the exact AMD cells to compare with",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--from-json", type=Path, default=None, help="summarise this file's runs")
    a = p.parse_args()
    cfgs = [
        SingleLoopConfig(
            beta=float(lam),  # the flags' paper notation: lam temperature, beta budget cost
            budget_cost=float(b),
            lr=float(lr),
            seed=s,
            iters=a.iters,
            sweeps=a.sweeps,
            eval_last=min(1000, a.iters),
        )
        for lam in a.lams.split(",")
        for b in a.betas.split(",")
        for lr in a.lrs.split(",")
        for s in range(a.seeds)
    ]
    if a.from_json:  # summarise finished runs, run nothing
        prev = json.loads(a.from_json.read_text())
        recs, wall = prev["runs"], prev["wall_s"]
    else:
        t0 = time.perf_counter()
        recs = []
        with ProcessPoolExecutor(max_workers=a.workers) as pool:
            futs = [pool.submit(_one, c) for c in cfgs]
            for f in as_completed(futs):
                r = f.result()
                c = r["config"]
                print(
                    f"lam {c['lam']} beta {c['beta']:g} lr {c['lr']} seed {c['seed']}: F_last "
                    f"{r['F_last']:.4f} (published solve {r['F_last_published_solve']:.4f}), "
                    f"{r['wall_s']:.0f} s",
                    flush=True,
                )
                recs.append(r)
        wall = time.perf_counter() - t0
    rows = summarise(recs, a.exact_amd)
    print(f"\nwall {wall:.0f} s, CPU {sum(r['cpu_s'] for r in recs):.0f} s")
    print(
        "| lam | beta | lr | single-loop AMD | F of the published solve | exact AMD | paper AMD |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['lam']} | {r['beta']:g} | {r['lr']} | {r['mean']:.3f} ± {r['se']:.3f} | "
            f"{r['mean_published_solve']:.3f} ± {r['se_published_solve']:.3f} | "
            f"{r['exact_amd']:.3f} | {r['paper_mean']:.2f} ± {r['paper_se']:.3f} |"
        )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"wall_s": wall, "rows": rows, "runs": recs}, indent=1))


if __name__ == "__main__":
    main()
