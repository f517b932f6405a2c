"""Does the goal's value explain the paper's lambda = 0.005 cells? Exact ascent under three goal
conventions, through the dense oracle (tabular_reference.mdp, implicit differentiation).

In this project's model the goal is terminal with follower value 1 (the goal cell's own penalty
is never collected). The published code's reward matrix gives the goal ``1 + pen(goal)`` (the
incentive of the goal cell is collected there) and its soft values add ``beta H(pi(.|goal))`` =
``beta log 4`` at the goal (``beta``: the follower temperature, the paper's lambda). Conventions compared (``--modes``):

* ``ours``:      goal worth ``1``;
* ``entropy``:   goal worth ``1 + beta log 4``;
* ``published``: goal worth ``1 + pen(goal) + beta log 4``, so the leader can make finishing
  unattractive by putting penalty on the goal cell itself.

For each (lambda, beta) cell and convention: exact gradient ascent (SGD, global-norm clipping
at 1, lr 0.5, both contexts in expectation, the paper's init ``N(0, 0.01^2)``, seed 0), planning
and evaluation in the ``paper`` preset (0.56 / 0.1467); metric = exact F over the last
``--eval-last`` iterations. The autograd gradient is checked against central differences first.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/four_rooms_goal_convention.py [--iters 10000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from tqdm import tqdm

from tabular_reference import mdp
from tabular_reference.four_rooms.dynamics import resolve_dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.env import GAMMA
from tabular_reference.four_rooms.table1 import PAPER

D = torch.float64
MODES = ("ours", "entropy", "published")


def objective(
    x: torch.Tensor, beta: float, budget_cost: float, mode: str, P: torch.Tensor
) -> torch.Tensor:
    """Exact ``F(x)`` (mean over the two goals) with the goal convention ``mode``; ``beta`` is
    the follower temperature (the paper's lambda), ``budget_cost`` the paper's beta."""
    S = E.n_cells
    sig = torch.softmax(x, 0)
    pen = -0.2 * sig[:S]
    budget = 0.2 * (1 - sig[S])
    mu0 = torch.zeros(S, dtype=D)
    mu0[E.start] = 1.0
    total = torch.zeros((), dtype=D)
    for goal in E.goals:
        term = torch.zeros(S, dtype=torch.bool)
        term[goal] = True
        rg = torch.ones((), dtype=D)
        if mode in ("entropy", "published"):
            rg = rg + beta * np.log(4.0)
        if mode == "published":
            rg = rg + pen[goal]
        r = torch.where(term[:, None], rg.expand(S, 4), pen[:, None].expand(S, 4))
        rb = torch.zeros(S, 4, dtype=D)
        rb[E.target] = 1.0
        rb = torch.where(term[:, None], (-budget_cost * budget).expand(S, 4), rb)
        pi = mdp.soft_best_response(mdp.SoftMDP(P, r, GAMMA, beta, term, tol=1e-11))
        total = total + mdp.leader_value(P, pi, rb, GAMMA, mu0, term)
    return total / len(E.goals)


def check_gradient(P: torch.Tensor) -> float:
    """Relative error of autograd vs central differences along a random direction."""
    rng = np.random.default_rng(3)
    x0 = rng.normal(0, 0.5, 105)
    d = rng.normal(size=105)
    x = torch.tensor(x0, requires_grad=True)
    (g,) = torch.autograd.grad(objective(x, 0.005, 1.0, "published", P), x)
    h = 1e-5
    fp = float(objective(torch.tensor(x0 + h * d), 0.005, 1.0, "published", P))
    fm = float(objective(torch.tensor(x0 - h * d), 0.005, 1.0, "published", P))
    fd = (fp - fm) / (2 * h)
    return abs(float(g.numpy() @ d) - fd) / abs(fd)


def ascend(beta, budget_cost, mode, P, iters, lr, eval_last, progress) -> dict:
    x = torch.tensor(np.random.default_rng(0).normal(0.0, 0.01, 105))
    hist = []
    for _t in tqdm(
        range(iters),
        desc=f"{mode} lam={beta} beta={budget_cost}",
        disable=not progress,
        leave=False,
        mininterval=5,
    ):
        xr = x.clone().requires_grad_(True)
        F = objective(xr, beta, budget_cost, mode, P)
        (g,) = torch.autograd.grad(F, xr)
        hist.append(float(F.detach()))
        n = float(g.norm())
        x = x + lr * g * min(1.0, 1.0 / max(n, 1e-300))
    hist.append(float(objective(x, beta, budget_cost, mode, P)))
    sig = torch.softmax(x, 0)
    return {
        "F_last": float(np.mean(hist[-eval_last:])),
        "goal_penalty_share": [float(sig[g]) for g in E.goals],
        "final_x": x.tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=10_000)
    ap.add_argument("--eval-last", type=int, default=1_000)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--cells", default="0.005:1,0.005:3,0.005:5", help="lam:beta,...")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default="results/four_rooms_goal_convention.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        raise SystemExit(f"--modes must be a subset of {MODES}")
    cells = [tuple(float(v) for v in c.split(":")) for c in args.cells.split(",") if c]
    P = torch.tensor(E.dense_transitions(resolve_dynamics("paper").plan))
    err = check_gradient(P)
    print(f"autograd vs central differences (published goal, lam 0.005): rel. error {err:.2e}")
    rows = []
    t0 = time.perf_counter()
    print("| lambda | beta | " + " | ".join(modes) + " | paper HPGD / AMD / ZO |")
    print("|---|---|" + "---|" * len(modes) + "---|")
    for lam, beta in cells:
        res = {}
        for m in modes:
            res[m] = ascend(
                lam, beta, m, P, args.iters, args.lr, args.eval_last, not args.no_progress
            )
            rows.append({"lam": lam, "beta": beta, "mode": m, **res[m]})
        p = PAPER[(lam, beta)]
        print(
            f"| {lam:g} | {beta:g} | "
            + " | ".join(f"{res[m]['F_last']:.3f}" for m in modes)
            + f" | {p['hpgd'][0]:.2f} / {p['amd'][0]:.2f} / {p['zo'][0]:.2f} |"
        )
    wall = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "grad_check_rel_error": err,
                "wall_s": wall,
                "iters": args.iters,
                "lr": args.lr,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"{wall:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
