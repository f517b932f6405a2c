"""CLI registration: ``python -m tabular_reference four-rooms-learning ...`` (``docs/accelerated.md``).

HPGD on Four-Rooms with learning followers (warm-started soft value-iteration sweeps): plain
(``--follower-steps n``) or accelerated (``--base-steps n_0 --max-level J_max [--probs ...]``),
stopped at ``--budget`` follower sweeps per run. Flags in the paper's notation as ``four-rooms``
(``--lam`` follower temperature, ``--beta`` budget cost). Bad input (``--max-level 0``,
probabilities that do not sum to 1, ``--no-warm-start`` with a schedule) is a one-line error
before any training.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from tabular_reference.four_rooms.accelerated import (
    COUPLINGS,
    LEARNING_ALGORITHMS,
    LearningConfig,
    run_learning,
)
from tabular_reference.four_rooms.algorithms import RunConfig
from tabular_reference.four_rooms.cli import _floats

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``four-rooms-learning`` subcommand."""
    p = subparsers.add_parser(
        "four-rooms-learning",
        help="HPGD with learning followers, plain or accelerated (multilevel), on Four-Rooms",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--algo", default="hpgd", help=f"estimator: {' | '.join(LEARNING_ALGORITHMS)}")
    p.add_argument("--lam", type=float, default=0.005, help="follower temperature (> 0)")
    p.add_argument("--beta", type=float, default=1.0, help="leader's budget cost (>= 0)")
    p.add_argument("--lr", type=_floats, default=[0.1], help="learning rate(s), comma-separated")
    p.add_argument("--seeds", type=int, default=4, help="number of seeds (0..N-1)")
    p.add_argument("--steps-per-iter", type=int, default=10_000, help="sampled steps / estimate")
    p.add_argument("--dynamics", default="paper", help="slip model preset")
    p.add_argument("--follower-steps", type=int, default=None, help="plain HPGD: sweeps / iter")
    p.add_argument("--base-steps", type=int, default=None, help="multilevel: n_0")
    p.add_argument("--max-level", type=int, default=None, help="multilevel: J_max (>= 1)")
    p.add_argument("--probs", type=_floats, default=None, help="multilevel: p_1..p_J (sum 1)")
    p.add_argument("--coupling", default="episodes", help=f"levels: {' | '.join(COUPLINGS)}")
    p.add_argument("--no-warm-start", action="store_true", help="restart followers every call")
    p.add_argument("--budget", type=int, default=None, help="follower sweeps per run")
    p.add_argument("--iters", type=int, default=1000, help="outer iterations without a budget")
    p.add_argument("--eval-every", type=int, default=10, help="iterations between exact F")
    p.add_argument("--out", type=Path, default=Path("results/four_rooms_learning"))
    p.set_defaults(func=learning_main)


def learning_main(args: argparse.Namespace) -> int:
    learn = LearningConfig(
        follower_steps=args.follower_steps,
        warm_start=not args.no_warm_start,
        base_steps=args.base_steps,
        max_level=args.max_level,
        probabilities=args.probs,
        coupling=args.coupling,
        budget=args.budget,
        eval_every=args.eval_every,
    )
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    # the flags use the paper's notation (lam, beta), which from_dict translates
    flags = {k: getattr(args, k) for k in ("algo", "lam", "beta", "iters", "steps_per_iter")}
    seeds = list(range(args.seeds))
    cfg = RunConfig.from_dict(
        {**flags, "lrs": list(args.lr), "seeds": seeds, "dynamics": args.dynamics}
    )
    res = run_learning(cfg, learn)
    from tabular_reference.common.results import ResultsDir

    out = ResultsDir(args.out)
    out.write_config({"run": cfg.to_dict(), "learning": vars(learn)})
    out.write_json(
        "summary.json",
        {
            "label": learn.label,
            "final_F": res.final_F.tolist(),
            "updates": res.updates.tolist(),
            "iters": res.iters.tolist(),
            "levels": np.bincount(res.levels).tolist() if res.levels else [],
            "trace_iter": res.trace_iter.tolist(),
            "trace_updates": res.trace_updates.tolist(),
            "trace_F": res.trace_F.tolist(),
            "wall_s": res.wall_s,
        },
    )
    m = float(res.final_F.mean())
    se = float(res.final_F.std(ddof=1) / np.sqrt(len(res.final_F))) if len(res.final_F) > 1 else 0.0
    print(
        f"{learn.label}: final F = {m:.4f} ± {se:.4f} over {len(res.final_F)} runs, "
        f"{res.updates.mean():.0f} follower sweeps, {res.iters.mean():.0f} outer iterations"
    )
    print(f"results written to {args.out}")
    return 0
