"""The tax-design sweep as published (issue #16): timing, acceptance figures, docs JSON and plots.

Runs hpgd and naive (``--steps`` environment steps per outer iteration, default the published
60,000), zero-order-sampled (sampled welfare from 60,000 steps at ``x`` and again at
``x + u_t z``, ``u_t = 50 / t``), the exact-value zero-order (an oracle reference) and exact
hypergradient ascent (the ceiling) for lam in {0.1, 0.2, 0.3}, 10 seeds, 1,000 outer iterations
(seeds batched per job, a 2-process pool with one thread each). Prints the wall time, each job's
wall and CPU time and their split by algorithm, the final welfare and rates, the iterations to
reach zero-order-sampled's final welfare and the acceptance figures; writes ``--json`` (the
docs table's source) and copies the figures to ``--img`` (``tax_welfare_lam*.png``,
``tax_rates_lam*.png``).

Run: ``nice -n 10 .venv/bin/python bench/tax_design_sweep.py --json docs/tax_design.json``
(``--iters``/``--seeds`` for a shorter check; ``--steps 10000 --algos hpgd naive --append``
adds the earlier budget's rows to an existing JSON under ``extra``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

from align_cbrl.utils.io import atomic_write_json
from tabular_reference.tax_design.algorithms import AlgoSettings, episodes_from_steps
from tabular_reference.tax_design.economy import EconomyConfig
from tabular_reference.tax_design.sweep import discover, make_jobs, run_sweep, summarise

TARGET_SECONDS = 20 * 60
ROW_KEYS = (
    "lam",
    "algo",
    "final_mean",
    "final_se",
    "iters_to_zo_sampled_final",
    "rates",
    "n_seeds_reaching",
    "mean_curve_reach",
    "half_gain_iteration",
    "n_rising",
    "n_vat_ordered",
    "n_seeds",
    "initial",
    "reference",
    "reference_final",
    "seconds",
    "cpu_seconds",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/tax_design_bench")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--lam", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--zo-c", type=float, default=50.0)
    parser.add_argument("--steps", type=int, nargs="+", default=[60_000])
    parser.add_argument("--zo-steps", type=int, default=60_000)
    parser.add_argument("--zo-crn", action="store_true")
    parser.add_argument(
        "--algos",
        nargs="+",
        default=["hpgd", "zero_order_sampled", "naive", "zero_order", "exact"],
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--by-lam",
        action="store_true",
        help="start the jobs lambda by lambda (complete lambdas finish first) instead of longest first",
    )
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--json", default=None, help="write the docs JSON here")
    parser.add_argument("--append", action="store_true", help="add to --json under 'extra'")
    parser.add_argument("--img", default=None, help="copy the figures here (docs/img)")
    parser.add_argument(
        "--from-out",
        action="store_true",
        help="run nothing: summarise the finished jobs under --out (an existing --json keeps its "
        "timing fields)",
    )
    return parser


def _print_report(report: dict) -> None:
    for j in sorted(report["jobs"], key=lambda j: (j["lam"], j["label"])):
        r = j["final_rates_mean"]
        print(
            f"  lam={j['lam']:g} {j['label']:>32}: {j['seconds']:5.0f}s wall {j['cpu_seconds']:5.0f}s"
            f" CPU  F {j['initial_welfare']:.3f} -> {j['final_welfare_mean']:.3f} ± "
            f"{j['final_welfare_se']:.3f}  tau={r['tau']:.3f} v=({r['v1']:.3f}, {r['v2']:.3f}, "
            f"{r['v3']:.3f})"
        )
    for row in report["rows"]:
        if row["reference"] is None:
            continue
        print(
            f"  lam={row['lam']:g} {row['algo']:>32}: reaches {row['reference']} final "
            f"{row['reference_final']:.3f}: seed mean {row['iters_to_zo_sampled_final']} over "
            f"{row['n_seeds_reaching']}/{row['n_seeds']} seeds (mean curve "
            f"{row['mean_curve_reach']}); half gain at {row['half_gain_iteration']}; welfare rose "
            f"for {row['n_rising']}/{row['n_seeds']}; v2 < v1 < v3 for {row['n_vat_ordered']}"
        )
    for a in report["acceptance"]:
        frac = a["reach_fraction"]
        print(
            f"  ACCEPT lam={a['lam']:g} {a['hpgd']}: reaches the reference at "
            f"{a['iters_to_reference_final']} ({'-' if frac is None else f'{frac:.3f}'} of the "
            f"iterations, {a['n_seeds_reaching']} seeds); minus {a['naive']}: "
            f"{a['hpgd_minus_naive']:.3f} = {a['hpgd_minus_naive_in_se']:.1f} s.e."
            if a["hpgd_minus_naive"] is not None
            else f"  ACCEPT lam={a['lam']:g} {a['hpgd']}: reach {a['iters_to_reference_final']}"
        )


def _cpu_split(report: dict) -> dict[str, list[float]]:
    """Per algorithm: summed job wall and CPU seconds."""
    by_algo: dict[str, list[float]] = {}
    for j in report["jobs"]:
        by_algo.setdefault(j["algo"], [0.0, 0.0])
        by_algo[j["algo"]][0] += j["seconds"]
        by_algo[j["algo"]][1] += j["cpu_seconds"]
    return by_algo


def _write_json(
    args: argparse.Namespace,
    report: dict,
    wall: float,
    by_algo: dict[str, list[float]],
    loads: tuple[float, float],
) -> None:
    rows = [{k: row.get(k) for k in ROW_KEYS} for row in report["rows"]]
    run = {
        "wall_s": round(wall, 1),
        "cpu_s": round(sum(v[1] for v in by_algo.values()), 1),
        "command": " ".join(["bench/tax_design_sweep.py", *sys.argv[1:]]),
        "load_before_after": [round(loads[0], 2), round(loads[1], 2)],
        "split_cpu_s": {k: round(v[1], 1) for k, v in by_algo.items()},
        "rows": rows,
        "acceptance": report["acceptance"],
    }
    if args.append:
        data = json.loads(Path(args.json).read_text())
        data.setdefault("extra", []).append(run)
    elif args.from_out and Path(args.json).exists():
        # re-summarised (e.g. with jobs of another run copied in): keep the timed run's timing
        old = json.loads(Path(args.json).read_text())
        timing = ("wall_s", "cpu_s", "command", "load_before_after", "split_cpu_s")
        data = {**run, **{k: old[k] for k in timing if k in old}}
    else:
        data = run
    atomic_write_json(args.json, data)


def _copy_images(out: str, img_dir: str, lams: list[float]) -> None:
    img = Path(img_dir)
    img.mkdir(parents=True, exist_ok=True)
    for lam in lams:
        for name, dst in (
            (f"welfare_lam{lam:g}.png", "welfare"),
            (f"rates_lam{lam:g}.png", "rates"),
        ):
            src = Path(out) / name
            if src.exists():
                shutil.copyfile(src, img / f"tax_{dst}_lam{lam:g}.png")


def main() -> None:
    args = _parser().parse_args()
    torch.set_num_threads(1)
    T = EconomyConfig().episode_length
    budgets = [episodes_from_steps(n, T, "--steps") for n in args.steps]
    settings = AlgoSettings(
        zo_c=args.zo_c,
        episodes=budgets[0],
        zo_episodes=episodes_from_steps(args.zo_steps, T, "--zo-steps"),
        zo_crn=args.zo_crn,
    )
    jobs = make_jobs(
        args.algos,
        args.lam,
        list(range(args.seeds)),
        args.iters,
        settings,
        [args.zo_c],
        budgets=budgets,
    )
    if args.by_lam:
        jobs = sorted(jobs, key=lambda j: j.beta)  # stable: longest first within a lambda
    if args.append and (args.json is None or not Path(args.json).exists()):
        raise SystemExit("--append needs an existing --json file")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    if args.from_out:
        found, summaries = discover(args.out)
        report = summarise(found, summaries, Path(args.out))
        wall = float("nan")
    else:
        report = run_sweep(jobs, args.out, workers=args.workers, progress=args.progress)
        wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    print(f"{len(jobs)} jobs, {args.seeds} seeds, {args.iters} iterations, {args.workers} workers")
    _print_report(report)
    by_algo = _cpu_split(report)
    cpu_time = sum(v[1] for v in by_algo.values())
    for algo, (w, c) in sorted(by_algo.items(), key=lambda kv: -kv[1][1]):
        print(f"  {algo:>20}: {w:6.0f}s job wall, {c:6.0f}s CPU ({100 * c / cpu_time:.0f}%)")
    print(
        f"wall time {wall:.0f}s ({wall / 60:.1f} min; target {TARGET_SECONDS / 60:.0f} min), "
        f"sum of job CPU times {cpu_time:.0f}s -> {cpu_time / args.workers / 60:.1f} min on "
        f"{args.workers} unshared cores"
    )
    print(f"load average before/after: {load0[0]:.2f} / {load1[0]:.2f}")
    if args.json:
        _write_json(args, report, wall, by_algo, (load0[0], load1[0]))
    if args.img:
        _copy_images(args.out, args.img, args.lam)


if __name__ == "__main__":
    main()
