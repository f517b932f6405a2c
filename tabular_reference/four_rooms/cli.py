"""CLI registration: ``python -m tabular_reference four-rooms ...`` and ``... table1 ...``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tabular_reference.four_rooms.algorithms import ALGORITHMS, RunConfig
from tabular_reference.four_rooms.dynamics import PRESETS, resolve_dynamics

ALGO_CHOICES = (*ALGORITHMS, "all")
ALL_ALGOS = ("hpgd", "amd", "zo")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _goal(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.strip("() ").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"goal must be 'row,col' e.g. 1,9; got {text!r}") from exc
    return (r, c)


def register(subparsers: Any) -> None:
    """Add the ``four-rooms`` and ``table1`` subcommands."""
    p = subparsers.add_parser(
        "four-rooms",
        help="run leader algorithms on Four-Rooms reward shaping (paper Table 1 setting)",
        description="Run HPGD / AMD / zero-order / naive leaders on Four-Rooms; writes metrics "
        "(CSV/JSON), final parameters (safetensors), config (JSON) and PNG plots.",
    )
    p.add_argument("--algo", default="hpgd", help=f"one of {', '.join(ALGO_CHOICES)}")
    p.add_argument("--lam", type=float, default=0.001, help="follower temperature (> 0)")
    p.add_argument("--beta", type=float, default=1.0, help="leader's budget cost (>= 0)")
    p.add_argument("--seeds", type=int, default=10, help="number of seeds (0..N-1)")
    p.add_argument("--iters", type=int, default=10_000, help="outer iterations")
    p.add_argument("--lr", type=_floats, default=[0.1], help="learning rate(s), comma-separated")
    p.add_argument("--c", type=_floats, default=[1.0], help="zero-order radius constant(s) c")
    p.add_argument("--steps-per-iter", type=int, default=10_000, help="env steps per iteration")
    p.add_argument("--n-envs", type=int, default=5, help="parallel envs (steps split evenly)")
    p.add_argument(
        "--goal",
        type=_goal,
        action="append",
        default=None,
        help="restrict contexts to this goal 'row,col' (repeatable); default both",
    )
    p.add_argument("--budget-mode", default="all", help="budget convention: all | collected")
    p.add_argument(
        "--dynamics",
        default="paper",
        help=f"slip model preset: {' | '.join(PRESETS)} (paper: 0.56/0.1467 everywhere; "
        "published: plans in 0.56, samples HPGD's trajectories from 0.67/0.11; notes: 0.67/0.11)",
    )
    p.add_argument(
        "--follower-solve",
        default="exact",
        help="exact (default) | published (the published code's truncated Q iteration)",
    )
    p.add_argument(
        "--estimator-backend",
        default="fused",
        help="fused (numba, default) | library (torch estimators, the earlier random stream)",
    )
    p.add_argument("--eval-last", type=int, default=1_000, help="metric window (iterations)")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file with RunConfig fields (overrides the flags it sets)",
    )
    p.add_argument("--out", type=Path, default=Path("results/four_rooms"), help="results dir")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=four_rooms_main)

    t = subparsers.add_parser(
        "table1",
        help="regenerate the paper's Table 1 (grid search + selected settings)",
        description="Grid over lam x beta x {HPGD, AMD, Zero-order} x lr (x c), 10 seeds, "
        "10,000 iterations; selects the best setting per cell and writes markdown + JSON.",
    )
    t.add_argument("--out", type=Path, default=Path("results/table1"), help="results dir")
    t.add_argument("--quick", action="store_true", help="smoke run (tiny sizes)")
    t.add_argument(
        "--selected-only",
        action="store_true",
        help="rerun only the selected settings (from --settings or OUT/selected.json)",
    )
    t.add_argument("--settings", type=Path, default=None, help="selected settings JSON/YAML")
    t.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    t.add_argument("--dynamics", default="paper", help=f"slip model preset: {' | '.join(PRESETS)}")
    t.add_argument(
        "--hpgd-algo",
        default="hpgd",
        help="HPGD estimator of the grid's HPGD column: hpgd (cross-fitted, default) | "
        "hpgd-published (the published every-visit estimator) | hpgd-cov | hpgd-paper",
    )
    t.add_argument(
        "--algos",
        default="hpgd,amd,zo",
        help="comma-separated subset of the grid's columns to run (hpgd, amd, zo)",
    )
    t.add_argument(
        "--lams", type=_floats, default=None, help="subset of lambda in {0.001, 0.003, 0.005}"
    )
    t.add_argument(
        "--follower-solve",
        default="exact",
        help="exact (soft-optimal, default) | published (the published code's Q iteration: "
        "from Q = 0, 100 improvements x 5 sweeps, goal with lam H)",
    )
    t.add_argument("--seeds", type=int, default=10)
    t.add_argument("--iters", type=int, default=10_000)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=table1_main)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML/JSON mapping of :class:`RunConfig` fields; unknown keys are errors."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"malformed config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"malformed config {path}: expected a mapping of fields, got {type(data).__name__}"
        )
    allowed = set(RunConfig.__dataclass_fields__)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"malformed config {path}: unknown keys {unknown}; allowed: {sorted(allowed)}"
        )
    return data


def four_rooms_main(args: argparse.Namespace) -> int:
    from tabular_reference.four_rooms.runner import run_four_rooms

    if args.algo not in ALGO_CHOICES:
        raise ValueError(
            f"unknown algorithm {args.algo!r}; choose one of {', '.join(ALGO_CHOICES)}"
        )
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    base: dict[str, Any] = dict(
        lam=args.lam,
        beta=args.beta,
        lrs=list(args.lr),
        seeds=list(range(args.seeds)),
        iters=args.iters,
        steps_per_iter=args.steps_per_iter,
        n_envs=args.n_envs,
        cs=list(args.c),
        budget_mode=args.budget_mode,
        eval_last=min(args.eval_last, args.iters),
        dynamics=args.dynamics,
        estimator_backend=args.estimator_backend,
        follower_solve=args.follower_solve,
    )
    if args.goal:
        base["goals"] = [tuple(g) for g in args.goal]
    if args.config is not None:
        base.update(load_config_file(args.config))
        if "goals" in base:
            base["goals"] = [tuple(g) for g in base["goals"]]
    algos = list(ALL_ALGOS) if args.algo == "all" else [args.algo]
    cfgs = [RunConfig(algo=a, **{k: v for k, v in base.items() if k != "algo"}) for a in algos]
    for c in cfgs:
        c.validate()
    summary = run_four_rooms(cfgs, args.out, progress=not args.no_progress)
    for algo, s in summary.items():
        print(
            f"{algo:9s} F(last {cfgs[0].eval_last}) = {s['mean']:.4f} ± {s['se']:.4f} "
            f"(lr={s['lr']}, c={s['c']}, {s['wall_s']:.1f} s)"
        )
    print(f"results written to {args.out}")
    return 0


def table1_main(args: argparse.Namespace) -> int:
    from tabular_reference.four_rooms.table1 import run_table1

    resolve_dynamics(args.dynamics)
    run_table1(
        args.out,
        quick=args.quick,
        selected_only=args.selected_only,
        settings=args.settings,
        workers=args.workers,
        seeds=args.seeds,
        iters=args.iters,
        progress=not args.no_progress,
        dynamics=args.dynamics,
        hpgd_algo=args.hpgd_algo,
        algos=[a.strip() for a in args.algos.split(",") if a.strip()],
        follower_solve=args.follower_solve,
        **({} if args.lams is None else {"lams": args.lams}),
    )
    return 0


__all__ = ["load_config_file", "np", "register"]
