"""Bias of HPGD vs the follower's training budget ``n`` on Four-Rooms (``docs/accelerated.md``).

Fixed leader logits ``x``: the iterate after ``--x-iters`` steps of exact ascent (algorithm
``exact``, lr ``--x-lr``, seed 0) from the paper's initialisation. Fixed follower start, per
context: ``cold`` (``V = 0``) or ``lagged`` (the exact soft values at the iterate ``--lag``
exact-ascent steps earlier: a warm-started follower that has not caught up). For every ``n``
the follower trains ``n`` soft value-iteration sweeps from that start (deterministic), then:

* ``hpgd``: the mean of ``--m`` HPGD estimates (``mc`` / cross-fitted, ``--steps`` sampled steps
  each, both contexts, averaged: an estimate of ``dF/dx``) from its softmax policy;
* ``plug-in``: the (HG) formula evaluated exactly at the learned policy (no sampling noise);

and the multilevel estimator (``docs/theory.md`` §9) with ``n_0 = --base``, ``J_max`` in
``--levels``: the mean of ``--m-ml`` draws, each from the same follower start. Against the exact
``dF/dx`` (adjoint): relative bias ``||mean - exact|| / ||exact||``, its noise level
``sqrt(tr Cov / M) / ||exact||`` (the s.e. of the mean in the same units), the cosine, the
per-estimate spread ``sqrt(E||g - mean||^2) / ||exact||`` and the follower sweeps per estimate.
Last, the coupling of the levels: ``sqrt(E||g_k - g_{k-1}||^2) / ||exact||`` per level for the
three couplings of ``multilevel_hypergradient`` (``--m-c`` draws each).

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python bench/four_rooms_learning_bias.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from bench_common import four_rooms_parser, multilevel_row, run_starts

from align_cbrl.estimators.multilevel import MultilevelSchedule
from tabular_reference.common.bias import bias_summary, point_bias
from tabular_reference.four_rooms import hpgd_kernels
from tabular_reference.four_rooms.accelerated import multilevel_hypergradient
from tabular_reference.four_rooms.algorithms import RunConfig
from tabular_reference.four_rooms.coupled_sampling import coupled_hypergradient
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.hypergradient import exact_hypergradient, hypergradient
from tabular_reference.four_rooms.leader import logits_gradient
from tabular_reference.four_rooms.learning import LearningFollower
from tabular_reference.four_rooms.solver import FollowerSolver

GOALS = np.array(E.goals)
PLOT_LABELS = {
    "who": "follower",
    "plug_in": "(HG) at learned policy",
    "exact": "exact follower",
    "title": "follower start: ",
}


def leader_iterates(cfg: RunConfig, iters: int, lr: float) -> list[np.ndarray]:
    """Exact ascent from seed 0's initial logits: the iterates ``x_0 .. x_iters``."""
    from tabular_reference.common.optim import sgd_ascent

    solver = FollowerSolver(1, GOALS, cfg)
    x = np.random.default_rng(0).normal(0.0, cfg.init_std, (1, E.n_params))
    out = [x]
    for _ in range(iters):
        g = sum(exact_hypergradient(solver, x, np.array([k]))[1] for k in range(2)) / 2
        x = np.asarray(sgd_ascent(x, g, lr, cfg.max_norm))
        out.append(x)
    return out


def start_tables(cfg: RunConfig, x_lag: np.ndarray, kind: str) -> list[np.ndarray]:
    """Per context the follower's starting table ``V[1, S]``."""
    if kind == "cold":
        return [np.zeros((1, E.n_cells)) for _ in range(2)]
    solver = FollowerSolver(1, GOALS, cfg)
    return [solver.solve(x_lag, np.array([k]), False).V.copy() for k in range(2)]


def _follower(cfg: RunConfig, V0: list[np.ndarray]) -> LearningFollower:
    f = LearningFollower(1, GOALS, cfg)
    for k in range(2):
        f.set_tables(np.array([k]), V0[k])
    return f


def plain_estimates(cfg, x, V0, n, m, seed) -> tuple[np.ndarray, np.ndarray]:
    """``(M HPGD estimates [m, 105], plug-in gradient [105])`` after ``n`` sweeps."""
    f = _follower(cfg, V0)
    sols = []
    for k in range(2):
        f.advance(x, np.array([k]), n)
        sols.append(f.solution(x, np.array([k]), want_grad=True))
    plug = sum(
        logits_gradient(
            s.sigma, s.grad_penalty, s.grad_goal_value, cfg.budget_cost, s.goal, cfg.budget_mode
        )[0]
        for s in sols
    )
    state = hpgd_kernels.seed_state(seed)[None].copy()
    out = np.empty((m, E.n_params))
    for i in range(m):
        out[i] = (
            sum(hypergradient(s, cfg, "mc", None, None, "crossfit", state)[0] for s in sols) / 2
        )
    return out, plug / 2


def multilevel_estimates(cfg, x, V0, sched, m, seed) -> tuple[np.ndarray, float]:
    """``m`` multilevel draws (both contexts, averaged) from the same start; mean sweeps/draw."""
    state = hpgd_kernels.seed_state(seed)
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((m, E.n_params))
    steps = 0
    for i in range(m):
        g = np.zeros(E.n_params)
        for k in range(2):
            f = _follower(cfg, V0)
            est = multilevel_hypergradient(f, x, np.array([k]), 0, cfg, sched, state, generator=gen)
            g += est.gradient.numpy() / 2
            steps += est.follower_steps
        out[i] = g
    return out, steps / (2 * m)


def level_differences(cfg, x, V0, base, max_level, m, seed, coupling: str) -> list[float]:
    """``sqrt(E||g_k - g_{k-1}||^2)`` for ``k = 1..max_level`` over ``m`` draws (both contexts
    averaged), levels from one continued follower run, coupled as ``multilevel_hypergradient``
    couples them (``episodes`` / ``stream`` / ``independent``)."""
    state = hpgd_kernels.seed_state(seed)[None].copy()
    sq = np.zeros(max_level)
    for _ in range(m):
        d = np.zeros((max_level, E.n_params))
        for k in range(2):
            f = _follower(cfg, V0)
            ctx = np.array([k])
            done, prev = 0, None
            ep_seed = np.array([int(hpgd_kernels.uniforms(state[0], 1)[0] * 2.0**53)], np.uint64)
            for j in range(max_level + 1):
                f.advance(x, ctx, base * 2**j - done)
                done = base * 2**j
                sol = f.solution(x, ctx)
                if coupling == "episodes":
                    g = coupled_hypergradient(sol, cfg, hpgd_kernels.FORM_CROSSFIT, ep_seed)[0]
                else:
                    st = state.copy()
                    g = hypergradient(sol, cfg, "mc", None, None, "crossfit", st)[0]
                    if coupling == "independent" or j == max_level:
                        state = st
                if prev is not None:
                    d[j - 1] += (g - prev) / 2
                prev = g
        sq += (d**2).sum(1)
    return [float(v) for v in np.sqrt(sq / m)]


def measure(cfg: RunConfig, args: argparse.Namespace, x, x_lag, kind: str, base: int) -> dict:
    V0 = start_tables(cfg, x_lag, kind)
    solver = FollowerSolver(1, GOALS, cfg)
    exact = sum(exact_hypergradient(solver, x, np.array([k]))[1][0] for k in range(2)) / 2
    rows = []
    for n in [int(v) for v in args.ns.split(",")]:
        t0 = time.perf_counter()
        est, plug = plain_estimates(cfg, x, V0, n, args.m, args.seed + n)
        row = {"n": n, "sweeps": n, **bias_summary(est, exact), "plug_in": point_bias(plug, exact)}
        rows.append(row | {"wall_s": time.perf_counter() - t0})
        print(kind, "n", n, json.dumps({k: row[k] for k in ("rel_bias", "rel_se", "cosine")}))
    exact_est, _ = plain_estimates(
        cfg, x, [solver.solve(x, np.array([k]), False).V for k in range(2)], 0, args.m, args.seed
    )
    rows.append({"n": "inf", "sweeps": None, **bias_summary(exact_est, exact)})
    print(kind, "n inf", json.dumps(rows[-1]))
    ml = []
    for J in [int(v) for v in args.levels.split(",")]:
        sched = MultilevelSchedule(base, J)
        t0 = time.perf_counter()
        est, steps = multilevel_estimates(cfg, x, V0, sched, args.m_ml, args.seed + 1000 + J)
        row = multilevel_row(sched, steps, bias_summary(est, exact))
        ml.append(row | {"wall_s": time.perf_counter() - t0})
        print(kind, "mlmc", json.dumps(row))
    J = max(int(v) for v in args.levels.split(","))
    ne = float(np.linalg.norm(exact))
    coupling = {
        name: [
            v / ne for v in level_differences(cfg, x, V0, base, J, args.m_c, args.seed + 7, name)
        ]
        for name in ("episodes", "stream", "independent")
    }
    print(kind, "level differences / ||exact||", json.dumps(coupling))
    return {
        "start": kind,
        "exact_norm": ne,
        "plain": rows,
        "multilevel": ml,
        "level_difference_rms": coupling,
    }


def main() -> None:
    ap = four_rooms_parser(__doc__.split("\n")[0])
    ap.add_argument("--x-iters", type=int, default=300)
    ap.add_argument("--x-lr", type=float, default=0.1)
    ap.add_argument("--lag", type=int, default=300)
    ap.add_argument("--ns", default="0,1,2,4,8,16,32,64,128,256")
    ap.add_argument("--base", default="8,4", help="n_0 per start (comma list)")
    ap.add_argument("--levels", default="1,2,4")
    ap.add_argument("--m", type=int, default=2000)
    ap.add_argument("--m-ml", type=int, default=4000)
    ap.add_argument("--m-c", type=int, default=200, help="draws per level-difference estimate")
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--starts", default="cold,lagged")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="results/accelerated/four_rooms_bias.json")
    ap.add_argument("--plot", default="docs/img/accelerated_bias.png")
    args = ap.parse_args()
    cfg = RunConfig(
        algo="hpgd",
        beta=args.lam,
        budget_cost=args.beta,
        lrs=[args.x_lr],
        seeds=[0],
        steps_per_iter=args.steps,
        tol=1e-12,
    )
    xs = leader_iterates(cfg, args.x_iters, args.x_lr)
    x, x_lag = xs[-1], xs[max(0, args.x_iters - args.lag)]
    t0 = time.perf_counter()
    bases = [int(b) for b in args.base.split(",")]
    starts = zip(args.starts.split(","), bases, strict=True)
    header = {"args": vars(args), "config": cfg.to_dict()}
    run_starts(args, header, PLOT_LABELS, t0, starts, lambda kb: measure(cfg, args, x, x_lag, *kb))


if __name__ == "__main__":
    main()
