"""Runtime of the full tax-design sweep (target: <= 15 minutes on the 2-core machine).

Runs hpgd, zero-order (exact values), zero-order-sampled (Monte-Carlo values from the same number
of environment steps per iteration as HPGD) and naive for lam in {0.1, 0.2, 0.3}, 10 seeds, 1,000 outer iterations
(seeds batched per job, a 2-process pool with one torch thread each), then prints the wall time,
the per-job times, the final welfare and tax rates, and the HPGD vs zero-order iteration ratio.

Run: ``nice -n 10 .venv/bin/python bench/tax_design_sweep.py [--out runs/tax_design_bench]``
(``--iters``/``--seeds`` for a shorter check).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

from tabular_reference.tax_design.algorithms import AlgoSettings
from tabular_reference.tax_design.sweep import make_jobs, run_sweep

TARGET_SECONDS = 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/tax_design_bench")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--lam", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--zo-c", type=float, default=0.5)
    parser.add_argument(
        "--algos", nargs="+", default=["hpgd", "zero-order", "zero-order-sampled", "naive"]
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = AlgoSettings(zo_c=args.zo_c)
    jobs = make_jobs(
        args.algos,
        args.lam,
        list(range(args.seeds)),
        args.iters,
        settings,
        [args.zo_c],
    )
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    report = run_sweep(jobs, args.out, workers=args.workers, progress=args.progress)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    print(f"{len(jobs)} jobs, {args.seeds} seeds, {args.iters} iterations, {args.workers} workers")
    for j in sorted(report["jobs"], key=lambda j: (j["lam"], j["label"])):
        r = j["final_rates_mean"]
        print(
            f"  lam={j['lam']:g} {j['label']:>24}: {j['seconds']:6.0f}s  F {j['initial_welfare']:.3f}"
            f" -> {j['final_welfare_mean']:.3f} ± {j['final_welfare_se']:.3f}  "
            f"tau={r['tau']:.3f} v=({r['v1']:.3f}, {r['v2']:.3f}, {r['v3']:.3f})"
        )
    for c in report["comparisons"]:
        print(
            f"  lam={c['lam']:g}: {c['algo']} reaches {c['zero_order']}'s final welfare "
            f"{c['zero_order_final_welfare']:.3f} at iteration {c['iterations_to_reach']}"
            f" -> ratio {c['ratio']}"
        )
    cpu = sum(j["seconds"] for j in report["jobs"])
    cpu_time = sum(j.get("cpu_seconds", float("nan")) for j in report["jobs"])
    print(
        f"wall time {wall:.0f}s ({wall / 60:.1f} min; target {TARGET_SECONDS / 60:.0f} min), "
        f"sum of job wall times {cpu:.0f}s"
    )
    print(
        f"sum of job CPU times {cpu_time:.0f}s -> an unshared 2-core machine needs about "
        f"{cpu_time / args.workers / 60:.1f} min"
    )
    print(f"load average before/after: {load0[0]:.2f} / {load1[0]:.2f} (shared 2-core machine)")


if __name__ == "__main__":
    main()
