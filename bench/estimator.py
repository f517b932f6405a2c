"""Bias and variance of hypergradient estimators on the enumerable tiny-language task.

For each sample budget N (completions per prompt), draws ``--reps`` independent estimates of
``dF/dx`` and compares them with the exact gradient (``docs/theory.md`` §3):

* HPGD: the grouped covariance estimator (N completions per prompt from pi*_x),
* naive: its direct term only (ignores the follower's response),
* zero-order: Gaussian smoothing ``(F^(x + u z) - F^(x)) z / u`` where each F^ averages rbar
  over N completions per prompt sampled from the follower's best response at that x (so it
  uses 2N completions per prompt per estimate, plus a re-trained follower at x + u z).

Every prompt contributes one group per estimate, weighted by P(p). Reported, relative to the
exact gradient g*: ``bias = ||mean(est) - g*|| / ||g*||`` (with the Monte-Carlo noise floor of
that number, ``sqrt(tr Cov / reps) / ||g*||``) and ``var = E||est - mean(est)||^2 / ||g*||^2``.
Finally times one surrogate forward+backward for a GRPO-sized batch.

    OMP_NUM_THREADS=1 .venv/bin/python bench/estimator.py [--reps 2000] [--beta 0.5]
"""

from __future__ import annotations

import argparse
import time

import torch

from align_cbrl.estimators.grouped import hpgd_surrogate
from align_cbrl.reference.tiny_language import (
    TinyLanguageTask,
    exact_gradient,
    exact_policy,
    reward_jacobians,
)


def _stats(est: torch.Tensor, g: torch.Tensor) -> tuple[float, float, float]:
    m = est.mean(0)
    var = float(((est - m) ** 2).sum(1).mean())
    gn2 = float(g @ g)
    return float((m - g).norm()) / gn2**0.5, (var / est.shape[0]) ** 0.5 / gn2**0.5, var / gn2


def _perturbed_best_responses(
    task: TinyLanguageTask, bl, beta: float, z: torch.Tensor, u: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact best responses ``pi[M, P, Y]`` and leader rewards at the leaders ``x + u z_m``."""
    x0 = bl.leader.flat_parameters()
    M = z.shape[0]
    P, Y = task.num_prompts, task.num_completions
    pi_z = torch.empty(M, P, Y, dtype=torch.float64)
    rbar_z = torch.empty(M, P, Y, dtype=torch.float64)
    with torch.no_grad():
        for m in range(M):
            params = bl.leader.unflatten(x0 + u * z[m], "leader.")
            pi_z[m] = exact_policy(task, bl, beta, params)
            rbar_z[m] = task.rewards(bl, params)[1]
    return pi_z, rbar_z


def _budget_estimates(
    n: int,
    pi: torch.Tensor,
    jac: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    zo: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float],
    w: torch.Tensor,
    beta: float,
    gen: torch.Generator,
) -> list[tuple[str, torch.Tensor]]:
    """``M`` estimates ``[M, D]`` of each estimator from ``n`` completions per prompt."""
    rbar, d_r, d_rbar = jac
    pi_z, rbar_z, z, u = zo
    M = z.shape[0]
    P, Y = rbar.shape
    comp = torch.stack(
        [
            torch.multinomial(pi[p], M * n, replacement=True, generator=gen).reshape(M, n)
            for p in range(P)
        ],
        1,
    )  # [M, P, n]
    pidx = torch.arange(P)[None, :, None]
    dr, drb, rb = d_r[pidx, comp], d_rbar[pidx, comp], rbar[pidx, comp]
    dir_term = drb.mean(2)  # [M, P, D]
    rows = []
    if n >= 2:
        cov = ((dr - dr.mean(2, keepdim=True)) * (rb - rb.mean(2, keepdim=True))[..., None]).sum(
            2
        ) / (n - 1)
        rows.append(("HPGD", ((dir_term + cov / beta) * w[None, :, None]).sum(1)))
    rows.append(("naive", (dir_term * w[None, :, None]).sum(1)))
    # zero-order from sampled values: N completions at x + u z and N at x
    comp_z = torch.multinomial(pi_z.reshape(M * P, Y), n, replacement=True, generator=gen).reshape(
        M, P, n
    )
    f_plus = (torch.gather(rbar_z, 2, comp_z).mean(2) * w).sum(1)
    f_base = (rb.mean(2) * w).sum(1)
    rows.append(("zero-order", ((f_plus - f_base) / u)[:, None] * z))
    return rows


def _time_surrogate(task: TinyLanguageTask, bl, beta: float, gen: torch.Generator) -> None:
    """Throughput of the one-backward surrogate on a GRPO-sized batch."""
    G, N = 64, 16
    scores = torch.randn(G * N, len(task.component_names), generator=gen, dtype=torch.float64)
    ctx = [task.context_values[i % len(task.context_values)] for i in range(G * N)]
    for _ in range(3):
        out = bl(scores, ctx)
        hpgd_surrogate(out.r.reshape(G, N), out.rbar.reshape(G, N), beta).backward()
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        bl.zero_grad()
        out = bl(scores, ctx)
        hpgd_surrogate(out.r.reshape(G, N), out.rbar.reshape(G, N), beta).backward()
    dt = (time.perf_counter() - t0) / reps
    print(
        f"\nsurrogate forward+backward, G={G} groups x N={N}, per-context weight leader: {dt * 1e3:.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--u", type=float, default=0.1, help="zero-order smoothing radius")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", type=int, nargs="+", default=[2, 4, 8, 16])
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)

    task = TinyLanguageTask()
    bl = task.bilevel(task.make_leader(init_std=0.5, seed=1, cost_coef=0.2))
    beta = args.beta
    g = exact_gradient(task, bl, beta)
    _r, rbar, d_r, d_rbar = reward_jacobians(task, bl)
    pi = exact_policy(task, bl, beta).detach()
    P, Y = rbar.shape
    D, M = g.numel(), args.reps
    w = task.prompt_probs

    # zero-order: perturbed leaders and their exact best responses (shared across budgets)
    z = torch.randn(M, D, generator=gen, dtype=torch.float64)
    pi_z, rbar_z = _perturbed_best_responses(task, bl, beta, z, args.u)
    zo_exact = ((pi_z * rbar_z).sum(-1) @ w - (pi * rbar).sum(-1) @ w)[:, None] * z / args.u

    print(
        f"tiny-language task: P={P} prompts, Y={Y} completions, D={D} leader parameters, "
        f"beta={beta}, reps={M}, zero-order u={args.u}"
    )
    print(f"||exact dF/dx|| = {float(g.norm()):.4f}")
    b, fl, v = _stats(zo_exact, g)
    print(
        f"zero-order with exact F values (infinite samples): bias {b:.3f} (noise floor {fl:.3f}), var {v:.2f}"
    )
    print()
    print(f"{'N':>3} {'estimator':<11} {'rel. bias':>9} {'(MC floor)':>10} {'rel. var':>10}")
    for n in args.budgets:
        rows = _budget_estimates(
            n, pi, (rbar, d_r, d_rbar), (pi_z, rbar_z, z, args.u), w, beta, gen
        )
        for name, est in rows:
            b, fl, v = _stats(est, g)
            print(f"{n:>3} {name:<11} {b:>9.3f} {fl:>10.3f} {v:>10.3f}")
    _time_surrogate(task, bl, beta, gen)


if __name__ == "__main__":
    main()
