"""Accelerated (multilevel) HPGD against plain HPGD at equal follower compute, on the enumerable
tiny-language task with a learning follower (``docs/accelerated_lm.md``, ``docs/theory.md`` §9).

Every run is the orchestrated :class:`~align_cbrl.trainer.HPGDTrainer` on the task
``tiny_language`` with one ``trainer: tabular`` follower (a softmax policy over the 84
completions, warm-started, exact mirror-descent steps towards ``pi* ∝ pi_ref exp(r / beta)``)
and a sigmoid weight leader (SGD, no clipping unless ``--max-grad-norm``, so the step is ``lr``
times the estimate). The methods share one budget ``B`` of follower updates (each stops before the iteration that would
exceed it):

* ``plain_small``: plain HPGD, ``K = n_0`` follower steps per iteration;
* ``plain_large``: plain HPGD, ``K = n_0 2^J_max``;
* ``mlmc``: ``leader.follower_schedule: {kind: mlmc, base_steps: n_0, max_level: J_max}``
  (``p_j ∝ 2^-j``, common random numbers across levels);
* ``mlmc_independent``: the same with fresh samples per level (the coupling's effect).

Reported per method over seeds (mean ± s.e.): the exact ``F(x)`` of the final leader, the gap
``F(x*) - F(x)`` to the local optimum that exact gradient ascent reaches from ``x0``
(:func:`~align_cbrl.reference.tiny_language.optimize_exact`), leader iterations, and, averaged
over the iterations, the estimate's error against the exact ``dF/dx(x_t)``: its squared bias
``||E[g | state] - dF/dx||^2`` (the exact expectation of the HPGD estimate at the follower state
the estimate is unbiased for: after ``K`` steps for plain HPGD, after ``n_0 2^J_max`` for the
multilevel estimator), and its mean squared error ``||g - dF/dx||^2`` (``g`` read off the SGD
step), and ``F exact-grad``: ``F`` after the same number of SGD steps with the same step size
but the exact gradient (what the method could reach without estimation error). The curve exact
``F`` vs cumulative follower updates goes to a PNG.

Run (about a minute on 2 CPU cores)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/accelerated_tiny_language.py \
        --out docs/accelerated_lm.json --plot docs/img/accelerated_lm.png
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import QUIET_RUN, tabular_follower

from align_cbrl.config_parser import from_dict
from align_cbrl.estimators.multilevel import MultilevelSchedule
from align_cbrl.quickstart import QUICKSTART_CONFIG
from align_cbrl.reference.tiny_language import (
    exact_gradient,
    exact_objective,
    exact_policy,
    reward_jacobians,
)
from align_cbrl.trainer import HPGDConfig, HPGDTrainer
from align_cbrl.trainer.follower_schedule import STEPS
from align_cbrl.utils.io import atomic_write_text

METHODS = ("plain_small", "plain_large", "mlmc", "mlmc_independent")
LEADER_SPEC = QUICKSTART_CONFIG["leader"]["spec"]  # copied where used


def make_config(method: str, seed: int, args: argparse.Namespace, out: Path) -> HPGDConfig:
    top = args.base_steps * 2**args.max_level
    K = {"plain_small": args.base_steps, "plain_large": top}.get(method, args.base_steps)
    lr = args.leader_lr
    if args.scale_lr:  # equal leader step per follower update: lr * (updates per iteration) / n_0
        per_iteration = K
        if method.startswith("mlmc"):
            per_iteration = MultilevelSchedule(args.base_steps, args.max_level).expected_steps()
        lr *= per_iteration / args.base_steps
    leader: dict[str, Any] = {
        "spec": dict(LEADER_SPEC),
        "optimizer": "sgd",
        "lr": lr,
        "max_grad_norm": args.max_grad_norm,
    }
    if method.startswith("mlmc"):
        leader["follower_schedule"] = {
            "kind": "mlmc",
            "base_steps": args.base_steps,
            "max_level": args.max_level,
            "coupling": "independent" if method == "mlmc_independent" else "common",
        }
    data = {
        "output_dir": str(out / f"{method}_{seed}"),
        "seed": seed,
        "task": "tiny_language",
        "iterations": 10**6,
        "follower_steps": K,
        "prompts_per_iteration": args.prompts,
        "num_samples": args.samples,
        **QUIET_RUN,
        "leader": leader,
        "followers": [tabular_follower("f", args.beta, args.follower_lr, seed=seed)],
    }
    return from_dict(HPGDConfig, data)


def expected_hpgd(task: Any, bilevel: Any, beta: float, log_pi: torch.Tensor) -> torch.Tensor:
    """Exact ``E[g]`` of the HPGD group estimator with completions from ``pi = exp(log_pi)``:
    ``sum_p P(p) [E_pi d rbar + (1/beta) Cov_pi(d r, rbar)]`` (``docs/theory.md`` §3)."""
    _, rbar, d_r, d_rbar = reward_jacobians(task, bilevel)
    pi = log_pi.exp()
    mean_dr = (pi[..., None] * d_r).sum(1)
    cov = (pi[..., None] * d_r * rbar[..., None]).sum(1) - mean_dr * (pi * rbar).sum(1)[:, None]
    per_prompt = (pi[..., None] * d_rbar).sum(1) + cov / beta
    return (task.prompt_probs[:, None] * per_prompt).sum(0)


def trained_policy(logits: torch.Tensor, target: torch.Tensor, a: float, n: int) -> torch.Tensor:
    """The tabular follower's policy after ``n`` more mirror-descent steps (its update rule)."""
    for _ in range(n):
        logits = torch.log_softmax((1.0 - a) * logits + a * target, dim=-1)
    return logits


def exact_ascent(task: Any, bilevel: Any, beta: float, lr: float, steps: int) -> float:
    """``F`` after ``steps`` SGD steps ``x <- x + lr dF/dx`` with the exact gradient (the
    estimator-free reference for a method's number of leader steps and step size)."""
    bilevel = copy.deepcopy(bilevel)
    params = list(bilevel.leader.parameters())
    for _ in range(steps):
        g = exact_gradient(task, bilevel, beta)
        x = bilevel.leader.flat_parameters().detach()
        torch.nn.utils.vector_to_parameters(x + lr * g, params)
    with torch.no_grad():
        return float(exact_objective(task, bilevel, beta))


def run_one(method: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    trainer = HPGDTrainer(make_config(method, seed, args, out), overwrite=True)
    b = trainer.bundles[0]
    task = trainer.task.with_log_ref(b.log_ref)
    follower, beta = b.follower, b.follower.beta
    a = follower.lr * beta
    K = trainer.config.follower_steps
    horizon = args.base_steps * 2**args.max_level if method.startswith("mlmc") else K
    F0 = trainer.exact_objective()["objective_exact"]
    bilevel0 = copy.deepcopy(trainer.bilevel)
    F_star = trainer.exact_local_optimum()
    curve, cum, t = [(0, F0)], 0, 0
    bias2, mse = [], []
    while True:
        x0 = trainer.leader.flat_parameters().detach().clone()
        grad = exact_gradient(task, trainer.bilevel, beta)
        with torch.no_grad():
            target = exact_policy(task, trainer.bilevel, beta).log()
            log_pi = trained_policy(follower.logits.clone(), target, a, horizon)
        mean = expected_hpgd(task, copy.deepcopy(trainer.bilevel), beta, log_pi)
        t += 1
        rec = trainer.step(t)
        trainer.history.append(rec)
        cum += int(rec.get(STEPS, K))
        if cum > args.budget:
            break
        g = (trainer.leader.flat_parameters().detach() - x0) / trainer.config.leader.lr
        bias2.append(float((mean - grad).pow(2).sum()))
        mse.append(float((g - grad).pow(2).sum()))
        curve.append((cum, rec["objective_exact"]))
        if cum == args.budget:
            break
    trainer.close()
    F = curve[-1][1]
    lr = trainer.config.leader.lr
    F_exact_steps = exact_ascent(task, bilevel0, beta, lr, len(curve) - 1)
    return {
        "method": method,
        "seed": seed,
        "F0": F0,
        "F_star": F_star,
        "F": F,
        "gap": F_star - F,
        "F_exact_steps": F_exact_steps,
        "iterations": len(curve) - 1,
        "follower_updates": curve[-1][0],
        "bias2": sum(bias2) / len(bias2),
        "mse": sum(mse) / len(mse),
        "curve": curve,
    }


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for m in METHODS:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        row: dict[str, float] = {}
        keys = ("F", "gap", "F_exact_steps", "iterations", "follower_updates", "bias2", "mse")
        for key in keys:
            row[key], row[f"{key}_se"] = mean_se([float(r[key]) for r in rs])
        table[m] = row
    return table


def curve_on_grid(runs: list[dict[str, Any]], budget: int, points: int = 65) -> dict[str, Any]:
    """Mean exact ``F`` per method at evenly spaced budgets (last value at or before each)."""
    grid = [round(budget * i / (points - 1)) for i in range(points)]
    out: dict[str, Any] = {"updates": grid}
    for m in METHODS:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        rows = []
        for r in rs:
            vals, j = [], 0
            for u in grid:
                while j + 1 < len(r["curve"]) and r["curve"][j + 1][0] <= u:
                    j += 1
                vals.append(r["curve"][j][1])
            rows.append(vals)
        out[m] = [sum(col) / len(col) for col in zip(*rows, strict=True)]
    return out


def plot(curves: dict[str, Any], F_star: float, path: Path, title: str) -> None:
    from tabular_reference.common.plots import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    for m in METHODS:
        if m in curves:
            ax.plot(curves["updates"], curves[m], label=m)
    ax.axhline(F_star, color="k", ls="--", lw=1, label="F(x*) (exact ascent)")
    ax.set_xlabel("cumulative follower updates")
    ax.set_ylabel("exact leader objective F(x)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=384, help="follower updates per run")
    ap.add_argument("--base-steps", type=int, default=1, help="n_0 (= K of plain_small)")
    ap.add_argument("--max-level", type=int, default=3, help="J_max (plain_large K = n_0 2^J)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--leader-lr", type=float, default=0.5, help="SGD lr (of plain_small)")
    ap.add_argument(
        "--scale-lr",
        action="store_true",
        help="scale each method's lr by its follower updates per iteration / n_0 (equal leader "
        "step per follower update)",
    )
    ap.add_argument(
        "--max-grad-norm", type=float, default=0.0, help="leader clipping (0: none; g = step / lr)"
    )
    ap.add_argument("--follower-lr", type=float, default=0.2, help="eta; eta * beta per step")
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--prompts", type=int, default=4, help="G prompts per estimate")
    ap.add_argument("--samples", type=int, default=8, help="N completions per prompt")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of F vs follower updates")
    args = ap.parse_args()
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for m in args.methods:
                runs.append(run_one(m, seed, args, Path(tmp)))
    table = summarise(runs)
    F_star = runs[0]["F_star"]
    print(f"F(x0) = {runs[0]['F0']:.5f}   F(x*) = {F_star:.5f}   budget {args.budget} updates")
    head = f"{'method':<18}{'F (mean±se)':>22}{'gap F*-F':>20}{'iters':>8}{'F exact-grad':>13}"
    print(head + f"{'bias^2':>10}{'mse':>9}")
    for m, row in table.items():
        print(
            f"{m:<18}{row['F']:>13.5f} ± {row['F_se']:.5f}{row['gap']:>12.5f} ± {row['gap_se']:.5f}"
            f"{row['iterations']:>8.1f}{row['F_exact_steps']:>13.5f}{row['bias2']:>10.5f}"
            f"{row['mse']:>9.4f}"
        )
    seconds = time.perf_counter() - t0
    print(f"{len(runs)} runs in {seconds:.1f} s")
    curves = curve_on_grid(runs, args.budget)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {
        "settings": settings,
        "F0": runs[0]["F0"],
        "F_star": F_star,
        "table": table,
        "curves": curves,
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
        "seconds": seconds,
    }
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    if args.plot is not None:
        title = (
            f"tiny-language, tabular follower (eta*beta={args.follower_lr * args.beta:g}), "
            f"budget {args.budget} updates, n0={args.base_steps}, Jmax={args.max_level}, "
            f"{args.seeds} seeds"
        )
        plot(curves, F_star, args.plot, title)


if __name__ == "__main__":
    main()
