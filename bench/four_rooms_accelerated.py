"""Plain vs accelerated HPGD with learning followers at equal follower compute (Four-Rooms).

Every method trains warm-started soft value-iteration followers
(:mod:`tabular_reference.four_rooms.learning`) and stops when each run has spent ``--budget``
follower sweeps in total (``docs/accelerated.md``):

* ``plain n=<small>`` -- HPGD, ``--small`` sweeps per outer iteration;
* ``plain n=<large>`` -- HPGD, ``--large`` sweeps per outer iteration;
* ``mlmc n0=.. J=..`` -- the multilevel estimate (``docs/theory.md`` §9), ``--base`` and each
  ``J`` of ``--levels``, ``p_j ∝ 2^-j`` (or ``--probs``), levels coupled as ``--coupling``.

References (not at equal compute): HPGD with the exact follower for as many outer iterations
as ``plain n=<small>`` takes, and the exact optimum ``F*`` of each seed: exact ascent
(``--star-lr``, ``--star-iters``) from the same initial logits. Metric: the exact ``F(x)`` with
soft-optimal followers, at the end and along the way (per run against its follower sweeps
spent), mean ± s.e. over ``--seeds``; ``gap = F* - F``.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python bench/four_rooms_accelerated.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from bench_common import four_rooms_parser

from align_cbrl.utils.io import atomic_write_text
from tabular_reference.common.plots import mean_se
from tabular_reference.four_rooms.accelerated import LearningConfig, run_learning
from tabular_reference.four_rooms.algorithms import RunConfig, run


def _cfg(args: argparse.Namespace, **kw) -> RunConfig:
    base = dict(
        algo="hpgd",
        beta=args.lam,
        budget_cost=args.beta,
        lrs=[args.lr],
        seeds=list(range(args.seeds)),
        steps_per_iter=args.steps,
        job_seed=args.job_seed,
    )
    return RunConfig(**(base | kw))


def optimum(args: argparse.Namespace) -> np.ndarray:
    """``F*`` per seed: exact ascent from the same initial logits."""
    cfg = _cfg(
        args,
        algo="exact",
        lrs=[args.star_lr],
        iters=args.star_iters,
        eval_every=args.star_iters,
        eval_last=1,
    )
    return run(cfg, progress=False).F[:, -1]


def on_grid(res, grid: np.ndarray) -> np.ndarray:
    """``F[R, G]``: per run the last recorded ``F`` with sweeps spent ``<= grid[g]``."""
    U, F = res.trace_updates, res.trace_F  # [E, R]
    out = np.full((U.shape[1], len(grid)), np.nan)
    for r in range(U.shape[1]):
        idx = np.searchsorted(U[:, r], grid, side="right") - 1
        out[r] = np.where(idx >= 0, F[np.maximum(idx, 0), r], np.nan)
    return out


def methods(args: argparse.Namespace) -> dict[str, LearningConfig]:
    probs = None if not args.probs else [float(p) for p in args.probs.split(",")]
    ev = args.eval_updates
    out = {
        f"plain n={args.small}": LearningConfig(
            follower_steps=args.small, budget=args.budget, eval_every=max(1, ev // args.small)
        ),
        f"plain n={args.large}": LearningConfig(
            follower_steps=args.large, budget=args.budget, eval_every=max(1, ev // args.large)
        ),
    }
    for J in [int(v) for v in args.levels.split(",")]:
        lc = LearningConfig(
            base_steps=args.base,
            max_level=J,
            probabilities=probs,
            coupling=args.coupling,
            budget=args.budget,
        )
        lc.eval_every = max(1, int(ev // lc.schedule().expected_steps()))
        out[lc.label] = lc
    return out


def summarise(name: str, res, F_star: np.ndarray, grid: np.ndarray) -> dict:
    m, se = mean_se(res.final_F)
    gm, gse = mean_se(F_star - res.final_F)
    curve_m, curve_se = mean_se(on_grid(res, grid)) if res.learning.budget else (None, None)
    row = {
        "method": name,
        "F": float(m),
        "F_se": float(se),
        "gap": float(gm),
        "gap_se": float(gse),
        "sweeps": float(res.updates.mean()),
        "iters": float(res.iters.mean()),
        "env_steps": float(np.mean(res.iters))
        * res.config.steps_per_iter
        * (1 + np.mean(res.levels) if res.levels else 1),
        "wall_s": res.wall_s,
        "final_F": res.final_F.tolist(),
    }
    if curve_m is not None:
        row["curve"] = {"sweeps": grid.tolist(), "F": curve_m.tolist(), "se": curve_se.tolist()}
    if res.levels:
        row["levels"] = np.bincount(res.levels).tolist()
    print(json.dumps({k: v for k, v in row.items() if k not in ("curve", "final_F")}))
    return row


def plot(rows: list[dict], F_star: np.ndarray, path: Path, title: str) -> None:
    from tabular_reference.common.plots import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6.5, 4.2), dpi=110)
    for r in rows:
        if "curve" not in r:
            continue
        x, y, s = (np.array(r["curve"][k]) for k in ("sweeps", "F", "se"))
        ax.plot(x, y, label=r["method"])
        ax.fill_between(x, y - s, y + s, alpha=0.2)
    ax.axhline(F_star.mean(), color="k", ls="--", label="F* (exact ascent)")
    ax.set_xlabel("follower sweeps spent per run")
    ax.set_ylabel("exact leader objective F")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = four_rooms_parser(__doc__.split("\n")[0])
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10_000, help="sampled steps per estimate")
    ap.add_argument("--budget", type=int, default=20_000, help="follower sweeps per run")
    ap.add_argument("--small", type=int, default=4)
    ap.add_argument("--large", type=int, default=64)
    ap.add_argument("--base", type=int, default=4)
    ap.add_argument("--levels", default="2,4")
    ap.add_argument("--probs", default="", help="p_1..p_J (one J only); default 2^-j")
    ap.add_argument("--coupling", default="episodes", help="episodes | stream | independent")
    ap.add_argument("--eval-updates", type=int, default=500)
    ap.add_argument("--star-lr", type=float, default=0.5)
    ap.add_argument("--star-iters", type=int, default=5000)
    ap.add_argument("--job-seed", type=int, default=0)
    ap.add_argument("--json", default="results/accelerated/four_rooms_equal_compute.json")
    ap.add_argument("--plot", default="docs/img/accelerated_equal_compute.png")
    args = ap.parse_args()
    t0 = time.perf_counter()
    F_star = optimum(args)
    print("F*", F_star.mean(), F_star)
    grid = np.linspace(0, args.budget, 41)
    rows = []
    for name, lc in methods(args).items():
        rows.append(summarise(name, run_learning(_cfg(args), lc), F_star, grid))
    ref = LearningConfig(eval_every=max(1, args.budget // args.small))
    ref_res = run_learning(_cfg(args, iters=args.budget // args.small), ref)
    rows.append(summarise("hpgd exact follower (reference)", ref_res, F_star, grid))
    out = {
        "args": vars(args),
        "F_star": F_star.tolist(),
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_text(args.json, json.dumps(out, indent=1))
    if args.plot:
        title = (
            f"Four-Rooms lam={args.lam} beta={args.beta} lr={args.lr}, "
            f"{args.seeds} seeds, budget {args.budget} sweeps"
        )
        plot(rows, F_star, Path(args.plot), title)
    print(f"wrote {args.json} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
