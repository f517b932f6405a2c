"""``python -m tabular_reference tax-design``: train tax-design planners and plot the results.

Example: ``python -m tabular_reference tax-design --algo all --lam 0.1 0.2 0.3 --seeds 10
--iters 1000 --out runs/tax_design`` (``--algo all`` = hpgd, zero_order, zero_order_sampled, naive).
Defaults are the published configuration: ``--steps 60000`` per iteration for HPGD / naive,
``--zo-steps 60000`` per welfare estimate and ``--zo-c 50`` for zero_order_sampled. ``--lam`` is
the household temperature (the paper's lambda; ``beta`` in the code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabular_reference.tax_design.algorithms import ALGORITHMS, AlgoSettings, episodes_from_steps
from tabular_reference.tax_design.economy import EconomyConfig
from tabular_reference.tax_design.hypergradient import FOLLOWER_TRANSITION, FORMS, LEADER_Q

__all__ = ["main", "register"]

DEFAULT_ALGOS = ("hpgd", "zero_order", "zero_order_sampled", "naive")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``tax-design`` subcommand."""
    p = subparsers.add_parser(
        "tax-design",
        help="tax design (paper's second experiment) as an exact tabular economy",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--algo",
        nargs="+",
        default=["hpgd"],
        help=f"algorithms: {', '.join(ALGORITHMS)}, or 'all' (= {', '.join(DEFAULT_ALGOS)})",
    )
    p.add_argument(
        "--lam", type=float, nargs="+", default=[0.1], help="household temperatures (lambda)"
    )
    p.add_argument("--seeds", type=int, default=10, help="number of seeds (0 .. seeds-1)")
    p.add_argument("--iters", type=int, default=1000, help="outer iterations")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    p.add_argument("--max-norm", type=float, default=1.0, help="global-norm gradient clipping")
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[60_000],
        help="HPGD / naive budget: environment steps per outer iteration and run (200-step "
        "episodes, half per household type); several values run one job each (10000 = the "
        "earlier budget)",
    )
    p.add_argument("--form", choices=FORMS, default="mc", help="HPGD follower-term form")
    p.add_argument(
        "--leader-q",
        choices=LEADER_Q,
        default="table",
        help="leader values multiplying the follower term (core estimator's leader_q)",
    )
    p.add_argument(
        "--critic",
        choices=("learned", "exact"),
        default="learned",
        help="leader value table of --leader-q table (learned from past trajectories, or exact)",
    )
    p.add_argument(
        "--follower-transition",
        choices=FOLLOWER_TRANSITION,
        default="expected",
        help="income-tax term of the follower pseudo-reward: score (log P x V*) or its expectation",
    )
    p.add_argument(
        "--zo-c", type=float, nargs="+", default=[50.0], help="zero-order constant(s) c, u_t = c/t"
    )
    p.add_argument(
        "--zo-steps",
        type=int,
        default=60_000,
        help="zero_order_sampled: environment steps per welfare estimate (at x and at x + u z)",
    )
    p.add_argument(
        "--zo-crn",
        action="store_true",
        help="zero_order_sampled: common random numbers for the two welfare estimates",
    )
    p.add_argument("--bins", type=int, default=101, help="asset bins (odd, >= 11)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (1 thread each)")
    p.add_argument("--out", default="runs/tax_design", help="results directory")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--replot",
        action="store_true",
        help="only rebuild summary.json and the plots from the finished jobs under --out",
    )
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from tabular_reference.tax_design.sweep import discover, make_jobs, run_sweep, summarise

    if args.replot:
        jobs, summaries = discover(args.out)
        report = summarise(jobs, summaries, Path(args.out))
        _print_report(report)
        return 0
    algos = list(DEFAULT_ALGOS) if args.algo == ["all"] else list(args.algo)
    if "all" in algos:
        raise ValueError("'all' cannot be combined with other algorithm names")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1 (number of seeds), got {args.seeds}")
    if args.workers < 1:
        raise ValueError(f"workers must be >= 1 (--workers), got {args.workers}")
    T = EconomyConfig().episode_length
    budgets = [episodes_from_steps(n, T, "--steps") for n in args.steps]
    settings = AlgoSettings(
        lr=args.lr,
        max_norm=args.max_norm,
        episodes=budgets[0],
        zo_episodes=episodes_from_steps(args.zo_steps, T, "--zo-steps"),
        zo_crn=args.zo_crn,
        form=args.form,
        leader_q=args.leader_q,
        critic=args.critic,
        follower_transition=args.follower_transition,
        zo_c=args.zo_c[0],
    )
    jobs = make_jobs(
        algos,
        args.lam,
        list(range(args.seeds)),
        args.iters,
        settings,
        args.zo_c,
        args.bins,
        budgets=budgets,
    )
    report = run_sweep(jobs, args.out, workers=args.workers, progress=not args.no_progress)
    _print_report(report)
    print(f"results: {args.out}  ({report['wall_seconds']:.0f}s)")
    return 0


def _print_report(report: dict) -> None:
    for j in report["jobs"]:
        rates = ", ".join(f"{k}={v:.3f}" for k, v in j["final_rates_mean"].items())
        print(
            f"lam={j['lam']:g} {j['label']:>30}: F {j['initial_welfare']:.3f} -> "
            f"{j['final_welfare_mean']:.3f} ± {j['final_welfare_se']:.3f}  [{rates}]  "
            f"{j['seconds']:.0f}s"
        )
    for r in report["rows"]:
        if r["reference"] is None or r["algo"] == r["reference"]:
            continue
        print(
            f"lam={r['lam']:g} {r['algo']:>30}: reaches {r['reference']}'s final welfare "
            f"{r['reference_final']:.3f} at iteration {_never(r['iters_to_zo_sampled_final'])} "
            f"(mean over the {r['n_seeds_reaching']}/{r['n_seeds']} seeds that do; seed-mean "
            f"curve: {_never(r['mean_curve_reach'])}); half gain at "
            f"{_never(r['half_gain_iteration'])}"
        )
    for a in report["acceptance"]:
        print(acceptance_line(a))


def _never(iteration: int | float | None) -> str:
    """An iteration at which a level is reached, or "never" (``None``)."""
    return "never" if iteration is None else f"{iteration:g}"


def acceptance_line(a: dict) -> str:
    """One acceptance entry of a sweep report: when HPGD reaches the reference's final welfare
    and how far it ends above the naive baseline; entries that do not apply say so."""
    if a["reach_fraction"] is None:
        reach = (
            f"never reaches {a['reference']}'s final welfare" if a["reference"] else "no reference"
        )
    else:
        reach = f"reach fraction {a['reach_fraction']:.3f} ({a['n_seeds_reaching']} seeds)"
    line = f"lam={a['lam']:g}: {a['hpgd']} {reach}"
    if a["naive"] is not None:
        diff, in_se = a["hpgd_minus_naive"], a["hpgd_minus_naive_in_se"]
        se = "n/a" if in_se is None else f"{in_se:.2f}"
        line += f"; minus {a['naive']}: {diff:.4f} = {se} s.e."
    return line


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tabular_reference.tax_design")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["tax-design", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_standalone())
