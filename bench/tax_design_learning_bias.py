"""Bias of HPGD vs the households' training budget ``n`` in the tax design (``docs/accelerated.md``).

Fixed taxes ``theta``: the iterate after ``--theta-iters`` steps of exact-hypergradient ascent
(algorithm ``exact``: lr ``--lr``, clipping 1) from the paper's initial rates 0.3, household
temperature ``--lam``. Fixed household start: ``cold`` (``V = 0``) or ``lagged`` (the exact soft
values at the iterate ``--lag`` ascent steps earlier: warm-started households that have not
caught up). For every ``n`` the households train ``n`` soft value-iteration sweeps from that start
(:class:`tabular_reference.tax_design.learning.LearningHouseholds`, deterministic), then:

* ``hpgd``: ``--m`` HPGD estimates, each from ``--episodes`` sampled 200-step episodes of the
  learned softmax policy (both household types in equal shares), form ``--form`` with
  ``leader_q="table"`` and the exact leader value table of the learned policy (so that the
  households' training is the only source of bias: ``covariance`` is unbiased at ``n = inf``),
  Rao-Blackwellised follower transition term (the default);
* ``plug-in``: what HPGD estimates, evaluated exactly at the learned policy and critic
  (:func:`tabular_reference.tax_design.learning.policy_hypergradient`, no sampling noise);

and the multilevel estimator (``docs/theory.md`` §9, ``n_0 = --base``, ``J_max`` in ``--levels``):
``--m-ml`` draws of ``--ml-batch`` runs each (one level ``J`` per draw, shared by its runs; the
levels of a run reuse one seed, i.e. common random numbers), each from the same household start.
Against ``exact_hypergradient()``: relative bias ``||mean - exact|| / ||exact||``, its standard
error ``sqrt(tr Cov / M) / ||exact||`` (multilevel: from the per-draw means), the cosine, the
per-estimate spread and the sweeps per estimate.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python bench/tax_design_learning_bias.py``.
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
from bench_common import multilevel_row, run_starts

from align_cbrl.estimators.multilevel import MultilevelSchedule, multilevel_estimate
from tabular_reference.common.bias import bias_summary, point_bias
from tabular_reference.common.optim import sgd_ascent
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.hypergradient import (
    EstimationPoint,
    exact_hypergradient,
    hypergradient,
)
from tabular_reference.tax_design.learning import LearningHouseholds, policy_hypergradient
from tabular_reference.tax_design.rewards import initial_theta, rates
from tabular_reference.tax_design.sampling import balanced_contexts, draw_seed, rollout
from tabular_reference.tax_design.solver import FollowerSolution, leader_values

PLOT_LABELS = {
    "who": "household",
    "plug_in": "plug-in at learned policy",
    "exact": "exact households",
    "title": "tax design, household start: ",
}


def tax_iterates(econ: Economy, beta: float, iters: int, lr: float) -> list[torch.Tensor]:
    """Exact-hypergradient ascent from the initial rates: ``theta_0 .. theta_iters`` ``[1, 4]``."""
    theta, V, out = initial_theta(1), None, []
    out.append(theta)
    for _ in range(iters):
        _, g, sol = exact_hypergradient(econ, theta, beta, V0=V)
        V = sol.V
        theta = sgd_ascent(theta, g, lr, 1.0)
        out.append(theta)
    return out


class Bench:
    """The estimates of one (taxes, household start) pair, ``R`` runs at a time."""

    def __init__(self, econ: Economy, args: argparse.Namespace, theta: torch.Tensor, V0):
        self.econ, self.args, self.R = econ, args, args.batch
        self.theta = theta.expand(self.R, 4).clone()
        self.beta = torch.full((self.R,), args.lam, dtype=torch.float64)
        self.V0 = V0.expand(self.R, *V0.shape[1:]).clone()
        self.ctx = balanced_contexts(econ, self.R, args.episodes)

    def households(self, R: int | None = None) -> LearningHouseholds:
        R = R or self.R
        hh = LearningHouseholds(self.econ, R, self.beta[:R])
        hh.set_table(self.V0[:R])
        return hh

    def estimate(self, sol: FollowerSolution, seed: int, R: int | None = None) -> torch.Tensor:
        """One HPGD estimate per run ``[R, 4]`` from the learned solution ``sol``."""
        R = R or self.R
        econ, theta = self.econ, self.theta[:R]
        x = rates(theta)
        Vbar = leader_values(econ, sol.P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
        traj = rollout(econ, sol, x[:, 0], self.ctx[:R], 200, torch.Generator().manual_seed(seed))
        g, _ = hypergradient(
            EstimationPoint(econ, theta, self.beta[:R], sol), traj, form=self.args.form, critic=Vbar
        )
        return g

    def plain(self, n: int | None, m: int, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(m estimates [m, 4], plug-in [4])`` after ``n`` sweeps (``None``: exact)."""
        sol = self.households().advance(self.theta, n, tol=1e-12)
        one = self.households(1).advance(self.theta[:1], n, tol=1e-12)
        plug = policy_hypergradient(self.econ, self.theta[:1], self.beta[:1], one)
        out = [self.estimate(sol, draw_seed(gen)) for _ in range(-(-m // self.R))]
        return torch.cat(out)[:m].numpy(), plug[0].numpy()

    def multilevel(self, sched: MultilevelSchedule, m: int, R: int, gen: torch.Generator):
        """``m`` multilevel draws of ``R`` runs: per-draw means ``[m, 4]``, all ``[m R, 4]``,
        mean sweeps per draw."""
        means, every, steps = [], [], 0
        for _ in range(m):
            hh, seed = self.households(R), draw_seed(gen)
            sol = _Holder()

            def advance(k: int, hh=hh, seed=seed, sol=sol) -> torch.Tensor:
                sol.value = hh.advance(self.theta[:R], k)
                return self.estimate(sol.value, seed, R)

            est = multilevel_estimate(advance, sched, generator=gen)
            every.append(est.gradient)
            means.append(est.gradient.mean(0))
            steps += est.follower_steps
        return torch.stack(means).numpy(), torch.cat(every).numpy(), steps / m


class _Holder:
    value: FollowerSolution | None = None


def measure(econ, args, theta, theta_lag, kind: str) -> dict:
    if kind == "cold":
        V0 = torch.zeros(1, econ.n_contexts, econ.n_states, dtype=torch.float64)
    else:
        V0 = exact_hypergradient(econ, theta_lag, args.lam)[2].V
    _, exact_t, _ = exact_hypergradient(econ, theta, args.lam, tol=1e-12)
    exact = exact_t[0].numpy()
    b = Bench(econ, args, theta, V0)
    gen = torch.Generator().manual_seed(args.seed + (kind == "lagged"))
    rows = []
    for n in [int(v) for v in args.ns.split(",")] + [None]:
        t0 = time.perf_counter()
        est, plug = b.plain(n, args.m, gen)
        row = {
            "n": "inf" if n is None else n,
            **bias_summary(est, exact),
            "plug_in": point_bias(plug, exact),
        }
        rows.append(row | {"wall_s": time.perf_counter() - t0})
        print(
            kind,
            "n",
            row["n"],
            json.dumps({k: row[k] for k in ("rel_bias", "rel_se", "cosine")}),
            "plug-in",
            json.dumps(row["plug_in"]),
            flush=True,
        )
    ml = []
    for J in [int(v) for v in args.levels.split(",") if v]:
        sched = MultilevelSchedule(args.base, J)
        t0 = time.perf_counter()
        means, every, steps = b.multilevel(sched, args.m_ml, args.ml_batch, gen)
        row = multilevel_row(sched, steps, bias_summary(every, exact, means))
        ml.append(row | {"wall_s": time.perf_counter() - t0})
        print(kind, "mlmc", json.dumps(row), flush=True)
    return {
        "start": kind,
        "exact": exact.tolist(),
        "exact_norm": float(np.linalg.norm(exact)),
        "plain": rows,
        "multilevel": ml,
    }


def report(res: dict) -> str:
    """The markdown tables of ``docs/accelerated.md`` from the results file."""
    lines = []
    for r in res["results"]:
        lines += [
            f"Household start **{r['start']}** (||exact|| = {r['exact_norm']:.3f}):",
            "",
            "| sweeps n | rel. bias of the mean | ± s.e. | cosine | spread / estimate "
            "| plug-in at the learned policy: rel. bias | cosine |",
            "|---" * 7 + "|",
        ]
        for p in r["plain"]:
            lines.append(
                f"| {p['n']} | {p['rel_bias']:.4f} | {p['rel_se']:.4f} | {p['cosine']:.5f} | "
                f"{p['rel_spread']:.3f} | {p['plug_in']['rel_bias']:.2e} | "
                f"{p['plug_in']['cosine']:.6f} |"
            )
        if r["multilevel"]:
            lines += [
                "",
                "| multilevel n0, J_max (top level) | sweeps / estimate (expected) | "
                "rel. bias | ± s.e. | cosine | spread / estimate |",
                "|---" * 6 + "|",
            ]
            for m in r["multilevel"]:
                lines.append(
                    f"| {m['base_steps']}, {m['max_level']} ({m['top']}) | {m['sweeps']:.1f} "
                    f"({m['expected_sweeps']:.1f}) | {m['rel_bias']:.4f} | {m['rel_se']:.4f} | "
                    f"{m['cosine']:.5f} | {m['rel_spread']:.3f} |"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lam", type=float, default=0.1, help="household temperature beta")
    ap.add_argument("--theta-iters", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--lag", type=int, default=20)
    ap.add_argument("--ns", default="1,2,4,8,16,32,64")
    ap.add_argument("--form", default="covariance")
    ap.add_argument("--episodes", type=int, default=300, help="200-step episodes per estimate")
    ap.add_argument("--m", type=int, default=600, help="HPGD estimates per n")
    ap.add_argument("--batch", type=int, default=50, help="runs simulated at once")
    ap.add_argument("--base", type=int, default=4)
    ap.add_argument("--levels", default="2,4")
    ap.add_argument("--m-ml", type=int, default=60, help="multilevel draws (levels)")
    ap.add_argument("--ml-batch", type=int, default=10, help="runs per multilevel draw")
    ap.add_argument("--starts", default="cold,lagged")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="docs/accelerated_tax_design.json")
    ap.add_argument("--plot", default="docs/img/accelerated_tax_bias.png")
    ap.add_argument("--report", action="store_true", help="print the tables of --json and exit")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(Path(args.json).read_text())))
        return
    econ = Economy()
    t0 = time.perf_counter()
    thetas = tax_iterates(econ, args.lam, args.theta_iters, args.lr)
    theta, theta_lag = thetas[-1], thetas[max(0, args.theta_iters - args.lag)]
    print("theta", theta.tolist(), "rates", rates(theta).tolist(), flush=True)
    header = {
        "args": vars(args),
        "theta": theta.tolist(),
        "rates": rates(theta).tolist(),
        "theta_lag": theta_lag.tolist(),
    }
    kinds = args.starts.split(",")
    run_starts(
        args, header, PLOT_LABELS, t0, kinds, lambda k: measure(econ, args, theta, theta_lag, k)
    )


if __name__ == "__main__":
    main()
