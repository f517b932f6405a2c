"""Kernel identity check: run every numba kernel path of the tabular reference at fixed seeds,
save every output array, and compare two saved runs bit for bit (for refactors of the kernels
that must not change a result).

Cases: the Table 1 identity run (hpgd, hpgd-published, naive, exact, zero-order x presets paper
and published, 250 iterations, 2 seeds); the library backend, the covariance form, the published
follower solve, learning followers (plain and multilevel with both couplings), the figure's
follower solve; the published single-loop AMD (60 iterations x 100 sweeps, beta 1 and 5); tax
design (hpgd with expected and score transitions, naive, zero-order-sampled with and without
common random numbers). About 3 min of CPU once compiled.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/kernel_identity.py save DIR [GROUP ...]`` (groups
``table1 extra single_loop tax``; writes ``DIR/<case>.npz``) at the commit before and after a
change, then ``... bench/kernel_identity.py compare DIR_BEFORE DIR_AFTER`` (``np.array_equal``
per array, the largest absolute difference where not equal; exit status 1 if any differs).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

Cases = Iterator[tuple[str, dict[str, np.ndarray]]]
# the settings the Four-Rooms runs share (RunConfig's names: beta = follower temperature)
RUN = {"beta": 0.005, "budget_cost": 1.0, "lrs": [0.5], "seeds": [0, 1], "eval_every": 10}
TABLE1 = {**RUN, "cs": [0.5], "iters": 250, "eval_last": 50, "steps_per_iter": 10_000}
TABLE1["job_seed"] = 3
SINGLE_LOOP = {"lr": 0.5, "seed": 0, "iters": 60, "sweeps": 100, "init_sweeps": 500}
SINGLE_LOOP.update(eval_last=20, eval_every=10)


def table1_cases() -> Cases:
    """Five algorithms x presets paper and published, 250 iterations (the Table 1 identity run)."""
    from tabular_reference.four_rooms.algorithms import RunConfig, run

    for preset in ("paper", "published"):
        for algo in ("hpgd", "hpgd-published", "naive", "exact", "zero_order"):
            res = run(RunConfig(**TABLE1, algo=algo, dynamics=preset), progress=False)
            yield (
                f"table1_{preset}_{algo}",
                {
                    "F": res.F,
                    "final_x": res.final_x,
                    "F_last": res.F_last,
                    "newton": np.array(res.newton_iters_mean),
                },
            )


def extra_four_rooms_cases() -> Cases:
    """Library backend, published solve, learning followers, the figure's follower solve."""
    from tabular_reference.four_rooms.accelerated import LearningConfig, run_learning
    from tabular_reference.four_rooms.algorithms import RunConfig, run
    from tabular_reference.four_rooms.dynamics import resolve_dynamics
    from tabular_reference.four_rooms.env import FOUR_ROOMS
    from tabular_reference.four_rooms.plots import follower_policy

    kw = {**RUN, "iters": 40, "eval_last": 10, "steps_per_iter": 5_000, "job_seed": 5}
    kw["dynamics"] = "published"
    for name, extra in (
        ("hpgd_cov_library", dict(algo="hpgd-cov")),
        ("hpgd_library", dict(algo="hpgd", estimator_backend="library")),
        ("exact_published_solve", dict(algo="exact", follower_solve="published")),
        ("zo_published_solve", dict(algo="zero_order", follower_solve="published")),
    ):
        res = run(RunConfig(**kw, **extra), progress=False)
        yield name, {"F": res.F, "final_x": res.final_x}
    for name, learn in (
        ("learning_n20", LearningConfig(follower_steps=20, eval_every=5)),
        ("learning_mlmc_episodes", LearningConfig(base_steps=4, max_level=3, eval_every=5)),
        (
            "learning_mlmc_stream",
            LearningConfig(base_steps=4, max_level=3, eval_every=5, coupling="stream"),
        ),
    ):
        for algo in ("hpgd", "hpgd-published", "naive"):
            cfg = RunConfig(algo=algo, **{**kw, "iters": 20})
            res = run_learning(cfg, learn)
            yield (
                f"{name}_{algo}",
                {
                    "trace_F": res.trace_F,
                    "final_x": res.final_x,
                    "updates": res.updates,
                    "levels": np.array(res.levels),
                },
            )
    x = np.random.default_rng(4).normal(0, 0.5, 105)
    plan = resolve_dynamics("paper").plan
    yield (
        "follower_policy",
        {f"pi_{g}": follower_policy(x, g, 0.003, plan) for g in FOUR_ROOMS.goals},
    )


def single_loop_cases() -> Cases:
    """The published single-loop AMD (its fastmath sweep kernel)."""
    from tabular_reference.four_rooms.amd_single_loop import SingleLoopConfig, run_single_loop

    for lam, beta in ((0.005, 1.0), (0.005, 5.0)):
        rec = run_single_loop(SingleLoopConfig(beta=lam, budget_cost=beta, **SINGLE_LOOP))
        yield (
            f"single_loop_{beta:g}",
            {
                "F": np.array(rec["trace"]["F"]),
                "Fp": np.array(rec["trace"]["F_published_solve"]),
                "final_x": np.array(rec["final_x"]),
            },
        )


def tax_cases() -> Cases:
    """Tax design: the numba household sampler and the surrogate's cell sums."""
    from tabular_reference.tax_design.algorithms import AlgoSettings, run_batch
    from tabular_reference.tax_design.economy import Economy

    econ = Economy()
    for algo, st in (
        ("hpgd", AlgoSettings(episodes=20)),
        ("hpgd", AlgoSettings(episodes=20, follower_transition="score", critic="exact")),
        ("naive", AlgoSettings(episodes=20)),
        ("zero_order_sampled", AlgoSettings(zo_episodes=20)),
        ("zero_order_sampled", AlgoSettings(zo_episodes=20, zo_crn=True)),
    ):
        h = run_batch(econ, algo, [0.2, 0.5], [0, 1], 6, st, progress=False)
        key = f"tax_{algo}_{st.follower_transition}_{st.zo_crn}"
        yield (
            key,
            {"welfare": h.welfare, "rates": h.rates, "grad_norm": h.grad_norm, "theta": h.theta},
        )


GROUPS = {
    "table1": table1_cases,
    "extra": extra_four_rooms_cases,
    "single_loop": single_loop_cases,
    "tax": tax_cases,
}


def save(out: Path, groups: list[str]) -> None:
    """Run ``groups`` and write every case's arrays to ``out/<case>.npz``."""
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for g in groups:
        t0 = time.perf_counter()
        for name, arrays in GROUPS[g]():
            np.savez(out / f"{name}.npz", **{k: np.asarray(v) for k, v in arrays.items()})
        print(f"{g}: {time.perf_counter() - t0:.1f} s", flush=True)


def compare(a: Path, b: Path) -> int:
    """Compare two ``save`` directories array by array; 1 if anything differs or is missing."""
    bad = 0
    worst = 0.0
    for fa in sorted(a.glob("*.npz")):
        fb = b / fa.name
        if not fb.exists():
            print(f"MISSING {fa.name}")
            bad += 1
            continue
        za, zb = np.load(fa), np.load(fb)
        for k in za.files:
            x, y = za[k], zb[k]
            if x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                continue
            bad += 1
            d = np.nanmax(np.abs(x - y)) if x.shape == y.shape else float("inf")
            worst = max(worst, float(d))
            print(f"DIFF {fa.stem}/{k}: max abs {d:.3e}")
    n = len(list(a.glob("*.npz")))
    print(f"{n} cases compared, {bad} arrays differ, max abs diff {worst:.3e}")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "save":
        save(Path(sys.argv[2]), sys.argv[3:] or list(GROUPS))
    else:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
