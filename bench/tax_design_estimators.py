"""Tax design: exactness of the hypergradient and quality of the HPGD estimators (prints numbers).

* exact hypergradient vs central finite differences (relative error), household temperature
  (lambda; ``beta`` in the code) in {0.1, 0.2, 0.3};
* per HPGD form: the mean of ``R`` independent estimates (each from ``N`` sampled 200-step
  episodes) vs the exact hypergradient -- cosine, norm ratio, per-component z-scores -- for
  increasing numbers of episodes;
* timings of one outer iteration's pieces for a batch of 10 runs.

Run: ``nice -n 10 .venv/bin/python bench/tax_design_estimators.py [--lam 0.1] [--runs 20]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.hypergradient import (
    EstimationPoint,
    exact_hypergradient,
    hypergradient,
)
from tabular_reference.tax_design.rewards import initial_theta, rates
from tabular_reference.tax_design.sampling import balanced_contexts, rollout
from tabular_reference.tax_design.solver import soft_policy_iteration, welfare

DT = torch.float64
VARIANTS = (  # (label, form, leader_q, follower transition)
    ("mc/trajectory", "mc", "trajectory", "score"),
    ("cov/trajectory", "covariance", "trajectory", "score"),
    ("cov/table/score", "covariance", "table", "score"),
    ("cov/table", "covariance", "table", "expected"),
    ("mc/table", "mc", "table", "expected"),
    ("mc/crossfit", "mc", "crossfit", "expected"),
    ("naive", "naive", "table", "expected"),
)


def finite_differences(econ: Economy) -> None:
    print("exact hypergradient vs central differences (h = 1e-5), theta at the initial rates:")
    theta = initial_theta(1)
    eye = torch.eye(4, dtype=DT)
    h = 1e-5
    for beta in (0.1, 0.2, 0.3):
        F, g, _ = exact_hypergradient(econ, theta, beta)
        Fp = welfare(econ, theta + h * eye, beta, tol=1e-13).F
        Fm = welfare(econ, theta - h * eye, beta, tol=1e-13).F
        fd = (Fp - Fm) / (2 * h)
        rel = ((fd - g[0]).norm() / g[0].norm()).item()
        print(
            f"  lam={beta}: F={F.item():.6f}  dF/dtheta={g[0].numpy().round(4)}  rel.err={rel:.2e}"
        )


def estimator_quality(econ: Economy, beta: float, runs: int, episodes: list[int]) -> None:
    theta = initial_theta(runs)
    beta_t = torch.full((runs,), beta, dtype=DT)
    _, exact, sol = exact_hypergradient(econ, theta, beta)
    Vbar = welfare(econ, theta, beta).Vbar
    e = exact[0]
    print(f"\nHPGD estimates at the initial rates, lam={beta}, exact = {e.numpy().round(4)}")
    print(
        "  form/transition       episodes  cos(mean,exact)  |mean|/|exact|  max|z|"
        "   mean per-run cos"
    )
    gen = torch.Generator().manual_seed(0)
    at = EstimationPoint(econ, theta, beta_t, sol)  # the same for every variant and budget
    for n in episodes:
        traj = rollout(econ, sol, rates(theta)[:, 0], balanced_contexts(econ, runs, n), 200, gen)
        for label, form, leader_q, ft in VARIANTS:
            g, _ = hypergradient(
                at, traj, form=form, leader_q=leader_q, critic=Vbar, follower_transition=ft
            )
            m = g.mean(0)
            se = g.std(0) / runs**0.5
            cos = torch.nn.functional.cosine_similarity(m, e, dim=0).item()
            per_run = torch.nn.functional.cosine_similarity(g, exact, dim=1).mean().item()
            z = ((m - e) / se).abs().max().item()
            print(
                f"  {label:<20} {n * runs:>9}  {cos:>15.4f}  {(m.norm() / e.norm()).item():>14.2f}"
                f"  {z:>7.1f}   {per_run:.3f}"
            )
    print("  (table: exact leader critic Qbar, Vbar; trajectory: same-trajectory returns)")


def timings(econ: Economy, beta: float) -> None:
    R, N = 10, 50
    theta = initial_theta(R)
    beta_t = torch.full((R,), beta, dtype=DT)
    gen = torch.Generator().manual_seed(1)

    def clock(fn, reps=5):
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn()
        return (time.perf_counter() - t0) / reps, out

    t_cold, sol = clock(lambda: soft_policy_iteration(econ, theta, beta_t, tol=1e-11))
    t_warm, _ = clock(
        lambda: soft_policy_iteration(econ, theta + 0.01, beta_t, V0=sol.V, tol=1e-11)
    )
    ctx = balanced_contexts(econ, R, N)
    t_roll, traj = clock(lambda: rollout(econ, sol, rates(theta)[:, 0], ctx, 200, gen))
    Vbar = welfare(econ, theta, beta).Vbar
    at = EstimationPoint(econ, theta, beta_t, sol)
    t_est, _ = clock(lambda: hypergradient(at, traj, critic=Vbar))
    t_exact, _ = clock(lambda: exact_hypergradient(econ, theta, beta_t, V0=sol.V, tol=1e-11))
    print(f"\ntimings for a batch of {R} runs x 2 household types ({econ.n_states} bins):")
    print(f"  household solve, cold start: {t_cold * 1e3:.1f} ms ({sol.iters} Newton steps)")
    print(f"  household solve, warm start (theta + 0.01): {t_warm * 1e3:.1f} ms")
    print(f"  rollout of {N} x 200-step episodes per run: {t_roll * 1e3:.1f} ms")
    print(f"  HPGD estimate (mc/table, one backward): {t_est * 1e3:.1f} ms")
    print(f"  exact welfare + hypergradient (warm): {t_exact * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--episodes", type=int, nargs="+", default=[10, 50, 200])
    args = parser.parse_args()
    torch.set_num_threads(1)
    econ = Economy()
    finite_differences(econ)
    estimator_quality(econ, args.lam, args.runs, args.episodes)
    timings(econ, args.lam)


if __name__ == "__main__":
    main()
