"""CLI registration: ``python -m tabular_reference four-rooms ...`` and ``... table1 ...``.

The flags use the paper's notation: ``--lam`` is the follower temperature (``beta`` in the code)
and ``--beta`` the leader's budget cost (``budget_cost`` in the code); ``--algo`` takes the
algorithm names of :mod:`align_cbrl.estimators.vocabulary`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from align_cbrl.estimators.vocabulary import check_algorithm
from align_cbrl.utils.io import remove_directory
from tabular_reference.common.config_files import read_mapping
from tabular_reference.four_rooms.algorithms import ALGORITHMS, RunConfig
from tabular_reference.four_rooms.dynamics import PRESETS, resolve_dynamics

__all__ = ["load_config_file", "register"]

ALGO_CHOICES = (*ALGORITHMS, "all")
ALL_ALGOS = ("hpgd", "exact", "zero_order")
_DYNAMICS_HELP = f"slip model preset: {' | '.join(PRESETS)}"
_SOLVE_HELP = "exact (soft-optimal, default) | published (the published code's Q iteration)"
_BACKEND_HELP = "fused (numba, default) | library (torch estimators, the earlier random stream)"


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


_FOUR_ROOMS = dict(
    help="run leader algorithms on Four-Rooms reward shaping (paper Table 1 setting)",
    description="Run HPGD / exact ascent (AMD) / zero-order / naive leaders on Four-Rooms; "
    "writes metrics (CSV/JSON), final parameters (safetensors), config (JSON) and PNG plots.",
)
# (flag, type, default, help) of the run settings
_RUN_FLAGS: tuple[tuple[str, Any, Any, str], ...] = (
    ("--lam", float, 0.001, "follower temperature (> 0)"),
    ("--beta", float, 1.0, "leader's budget cost (>= 0)"),
    ("--seeds", int, 10, "number of seeds (0..N-1)"),
    ("--iters", int, 10_000, "outer iterations"),
    ("--lr", _floats, [0.1], "learning rate(s), comma-separated"),
    ("--c", _floats, [1.0], "zero-order radius constant(s) c"),
    ("--steps-per-iter", int, 10_000, "env steps per iteration"),
    ("--n-envs", int, 5, "parallel envs (steps split evenly)"),
    ("--eval-last", int, 1_000, "metric window (iterations)"),
    ("--budget-mode", str, "all", "budget convention: all | collected"),
    ("--follower-solve", str, "exact", _SOLVE_HELP),
    ("--estimator-backend", str, "fused", _BACKEND_HELP),
)


def _add_four_rooms(subparsers: Any) -> None:
    p = subparsers.add_parser("four-rooms", **_FOUR_ROOMS)
    p.add_argument("--algo", default="hpgd", help=f"one of {', '.join(ALGO_CHOICES)}")
    for flag, kind, default, text in _RUN_FLAGS:
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument(
        "--goal",
        type=_goal,
        action="append",
        default=None,
        help="restrict contexts to this goal 'row,col' (repeatable); default both",
    )
    p.add_argument(
        "--dynamics",
        default="paper",
        help=f"{_DYNAMICS_HELP} (paper: 0.56/0.1467 everywhere; published: plans in 0.56, "
        "samples HPGD's trajectories from 0.67/0.11; notes: 0.67/0.11)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file with RunConfig fields in the flags' notation (lam, beta, ...); "
        "overrides the flags it sets",
    )
    p.add_argument("--out", type=Path, default=Path("results/four_rooms"), help="results dir")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out directory that already holds files (refused otherwise, so an "
        "old run's files never mix with the new ones)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=four_rooms_main)


_TABLE1 = dict(
    help="regenerate the paper's Table 1 (grid search + selected settings)",
    description="Grid over lam x beta x {HPGD, AMD, Zero-order} x lr (x c), 10 seeds, "
    "10,000 iterations; selects the best setting per cell and writes markdown + JSON.",
)


def _add_table1(subparsers: Any) -> None:
    t = subparsers.add_parser("table1", **_TABLE1)
    t.add_argument("--out", type=Path, default=Path("results/table1"), help="results dir")
    t.add_argument("--quick", action="store_true", help="smoke run (tiny sizes)")
    t.add_argument(
        "--selected-only",
        action="store_true",
        help="rerun only the selected settings (from --settings or OUT/selected.json)",
    )
    t.add_argument("--settings", type=Path, default=None, help="selected settings JSON/YAML")
    t.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    t.add_argument("--dynamics", default="paper", help=_DYNAMICS_HELP)
    t.add_argument(
        "--hpgd-algo",
        default="hpgd",
        help="HPGD estimator of the grid's HPGD column: hpgd (cross-fitted, default) | "
        "hpgd-published (the published every-visit estimator) | hpgd-cov | hpgd-paper",
    )
    t.add_argument(
        "--algos",
        default="hpgd,amd,zo",
        help="comma-separated subset of the grid's columns to run: hpgd, amd (= exact), "
        "zo (= zero_order)",
    )
    t.add_argument(
        "--lams", type=_floats, default=None, help="subset of lambda in {0.001, 0.003, 0.005}"
    )
    t.add_argument("--follower-solve", default="exact", help=_SOLVE_HELP)
    t.add_argument("--seeds", type=int, default=10)
    t.add_argument("--iters", type=int, default=10_000)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=table1_main)


def register(subparsers: Any) -> None:
    """Add the ``four-rooms`` and ``table1`` subcommands."""
    _add_four_rooms(subparsers)
    _add_table1(subparsers)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML/JSON mapping of :class:`RunConfig` fields in the flags' notation
    (:meth:`RunConfig.from_dict`); unknown keys are errors."""
    data = read_mapping(path, "config file")
    unknown = sorted(set(data) - set(RunConfig.edge_keys()))
    if unknown:
        raise ValueError(
            f"malformed config {path}: unknown keys {unknown}; allowed: {RunConfig.edge_keys()}"
        )
    return data


def _base_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings of the flags and ``--config``, in the flags' notation."""
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
        base["goals"] = args.goal
    if args.config is not None:
        base.update(load_config_file(args.config))
    base.pop("algo", None)
    return base


def _claim_out(out: Path, overwrite: bool) -> None:
    """``--out`` must be new or empty, or be replaced whole with ``--overwrite``: the run's files
    are not all the same for every ``--algo``, so writing into an old run would mix them."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ValueError(
            f"--out {out} already holds files (an earlier run?); the new results would mix with "
            "them: pass --overwrite to replace the directory, or choose another --out"
        )
    remove_directory(out)


def four_rooms_main(args: argparse.Namespace) -> int:
    from tabular_reference.four_rooms.runner import run_four_rooms

    algo = check_algorithm(args.algo, ALGO_CHOICES)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    base = _base_settings(args)
    algos = list(ALL_ALGOS) if algo == "all" else [algo]
    cfgs = [RunConfig.from_dict({"algo": a, **base}) for a in algos]
    for c in cfgs:
        c.validate()
    _claim_out(args.out, args.overwrite)
    summary = run_four_rooms(cfgs, args.out, progress=not args.no_progress)
    for name, s in summary.items():
        print(
            f"{name:10s} F(last {cfgs[0].eval_last}) = {s['mean']:.4f} ± {s['se']:.4f} "
            f"(lr={s['lr']}, c={s['c']}, {s['wall_s']:.1f} s)"
        )
    print(f"results written to {args.out}")
    return 0


def table1_main(args: argparse.Namespace) -> int:
    from tabular_reference.four_rooms.table1 import COLUMN_ALGOS, run_table1

    column_of = {algo: column for column, algo in COLUMN_ALGOS.items()}  # exact -> amd, ...

    resolve_dynamics(args.dynamics)
    same_name = ("quick", "selected_only", "settings", "workers", "seeds", "iters", "dynamics")
    options = {k: getattr(args, k) for k in (*same_name, "hpgd_algo", "follower_solve")}
    if args.lams is not None:
        options["temperatures"] = args.lams
    run_table1(
        args.out,
        progress=not args.no_progress,
        algos=[column_of.get(a.strip(), a.strip()) for a in args.algos.split(",") if a.strip()],
        **options,
    )
    return 0
