"""Four-Rooms speed benchmark: follower solver vs plain soft value iteration; the banded LU and the
fused sampler against their previous implementations (kept here; old/new ratios and bit-for-bit
checks); time per outer iteration per algorithm (batched as in ``table1``, with its
metric schedule), the fused numba HPGD path against the library path (old/new ratios); and the
extrapolated Table 1 grid time.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/four_rooms_speed.py [--iters 200] [--dynamics paper]``.
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from numba import njit

from tabular_reference.common.alias import vose
from tabular_reference.four_rooms import banded, hpgd_kernels, kernels
from tabular_reference.four_rooms.algorithms import RunConfig, run
from tabular_reference.four_rooms.dynamics import PRESETS, resolve_dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS as E
from tabular_reference.four_rooms.env import GAMMA
from tabular_reference.four_rooms.kernel_args import (
    Newton,
    NewtonWork,
    Walk,
    WarmStart,
    follower_model,
    sampler_model,
)
from tabular_reference.four_rooms.leader import penalties, softmax


@njit(cache=True)
def soft_vi(model, pen, goal, V, tol):
    """Plain soft value iteration V <- T(V) (Jacobi sweeps) until max|T(V) - V| <= tol."""
    n = V.shape[0]
    beta = model.temperature
    TV = np.empty(n)
    q = np.empty(4)
    for it in range(10_000_000):
        res = 0.0
        for s in range(n):
            if s == goal:
                TV[s] = 1.0
                continue
            m = kernels.soft_q(model, pen, s, V, q)
            z = 0.0
            for a in range(4):
                z += math.exp((q[a] - m) / beta)
            TV[s] = m + beta * math.log(z)
            res = max(res, abs(TV[s] - V[s]))
        V[:] = TV
        if res <= tol:
            return it + 1
    return -1


@njit(cache=True)
def band_lu_previous(AB, n, b):
    """The banded LU before the fixed-bandwidth path (2026-12-01): one loop for every ``b``,
    multipliers by division."""
    for k in range(n):
        piv = AB[k, b]
        hi = min(n, k + b + 1)
        for i in range(k + 1, hi):
            l = AB[i, k - i + b] / piv
            if l != 0.0:
                AB[i, k - i + b] = l
                for j in range(k + 1, hi):
                    AB[i, j - i + b] -= l * AB[k, j - k + b]


@njit(cache=True)
def build_alias_previous(pi_r, sampler, thr, out1, out2):
    """The alias tables before the integer-threshold records (2026-12-01): float thresholds and
    two separate outcome arrays."""
    S = pi_r.shape[0]
    nbr, p_int, p_oth = sampler.neighbours, sampler.p_intended, sampler.p_other
    p = np.empty(16)
    small = np.empty(16, dtype=np.int64)
    large = np.empty(16, dtype=np.int64)
    alias = np.empty(16, dtype=np.int64)
    for s in range(S):
        for a in range(4):
            for d in range(4):
                p[4 * a + d] = pi_r[s, a] * (p_int if d == a else p_oth) * 16.0
        vose(p, 16, alias, small, large)
        for j in range(16):
            thr[16 * s + j] = p[j]
            out1[16 * s + j] = 4 * nbr[s, j & 3] + (j >> 2)
            o = alias[j]
            out2[16 * s + j] = 4 * nbr[s, o & 3] + (o >> 2)


@njit(cache=True, inline="always")
def _draw_code_previous(thr, out1, out2, s, u):
    x = u * 16.0
    j = int(x)
    i = 16 * s + j
    return out1[i] if x - j < thr[i] else out2[i]


@njit(cache=True)
def sample_run_previous(sampler, tables, walk, rng):
    """The fused sampler before 2026-12-01: float uniform, a branch between kept and alias
    (``tables = (thr, out1, out2)`` of :func:`build_alias_previous`)."""
    thr, out1, out2 = tables
    start, max_len, goal = sampler.start, sampler.max_len, walk.goal
    states, actions, taus = walk.states, walk.actions, walk.time_in_episode
    t = 0
    n_ep = 0
    s0, s1, s2, s3 = rng[0], rng[1], rng[2], rng[3]
    for _e in range(sampler.n_envs):
        s = start
        k = 0
        n_ep += 1
        for _i in range(sampler.steps):
            u, s0, s1, s2, s3 = hpgd_kernels._xoshiro_next(s0, s1, s2, s3)
            code = _draw_code_previous(thr, out1, out2, s, u)
            states[t] = s
            actions[t] = code & 3
            taus[t] = k
            t += 1
            k += 1
            if s == goal or k >= max_len:
                s = start
                k = 0
                n_ep += 1
            else:
                s = code >> 2
        if k == 0:
            n_ep -= 1
    rng[0], rng[1], rng[2], rng[3] = s0, s1, s2, s3
    return n_ep


def _converged(model, pen: np.ndarray, goal: int) -> NewtonWork:
    """A soft-optimal follower of ``model`` under the rewards ``pen`` (cold Newton solve)."""
    S, b = E.n_cells, E.bandwidth
    work = NewtonWork(np.empty((S, 4)), np.empty((S, 2 * b + 1)), np.empty(S), np.empty(S))
    cold = WarmStart(work.factors, work.neg_entropy, False)
    kernels.soft_newton(model, Newton(1e-10, 100), pen, goal, np.zeros(S), work, cold)
    return work


def bench_sampler(dynamics: str, reps: int = 7, n: int = 100) -> None:
    """The fused sampler, previous vs current, on converged followers at 5 random leader
    parameters: time per 10,000-step batch (best of ``reps``), old/new and a bit-for-bit check
    of states, actions, episode steps, episode count and generator state."""
    model = resolve_dynamics(dynamics)
    S, T, n_envs = E.n_cells, 10_000, 5
    print(
        f"\nfused sampler (dynamics {dynamics}, lam 0.003, {T:,} steps = {n_envs} envs), "
        "previous vs current"
    )
    sampler = sampler_model(model.sample, n_envs, T // n_envs)
    for seed in range(5):
        x = np.random.default_rng(seed).normal(0, 1, (1, 105))
        pen = np.ascontiguousarray(penalties(softmax(x)))[0]
        pi = _converged(follower_model(0.003, model.plan), pen, E.goals[0]).policy
        thr, o1, o2 = np.empty(16 * S), np.empty(16 * S, np.int64), np.empty(16 * S, np.int64)
        build_alias_previous(pi, sampler, thr, o1, o2)
        tab = hpgd_kernels.alias_buffers(S)
        hpgd_kernels.build_alias(pi, sampler, tab)
        outs, times = [], []
        for fn, tables in ((sample_run_previous, (thr, o1, o2)), (hpgd_kernels.sample_run, tab)):
            walk = Walk(E.goals[0], *(np.empty(T, np.int64) for _ in range(3)))
            rng = hpgd_kernels.seed_state(seed)
            n_ep = fn(sampler, tables, walk, rng)
            outs.append((n_ep, rng.copy(), walk.states, walk.actions, walk.time_in_episode))
            best = math.inf
            for _ in range(reps):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn(sampler, tables, walk, rng)
                best = min(best, (time.perf_counter() - t0) / n)
            times.append(best)
        same = outs[0][0] == outs[1][0] and all(
            np.array_equal(a, c) for a, c in zip(outs[0][1:], outs[1][1:], strict=True)
        )
        print(
            f"  x seed {seed}: {times[0] * 1e6:7.1f} -> {times[1] * 1e6:6.1f} us / batch  "
            f"old/new {times[0] / times[1]:.2f}x  identical: {same}"
        )


@njit(cache=True)
def _repeat_lu(fn, n, AB0, AB, b):
    for _ in range(n):
        AB[:, :] = AB0
        fn(AB, AB.shape[0], b)


def _time(fn, *args, reps: int) -> float:
    fn(*args)  # compile
    t = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    return (time.perf_counter() - t) / reps


def bench_kernels(dynamics: str) -> None:
    """The banded LU, previous vs current: old/new ratio and the factors' difference."""
    model = resolve_dynamics(dynamics)
    plan = model.plan
    S, b, goal = E.n_cells, E.bandwidth, E.goals[0]
    pen = np.ascontiguousarray(penalties(softmax(np.random.default_rng(0).normal(0, 1, (1, 105)))))
    work = _converged(follower_model(0.003, plan), pen[0], goal)
    pi, AB = work.policy, work.factors
    print(f"\nkernels (dynamics {dynamics}, lam 0.003, a converged follower), previous vs current")
    AB0 = np.zeros_like(AB)
    AB0[:, b] = 1.0
    for s in range(S):
        if s != goal:
            for d in range(4):
                AB0[s, E.nbr[s, d] - s + b] -= GAMMA * (plan.p_other + plan.p_diff * pi[s, d])
    A_old, A_new = AB.copy(), AB.copy()
    # interleaved repeats, best of each (this host's timings drift by tens of percent)
    t_old = t_new = math.inf
    for _ in range(7):
        t_old = min(t_old, _time(_repeat_lu, band_lu_previous, 2000, AB0, A_old, b, reps=1))
        t_new = min(t_new, _time(_repeat_lu, banded.band_lu, 2000, AB0, A_new, b, reps=1))
    t_old, t_new = t_old / 2000, t_new / 2000
    # the multipliers now use the pivot's reciprocal: the factors agree to rounding, not bits
    rel = np.abs(A_old - A_new).max() / np.abs(A_old).max()
    print(
        f"  banded LU   {t_old * 1e6:7.2f} -> {t_new * 1e6:7.2f} us  old/new {t_old / t_new:.2f}x"
        f"  max |difference| / max |entry| {rel:.1e}"
    )


def bench_solver(tol: float, dynamics: str) -> None:
    plan = resolve_dynamics(dynamics).plan
    rng = np.random.default_rng(0)
    n = 50
    xs = rng.normal(0, 1.0, (n, 105))
    pen = np.ascontiguousarray(penalties(softmax(xs)))
    S = E.n_cells
    b = E.bandwidth
    newton = Newton(tol, 100)
    print(f"\nfollower solve to max|T(V)-V| <= {tol:g} (goal {E.cells[E.goals[0]]}, {n} random x)")
    print(f"{'lam':>6} {'method':>26} {'iters':>8} {'us/solve':>10}")
    for beta in (0.001, 0.003, 0.005):
        model = follower_model(beta, plan)
        # plain soft VI from zero
        soft_vi(model, pen[0], E.goals[0], np.zeros(S), tol)  # compile
        t = time.perf_counter()
        its = [soft_vi(model, pen[i], E.goals[0], np.zeros(S), tol) for i in range(5)]
        dt = (time.perf_counter() - t) / 5
        print(f"{beta:6g} {'soft VI (cold)':>26} {np.mean(its):8.0f} {dt * 1e6:10.0f}")
        work = NewtonWork(np.empty((S, 4)), np.empty((S, 2 * b + 1)), np.empty(S), np.empty(S))
        AB0, ent0 = np.empty((S, 2 * b + 1)), np.empty(S)
        modes = {
            "banded Newton (cold)": (False, False),
            "banded Newton (warm)": (True, False),
            "... + cached factors": (True, True),
        }
        for label, (warm, cached) in modes.items():
            Vw = np.zeros(S)
            kernels.soft_newton(
                model, newton, pen[0], E.goals[0], Vw, work, WarmStart(AB0, ent0, False)
            )
            its = []
            t = time.perf_counter()
            for i in range(n):
                if not warm:
                    Vw = np.zeros(S)
                # warm: previous solution for a nearby x (x_i + small step), as in the outer loop;
                # cached: its factorised M(pi) and entropies are kept (FollowerSolver's slots)
                p = pen[i] if not warm else pen[0] * (1 + 1e-3 * (i % 7))
                AB0[:], ent0[:] = work.factors, work.neg_entropy
                it, _res = kernels.soft_newton(
                    model, newton, p, E.goals[0], Vw, work, WarmStart(AB0, ent0, cached)
                )
                its.append(it)
            dt = (time.perf_counter() - t) / n
            print(f"{beta:6g} {label:>26} {np.mean(its):8.2f} {dt * 1e6:10.1f}")


def bench_algorithms(iters: int, dynamics: str) -> dict[str, float]:
    print(
        f"\nouter iterations, batched as in table1 (4 lr x 10 seeds; zo 4 lr x 4 c x 10 seeds), "
        f"{iters} iterations, exact F on table1's schedule (every 10th and the last tenth), "
        f"dynamics {dynamics}; wall and process CPU time"
    )
    per: dict[str, float] = {}
    # label -> (algorithm, estimator backend); "old" = the library path
    variants = {
        "amd": ("exact", "fused"),
        "zo": ("zero_order", "fused"),
        "hpgd": ("hpgd", "fused"),
        "hpgd old": ("hpgd", "library"),
        "hpgd-published": ("hpgd-published", "fused"),
        "hpgd-published old": ("hpgd-published", "library"),
    }
    for name, (algo, backend) in variants.items():
        cfg = RunConfig(
            algo=algo,
            dynamics=dynamics,
            estimator_backend=backend,
            beta=0.003,
            budget_cost=3.0,
            lrs=[0.5, 0.1, 0.05, 0.01],
            cs=[0.01, 0.1, 0.5, 1.0],
            seeds=list(range(10)),
            iters=10,
            eval_every=10,
            eval_last=1,
        )
        run(cfg, progress=False)  # compile / warm up
        cfg.iters = iters
        cfg.eval_last = max(1, iters // 10)
        c0 = time.process_time()
        res = run(cfg, progress=False)
        cpu = time.process_time() - c0
        R = res.F.shape[0]
        per[name] = res.wall_s / (iters * R)
        print(
            f"  {name:18s} R={R:4d}: {res.wall_s / iters * 1e3:8.2f} ms / outer iteration "
            f"(all runs), {per[name] * 1e6:7.1f} us / run-iteration (CPU "
            f"{cpu / (iters * R) * 1e6:7.1f}), Newton steps/solve {res.newton_iters_mean:.2f}"
        )
    for new in ("hpgd", "hpgd-published"):
        print(f"  {new}: old/new = {per[new + ' old'] / per[new]:.2f}x")
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--dynamics", default="paper", help=f"preset: {' | '.join(PRESETS)}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    resolve_dynamics(args.dynamics)
    bench_solver(args.tol, args.dynamics)
    bench_kernels(args.dynamics)
    bench_sampler(args.dynamics)
    per = bench_algorithms(args.iters, args.dynamics)
    # the runs above evaluate F on table1's schedule (every 10th iteration + the last tenth)
    n = {"hpgd": 4 * 9 * 10 * 10_000, "amd": 4 * 9 * 10 * 10_000, "zo": 16 * 9 * 10 * 10_000}
    tot = sum(per[a] * n[a] for a in n)
    print("\nextrapolated full Table 1 grid (CPU of this measurement; 2 workers):")
    for a in n:
        print(
            f"  {a:5s} {n[a] / 1e6:5.1f} M run-iterations x {per[a] * 1e6:6.1f} us = "
            f"{per[a] * n[a] / 60:6.1f} CPU-min"
        )
    print(f"  total {tot / 60:.1f} CPU-min = {tot / 120:.1f} min wall on 2 workers")


if __name__ == "__main__":
    main()
