"""``python -m tabular_reference validate --estimator NAME|module:function [--env ...]``
(``docs/validate.md``)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from tabular_reference.validate.four_rooms import FourRoomsHarness
from tabular_reference.validate.runner import Sizes, measure
from tabular_reference.validate.tax_design import TaxHarness

ENVS = {"four-rooms": FourRoomsHarness, "tax-design": TaxHarness}
# default sizes per harness: (estimates M, outer-loop seeds); measured run times in docs/validate.md
DEFAULT_SIZES = {"four-rooms": (200, 5), "tax-design": (60, 3)}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err


def _goals(text: str) -> tuple[tuple[int, int], ...]:
    pairs = re.findall(r"(\d+)\s*,\s*(\d+)", text)
    if not pairs:
        raise argparse.ArgumentTypeError(f"expected goals like '1,9' or '1,9;11,11', got {text!r}")
    return tuple((int(a), int(b)) for a, b in pairs)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="an estimator vs the exact hypergradient and HPGD (bias, variance, outer loop)",
        description=__doc__,
    )
    p.add_argument("--estimator", required=True, help="registered name or 'module:function'")
    p.add_argument("--env", choices=list(ENVS), default="four-rooms")
    p.add_argument("--preset", default="default", help="four-rooms: default | bchg")
    p.add_argument("--reference", default=None, help="comma-separated reference estimators")
    p.add_argument("--estimates", type=int, default=None, help="M estimates per measurement")
    p.add_argument("--seeds", type=int, default=None, help="outer-loop seeds")
    p.add_argument("--iters", type=int, default=None, help="outer-loop iterations (0: skip)")
    p.add_argument("--warmup", type=int, default=5, help="calls before measuring (stateful)")
    p.add_argument("--steps", type=int, default=None, help="sampled steps per estimate")
    p.add_argument("--steps-grid", type=_ints, default=None, help="budgets of the variance curve")
    p.add_argument("--lam", type=float, default=None, help="follower temperature")
    p.add_argument("--beta", type=float, default=None, help="four-rooms budget cost")
    p.add_argument("--goal", type=_goals, default=None, help="four-rooms goals, e.g. '1,9'")
    p.add_argument("--dynamics", default=None, help="four-rooms: paper | published | notes")
    p.add_argument("--n-envs", type=int, default=None, help="four-rooms environments per run")
    p.add_argument("--lr", type=float, default=None, help="outer-loop learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results directory (default runs/validate/...)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    # the flags' paper notation (--lam temperature, --beta budget cost) -> the settings' names
    overrides = {
        "steps": args.steps,
        "steps_grid": args.steps_grid,
        "beta": args.lam,
        "lr": args.lr,
    }
    if args.env == "four-rooms":
        overrides.update(
            budget_cost=args.beta, goals=args.goal, dynamics=args.dynamics, n_envs=args.n_envs
        )
    elif any(v is not None for v in (args.beta, args.goal, args.dynamics, args.n_envs)):
        raise ValueError("--beta, --goal, --dynamics and --n-envs apply to --env four-rooms only")
    harness = ENVS[args.env].from_preset(args.preset, **overrides)
    m, seeds = DEFAULT_SIZES[args.env]
    iters = harness.s.iters if args.iters is None else args.iters
    sizes = Sizes(args.estimates or m, args.warmup, args.seeds or seeds, iters, args.seed)
    refs = harness.s.references if args.reference is None else args.reference.split(",")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.estimator)
    out = args.out or f"runs/validate/{args.env}_{args.preset}_{slug}"
    res = measure(harness, args.estimator, [r for r in refs if r], sizes, out, args.progress)
    print(
        f"wrote {out}/validate.json and {out}/validate.png ({res['wall_s']:.1f} s wall, "
        f"{res['cpu_s']:.1f} s CPU)"
    )
    return 0
