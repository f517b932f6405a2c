"""Rollout-budget sweep (``docs/theory.md`` §4, the small-budget weakness of the mc form): final exact F of HPGD with the
paper's Monte-Carlo form (``hpgd``), the covariance form with a leader-side EMA baseline
(``hpgd-cov``) and the naive direct-term estimator (``naive``), for 100, 1,000 and 10,000
environment steps per outer iteration; single goal (1,9), beta = 5, each lam.

Budgets below 2,000 steps use one environment (so that episodes can reach the goal); 10,000
steps use 5 x 2,000 as in Table 1. Metric: exact F averaged over the last ``--eval-last``
iterations, mean ± s.e. over seeds.

Run: ``nice -n 10 .venv/bin/python bench/four_rooms_budget.py [--iters 3000 --seeds 5]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from tabular_reference.common.plots import mean_se
from tabular_reference.four_rooms.algorithms import RunConfig, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--eval-last", type=int, default=500)
    ap.add_argument("--budgets", default="100,1000,10000")
    ap.add_argument("--lams", default="0.001,0.003,0.005")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    ap.add_argument(
        "--dynamics",
        default="paper",
        help="slip preset: paper | published | notes (earlier results)",
    )
    ap.add_argument(
        "--estimator-backend",
        default="fused",
        help="fused | library (the random stream of the measurements dated 2026-11-21)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    budgets = [int(b) for b in args.budgets.split(",")]
    lams = [float(v) for v in args.lams.split(",")]
    forms = ("hpgd", "hpgd-cov", "naive")
    out = {}
    t0 = time.perf_counter()
    print(
        f"goal (1,9), beta=5, lr={args.lr}, {args.iters} iterations, {args.seeds} seeds, "
        f"metric = exact F over the last {args.eval_last} iterations"
    )
    header = f"{'lam':>6} {'steps':>6} " + " ".join(f"{f:>17}" for f in forms)
    print(header)
    for lam in lams:
        for T in budgets:
            cells = []
            for form in forms:
                cfg = RunConfig(
                    algo=form,
                    beta=lam,
                    budget_cost=5.0,
                    lrs=[args.lr],
                    seeds=list(range(args.seeds)),
                    iters=args.iters,
                    steps_per_iter=T,
                    n_envs=5 if T >= 10_000 else 1,
                    goals=[(1, 9)],
                    eval_last=args.eval_last,
                    job_seed=int(lam * 1e6) * 100_000 + T + forms.index(form),
                    dynamics=args.dynamics,
                    estimator_backend=args.estimator_backend,
                )
                res = run(cfg, progress=False)
                m, se = mean_se(res.F_last)
                out[f"{lam:g}/{T}/{form}"] = {
                    "mean": float(m),
                    "se": float(se),
                    "wall_s": res.wall_s,
                    "per_seed": res.F_last.tolist(),
                }
                cells.append(f"{m:8.3f} ± {se:6.3f}")
            print(f"{lam:6g} {T:6d} " + " ".join(f"{c:>17}" for c in cells), flush=True)
    print(f"total wall {time.perf_counter() - t0:.0f} s")
    if args.json:
        from align_cbrl.utils.io import atomic_write_json

        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
