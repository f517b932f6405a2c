"""Learning the incentive weights (HPGD) against sweeping them (a grid of hand-set weights), on
the enumerable tiny tasks with the exact ``F(x)`` (issue #23 item 6, ``docs/weight_sweep_tiny.md``).

**Tasks and follower.** The embedded tasks ``tiny_language`` and ``quickstart``
(:mod:`align_cbrl.data`: 3 contexts x 4 reward components, completions of at most two words),
each with the leader, schedule (``T`` iterations x ``K`` follower steps, ``G`` prompts x ``N``
completions per estimate) of its config file (``configs/tiny_language_grpo.yaml``,
``configs/quickstart.yaml``) and the follower swapped for ``trainer: tabular``
(:class:`~align_cbrl.followers.learning.SoftmaxFollower`: a softmax table over the completions,
started at ``pi_ref``, exact mirror-descent steps of size ``eta``, ``a = eta beta`` per step).
Its policy after ``n`` steps on a fixed reward ``r`` has the closed form
``pi_n ∝ pi_ref exp(lambda_n r / beta)``, ``lambda_n = 1 - (1 - a)^n``: the update
``log pi <- (1 - a) log pi + a log pi*`` contracts towards ``log pi* = log pi_ref + r / beta``.

**Separation.** With a per-context weight leader the incentive of a prompt uses only its
context's row ``w_c``, the cost ``0.25 i^2`` is per completion, and the tabular follower keeps one
independent softmax row per prompt (its update of prompt ``p`` reads only ``r(p, .)``). So both the
exact objective ``F(W) = sum_p P(p) E_{pi*_W(.|p)} rbar_W(p, .)`` and the objective ``J_n(W)`` of
the follower trained ``n`` steps split into per-context terms: ``F(W) = sum_c F_c(w_c)``. One
training run with every context on grid point ``g`` therefore measures ``F_c(g)`` for all
contexts at once, and the best joint table of the full grid (``n^(C K)`` tables) is the per-context
best, found with ``n^K`` runs (81 for 3 values per weight). :class:`ContextObjective` computes
``F_c`` and ``J_c`` for any batch of weight tables (checked against the library's exact objective
and against the orchestrated tabular follower in ``tests/test_weight_sweep_tiny.py``).

**Compared** (fractions of the exact optimal improvement ``(F - F(x0)) / (F* - F(x0))``, ``x0``
= zero incentive, ``F*`` the optimum over the leader's box ``[lo, hi]^(C K)``: projected gradient
ascent with the exact gradient from every point of the 5-value grid, per context):

* ``hpgd``: the orchestrated :class:`~align_cbrl.trainer.HPGDTrainer` run, ``F(x_t)`` after
  ``t`` iterations (``t K`` follower steps), one run per seed (the seed moves the leader's prompt
  and completion sampling; the tabular follower's training is deterministic). It runs on to the
  3-value grid's total steps.
* ``sweep``: ``m`` grid points (per context, ``m`` distinct points drawn at random per seed),
  each trained ``B / m`` or ``B`` steps from ``pi_ref`` (``B = T K``, HPGD's budget); the point
  with the best trained objective ``J_c`` is kept per context (noise-free, as the task is
  enumerable). Besides the 10 seeds, the exact expectation over random subsets is reported.
  At equal steps: ``m = 1`` with ``B`` steps, or ``m`` points with ``B / m`` steps each; at the
  grid's total steps: all ``n^K`` points with ``B`` steps each.

Also reported: ``J``, the leader objective that the trained follower itself gives (HPGD: its
follower after ``t K`` steps under the rewards it was trained on), as a fraction the same way.

Run (about 5 min of CPU, 302 s measured; ``nice``)::

    OMP_NUM_THREADS=1 PYTHONPATH=. nice -n 5 python bench/weight_sweep_tiny.py \
        --out docs/weight_sweep_tiny.json --plot docs/img/weight_sweep_tiny.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from bench_common import QUIET_RUN, tabular_follower

from align_cbrl.config_parser import from_dict
from align_cbrl.trainer import HPGDConfig, HPGDTrainer
from align_cbrl.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TASK_CONFIGS = {
    "tiny_language": ROOT / "configs" / "tiny_language_grpo.yaml",
    "quickstart": ROOT / "configs" / "quickstart.yaml",
}
# The hand-set grids, fixed before any result: 3 values (the primary sweep) and 5 values per
# weight inside the leader's box [-2, 2]. "g3_ends" was added after seeing that the optimum lies
# at the box's corners (a lucky practitioner's 3-value grid); it is reported as such.
GRIDS: dict[str, tuple[float, ...]] = {
    "g3": (-1.0, 0.0, 1.0),
    "g5": (-2.0, -1.0, 0.0, 1.0, 2.0),
    "g3_ends": (-2.0, 0.0, 2.0),
}


# ---------------------------------------------------------------------------- exact pieces
@dataclass
class ContextObjective:
    """Per-context exact objectives of an enumerable task with a per-context weight leader.

    For weight tables ``W[..., C, K]`` (rows in the leader's context order) and a follower
    policy ``pi_lam ∝ pi_ref exp(lam r_W / beta)`` (``lam = 1``: the best response ``pi*``;
    ``lam = lambda_n``: the tabular follower after ``n`` steps from ``pi_ref``),
    :meth:`values` returns ``[..., C]``: ``sum_{p in c} P(p) sum_y pi_lam(y|p) rbar_W(p, y)``,
    with ``r_W = a_c . s + w_c . s`` and ``rbar_W = b_c . s - cost(w_c . s)``."""

    scores: torch.Tensor  # [P, Y, K] component scores
    follower_base: torch.Tensor  # [P, Y] the follower's own reward a_c . s
    leader_base: torch.Tensor  # [P, Y] the leader's objective b_c . s (before cost)
    log_ref: torch.Tensor  # [P, Y]
    beta: float
    prompt_probs: torch.Tensor  # [P]
    context_of_prompt: torch.Tensor  # [P] row index of each prompt's context
    contexts: list[Any]
    cost: Callable[[torch.Tensor], torch.Tensor]
    lo: float
    hi: float

    @classmethod
    def from_trainer(cls, trainer: HPGDTrainer) -> ContextObjective:
        """From an orchestrated run on an enumerable task with one exact or tabular follower."""
        b = trainer.bundles[0]
        task, bilevel, leader = trainer.task, trainer.bilevel, trainer.leader
        P, Y, K = task.scores.shape
        flat = task.scores.reshape(P * Y, K)
        ctx = [c for c in task.contexts for _ in range(Y)]
        contexts = list(leader.context_index.values)
        with torch.no_grad():
            a = bilevel.follower(flat, ctx).reshape(P, Y).to(torch.float64)
            u = bilevel.upper(flat, ctx).reshape(P, Y).to(torch.float64)
        return cls(
            scores=task.scores.to(torch.float64),
            follower_base=a,
            leader_base=u,
            log_ref=task.with_log_ref(b.log_ref).log_ref,
            beta=float(b.follower.beta),
            prompt_probs=task.prompt_probs,
            context_of_prompt=torch.tensor([contexts.index(c) for c in task.contexts]),
            contexts=contexts,
            cost=leader.cost,
            lo=float(leader.param.lo),
            hi=float(leader.param.hi),
        )

    def values(self, W: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
        inc = (W[..., self.context_of_prompt, None, :] * self.scores).sum(-1)  # [..., P, Y]
        r = self.follower_base + inc
        rbar = self.leader_base - self.cost(inc)
        pi = torch.softmax(self.log_ref + lam * r / self.beta, dim=-1)
        per_prompt = self.prompt_probs * (pi * rbar).sum(-1)  # [..., P]
        onehot = torch.nn.functional.one_hot(self.context_of_prompt, len(self.contexts))
        return per_prompt @ onehot.to(per_prompt.dtype)


def trained_fraction(follower_lr: float, beta: float, steps: int) -> float:
    """``lambda_n = 1 - (1 - eta beta)^n``: how far ``n`` mirror-descent steps from ``pi_ref``
    move the tabular follower towards ``pi*`` in log space (module docstring)."""
    return -math.expm1(steps * math.log1p(-follower_lr * beta))


def box_ascent(
    f: Callable[[torch.Tensor], torch.Tensor],
    W0: torch.Tensor,
    lo: float,
    hi: float,
    steps: int = 1000,
    tol: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projected gradient ascent on ``f: [..., C, K] -> [..., C]``, whose entry ``c`` depends
    only on the row ``W[..., c, :]`` (so every row is its own problem, with its own step size):
    ``w <- clip(w + eta g, lo, hi)`` with Armijo backtracking (accept when
    ``f(w') >= f(w) + 1e-4 g . (w' - w)``, then ``eta <- 2 eta``; else ``eta <- eta / 2``).
    Stops when every projected gradient ``||clip(w + g) - w||`` is at most ``tol`` or after
    ``steps`` steps. Returns the rows, their values and their projected gradient norms (the
    first-order optimality of each row in the box: 0 at a stationary point)."""

    def value_grad(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W = W.detach().requires_grad_(True)
        F = f(W)
        (g,) = torch.autograd.grad(F.sum(), W)
        return F.detach(), g

    W = W0.detach().clamp(lo, hi)
    F, g = value_grad(W)
    eta = torch.ones(F.shape, dtype=W.dtype)
    for _ in range(steps):
        if float(((W + g).clamp(lo, hi) - W).norm(dim=-1).max()) <= tol:
            break
        W_new = (W + eta[..., None] * g).clamp(lo, hi)
        F_new, g_new = value_grad(W_new)
        ok = F_new >= F + 1e-4 * ((W_new - W) * g).sum(-1)
        W = torch.where(ok[..., None], W_new, W)
        F = torch.where(ok, F_new, F)
        g = torch.where(ok[..., None], g_new, g)
        eta = torch.where(ok, (2 * eta).clamp(max=16.0), eta / 2)
    return W, F, ((W + g).clamp(lo, hi) - W).norm(dim=-1)


def grid_points(values: Sequence[float], K: int) -> torch.Tensor:
    """All ``len(values)^K`` weight rows ``[N, K]`` (lexicographic)."""
    return torch.tensor(list(itertools.product(values, repeat=K)), dtype=torch.float64)


# ---------------------------------------------------------------------------- selection
def selection_order(J: torch.Tensor) -> torch.Tensor:
    """``order[r, c]``: the grid index with the ``r``-th best criterion ``J[:, c]`` (ties: the
    lower grid index first)."""
    return torch.sort(-J, dim=0, stable=True).indices


def select(
    F: torch.Tensor, J: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per context ``c``, among the grid points ``idx[:, c]`` the one with the best ``J[:, c]``
    (ties: lower grid index); its ``(F[., c], J[., c])``, each ``[C]``."""
    order = selection_order(J)
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(J.shape[0])[:, None].expand_as(order).contiguous())
    cols = torch.arange(J.shape[1])
    chosen = idx[rank.gather(0, idx).argmin(0), cols]
    return F[chosen, cols], J[chosen, cols]


def expected_selected(F: torch.Tensor, J: torch.Tensor, m: int) -> torch.Tensor:
    """Exact ``E[F_c(selected)]`` ``[C]`` when each context's ``m`` points are a uniform random
    subset (without replacement) of the ``N`` grid points and the best ``J`` is kept: the point of
    rank ``r`` is kept with probability ``C(N - 1 - r, m - 1) / C(N, m)``."""
    N = F.shape[0]
    if not 1 <= m <= N:
        raise ValueError(f"need 1 <= m <= {N} grid points, got m={m}")
    total = math.comb(N, m)
    w = torch.tensor([math.comb(N - 1 - r, m - 1) / total for r in range(N)], dtype=F.dtype)
    return (w[:, None] * F.gather(0, selection_order(J))).sum(0)


def random_subsets(N: int, C: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """``[m, C]``: per context ``m`` distinct grid indices, uniformly at random."""
    return torch.stack([torch.randperm(N, generator=generator)[:m] for _ in range(C)], dim=1)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


# ---------------------------------------------------------------------------- runs
def make_config(task: str, seed: int, iterations: int, follower_lr: float, out: Path) -> HPGDConfig:
    """The task's config file with a tabular follower (same ``beta``) and nothing written."""
    data = yaml.safe_load(TASK_CONFIGS[task].read_text())
    beta = data["followers"][0]["beta"]
    data.update(QUIET_RUN, output_dir=str(out / f"{task}_{seed}"), seed=seed, iterations=iterations)
    data["followers"] = [tabular_follower("tabular", beta, follower_lr, model="tiny-word")]
    return from_dict(HPGDConfig, data)


def run_hpgd(config: HPGDConfig, record_at: set[int]) -> dict[str, Any]:
    """One HPGD run: ``F(x_t)`` for ``t = 0..T`` and, at the iterations in ``record_at``, ``J``:
    the leader objective of the follower after ``t K`` steps under the rewards it trained on."""
    trainer = HPGDTrainer(config, overwrite=True)
    b = trainer.bundles[0]
    view = trainer.task.with_log_ref(b.log_ref)
    F = [trainer.exact_objective()["objective_exact"]]
    J: dict[int, float] = {}
    for t in range(1, config.iterations + 1):
        with torch.no_grad():
            _, rbar = view.rewards(trainer.bilevel)  # the leader the follower trains under
        rec = trainer.step(t)
        trainer.history.append(rec)
        F.append(rec["objective_exact"])
        if t in record_at:
            pi = b.follower.log_policy().exp()
            J[t] = float((view.prompt_probs * (pi * rbar).sum(-1)).sum())
    trainer.close()
    return {"seed": config.seed, "F": F, "J": J}


def task_reference(trainer: HPGDTrainer) -> tuple[ContextObjective, dict[str, Any]]:
    """The per-context objective, ``F(x0)``, the sigmoid ascent's local optimum from ``x0`` and
    the box optimum (projected ascent from every point of the 5-value grid)."""
    obj = ContextObjective.from_trainer(trainer)
    C, K = len(obj.contexts), obj.scores.shape[-1]
    F0 = float(obj.values(torch.zeros(C, K, dtype=torch.float64)).sum())
    F0_lib = trainer.exact_objective()["objective_exact"]
    if abs(F0 - F0_lib) > 1e-12:
        raise RuntimeError(f"per-context F(x0) {F0} != the trainer's exact F {F0_lib}")
    starts = grid_points(GRIDS["g5"], K)[:, None, :].expand(-1, C, K)
    W, Fv, pg = box_ascent(obj.values, starts, obj.lo, obj.hi)
    best = Fv.argmax(0)
    cols = torch.arange(C)
    W_star = W[best, cols]
    F_star = float(obj.values(W_star).sum())
    F_local = float(trainer.exact_local_optimum())
    if F_star < F_local - 1e-9:
        raise RuntimeError(
            f"box ascent {F_star} below the sigmoid ascent's local optimum {F_local}"
        )
    # starts still moving after the step limit (slow, flat regions): their best value per context
    moving = pg > 1e-6
    moving_best = torch.where(moving, Fv, torch.full_like(Fv, -math.inf)).max(0).values
    names = list(trainer.task.component_names)
    ref = {
        "F0": F0,
        "F_star": F_star,
        "F_local_from_x0": F_local,
        "frac_local_from_x0": (F_local - F0) / (F_star - F0),
        "W_star": {
            str(c): dict(zip(names, W_star[i].tolist(), strict=True))
            for i, c in enumerate(obj.contexts)
        },
        "box_ascent_starts": len(starts),
        "box_ascent_projected_grad_at_optimum": pg[best, cols].tolist(),
        "box_ascent_F_c_at_optimum": Fv[best, cols].tolist(),
        "box_ascent_starts_still_moving": moving.sum(0).tolist(),
        "box_ascent_best_F_c_of_moving_starts": [
            v if math.isfinite(v) else None for v in moving_best.tolist()
        ],
    }
    return obj, ref


# ---------------------------------------------------------------------------- protocols
def sweep_rows(
    obj: ContextObjective,
    grid: str,
    budget: int,
    split: Sequence[int],
    seeds: Sequence[int],
    frac: Callable[[float], float],
    follower_lr: float,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sweep's rows (one point with ``B`` steps, ``m`` points with ``B // m`` steps each, all
    points with ``B`` steps each) and its curve (exact expected best-of-``m`` at ``m B`` steps)."""
    C, K = len(obj.contexts), obj.scores.shape[-1]
    pts = grid_points(GRIDS[grid], K)
    N = len(pts)
    W = pts[:, None, :].expand(N, C, K)
    with torch.no_grad():
        F = obj.values(W)

        def J_after(steps: int) -> torch.Tensor:
            return obj.values(W, trained_fraction(follower_lr, obj.beta, steps))

        protocols = [("one_point", 1, budget)]
        protocols += [(f"split_{m}", m, budget // m) for m in split]
        protocols.append(("full", N, budget))
        rows = []
        for name, m, steps in protocols:
            J = J_after(steps)
            per_seed = []
            for s in seeds:
                idx = random_subsets(N, C, m, torch.Generator().manual_seed(s))
                Fs, Js = select(F, J, idx)
                per_seed.append((frac(float(Fs.sum())), frac(float(Js.sum()))))
            fF, fJ = zip(*per_seed, strict=True)
            (mF, sF), (mJ, sJ) = mean_se(fF), mean_se(fJ)
            rows.append(
                {
                    "grid": grid,
                    "values": list(GRIDS[grid]),
                    "protocol": name,
                    "points": m,
                    "steps_per_point": steps,
                    "follower_steps": m * steps,
                    "frac_F_mean": mF,
                    "frac_F_se": sF,
                    "frac_F_expected": frac(float(expected_selected(F, J, m).sum())),
                    "frac_J_mean": mJ,
                    "frac_J_se": sJ,
                    "frac_J_expected": frac(float(expected_selected(J, J, m).sum())),
                    "per_seed_frac_F": list(fF),
                }
            )
        J_B = J_after(budget)
        ms = sorted({min(N, 2**i) for i in range(N.bit_length() + 1)})
        curve = {
            "follower_steps": [m * budget for m in ms],
            "frac_F_expected": [frac(float(expected_selected(F, J_B, m).sum())) for m in ms],
        }
        best = selection_order(J_B)[0]
        rows[-1]["best_weights"] = {
            str(c): pts[best[i]].tolist() for i, c in enumerate(obj.contexts)
        }
    return rows, curve


def hpgd_rows(
    runs: list[dict[str, Any]],
    T: int,
    K: int,
    checkpoints: Sequence[int],
    frac: Callable[[float], float],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """HPGD's rows at the iterations ``checkpoints`` and its mean curve (log-spaced iterations)."""
    rows = []
    for t in checkpoints:
        fF = [frac(r["F"][t]) for r in runs]
        fJ = [frac(r["J"][t]) for r in runs]
        (mF, sF), (mJ, sJ) = mean_se(fF), mean_se(fJ)
        rows.append(
            {
                "grid": None,
                "protocol": "hpgd",
                "iterations": t,
                "follower_steps": t * K,
                "frac_F_mean": mF,
                "frac_F_se": sF,
                "frac_J_mean": mJ,
                "frac_J_se": sJ,
                "per_seed_frac_F": fF,
            }
        )
    last = len(runs[0]["F"]) - 1
    ts = sorted({0, *(round(last ** (i / 60)) for i in range(61)), T})
    stats = [mean_se([frac(r["F"][t]) for r in runs]) for t in ts]
    curve = {
        "follower_steps": [t * K for t in ts],
        "frac_F_mean": [m for m, _ in stats],
        "frac_F_se": [s for _, s in stats],
    }
    return rows, curve


def run_task(task: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Reference, HPGD over the seeds and the sweeps on one task (module docstring)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    raw = yaml.safe_load(TASK_CONFIGS[task].read_text())
    T, K = int(raw["iterations"]), int(raw["follower_steps"])
    budget = T * K
    ref_trainer = HPGDTrainer(
        make_config(task, 0, 1, args.follower_lr, tmp / "ref"), overwrite=True
    )
    obj, ref = task_reference(ref_trainer)
    ref_trainer.close()
    F0, F_star = ref["F0"], ref["F_star"]

    def frac(v: float) -> float:
        return (v - F0) / (F_star - F0)

    n3 = len(GRIDS["g3"]) ** obj.scores.shape[-1]
    long_T = T * (n3 if args.hpgd_multiple is None else args.hpgd_multiple)
    seeds = list(range(args.seeds))
    wall1, cpu1 = time.perf_counter(), time.process_time()
    runs = [
        run_hpgd(make_config(task, s, long_T, args.follower_lr, tmp), {T, long_T}) for s in seeds
    ]
    hpgd_wall, hpgd_cpu = time.perf_counter() - wall1, time.process_time() - cpu1
    rows, h_curve = hpgd_rows(runs, T, K, sorted({T, long_T}), frac)
    curves: dict[str, Any] = {"hpgd": h_curve}
    for grid in GRIDS:
        g_rows, curves[grid] = sweep_rows(
            obj, grid, budget, args.split, seeds, frac, args.follower_lr
        )
        rows += g_rows
    cfg = make_config(task, 0, T, args.follower_lr, tmp)
    lc = cfg.leader
    return {
        "config_file": str(TASK_CONFIGS[task].relative_to(ROOT)),
        "hpgd": {
            "iterations": T,
            "follower_steps_per_iteration": K,
            "budget_B": budget,
            "prompts_per_iteration": cfg.prompts_per_iteration,
            "num_samples": cfg.num_samples,
            "leader_optimizer": lc.optimizer,
            "leader_lr": lc.lr,
            "max_grad_norm": lc.max_grad_norm,
            "follower": "tabular",
            "follower_lr": args.follower_lr,
            "beta": obj.beta,
            "long_iterations": long_T,
        },
        "contexts": [str(c) for c in obj.contexts],
        "components": list(next(iter(ref["W_star"].values()))),
        "reference": ref,
        "rows": rows,
        "curves": curves,
        "hpgd_wall_s": hpgd_wall,
        "hpgd_cpu_s": hpgd_cpu,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
    }


def print_table(task: str, result: dict[str, Any]) -> None:
    ref = result["reference"]
    print(
        f"\n{task}: F(x0) = {ref['F0']:.5f}  F* (box) = {ref['F_star']:.5f}  sigmoid ascent from "
        f"x0: {ref['F_local_from_x0']:.5f} ({ref['frac_local_from_x0']:.3f})"
    )
    print(f"{'arm':<28}{'steps':>9}{'frac F (mean ± se)':>24}{'expected':>10}{'frac J':>18}")
    for r in result["rows"]:
        arm = "hpgd" if r["grid"] is None else f"{r['grid']} {r['protocol']}"
        if r["grid"] is not None and r["protocol"] != "full":
            arm += f" ({r['points']}x{r['steps_per_point']})"
        exp = f"{r['frac_F_expected']:.4f}" if "frac_F_expected" in r else ""
        print(
            f"{arm:<28}{r['follower_steps']:>9}{r['frac_F_mean']:>14.4f} ± {r['frac_F_se']:.4f}"
            f"{exp:>10}{r['frac_J_mean']:>10.4f} ± {r['frac_J_se']:.4f}"
        )
    print(f"HPGD {result['hpgd_wall_s']:.1f} s wall, {result['hpgd_cpu_s']:.1f} s CPU")


STYLES = {"g3": ("C1", "-"), "g5": ("C2", "-"), "g3_ends": ("C3", ":")}


def _plot_steps(ax: Any, res: dict[str, Any], seeds: int) -> None:
    """Fraction of the optimum vs total follower steps: HPGD's mean curve (± s.e.) and the
    sweeps' exact expected best of ``m`` points with ``B`` steps each."""
    h = res["curves"]["hpgd"]
    keep = [i for i, v in enumerate(h["follower_steps"]) if v > 0]
    x = [h["follower_steps"][i] for i in keep]
    m = [h["frac_F_mean"][i] for i in keep]
    se = [h["frac_F_se"][i] for i in keep]
    ax.plot(x, m, color="C0", label=f"HPGD, one run (mean ± s.e., {seeds} seeds)")
    ax.fill_between(x, [a - b for a, b in zip(m, se)], [a + b for a, b in zip(m, se)], alpha=0.3)
    for grid, (color, ls) in STYLES.items():
        c = res["curves"][grid]
        label = f"best of m grid points {GRIDS[grid]}, B steps each"
        ax.plot(
            c["follower_steps"], c["frac_F_expected"], color=color, ls=ls, marker=".", label=label
        )
    ax.axvline(res["hpgd"]["budget_B"], color="k", lw=0.6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("total follower steps (vertical line: B = T K, one HPGD run)")


def _plot_equal(ax: Any, res: dict[str, Any]) -> None:
    """At HPGD's budget ``B``: the sweeps' best of ``m`` points with ``B / m`` steps each (line:
    exact expectation over random subsets; error bars: the seeds' mean ± s.e.) and HPGD."""
    hp = next(r for r in res["rows"] if r["grid"] is None)
    ax.axhspan(hp["frac_F_mean"] - hp["frac_F_se"], hp["frac_F_mean"] + hp["frac_F_se"], alpha=0.3)
    ax.axhline(hp["frac_F_mean"], color="C0", label=f"HPGD at B = {hp['follower_steps']} steps")
    for grid, (color, ls) in STYLES.items():
        rows = [r for r in res["rows"] if r["grid"] == grid and r["protocol"] != "full"]
        ms = [r["points"] for r in rows]
        ax.plot(
            ms,
            [r["frac_F_expected"] for r in rows],
            color=color,
            ls=ls,
            label=f"sweep {GRIDS[grid]}",
        )
        ax.errorbar(
            ms,
            [r["frac_F_mean"] for r in rows],
            [r["frac_F_se"] for r in rows],
            color=color,
            fmt="o",
            ms=3,
            capsize=2,
        )
    ax.set_xscale("log")
    ax.set_xlabel("grid points m sharing the budget B (B / m follower steps each)")


def plot(results: dict[str, Any], path: Path, seeds: int) -> None:
    from tabular_reference.common.plots import pyplot, save_figure

    n = len(results)
    fig, axes = pyplot().subplots(2, n, figsize=(6.2 * n, 8.4), squeeze=False)
    for j, (task, res) in enumerate(results.items()):
        _plot_steps(axes[0][j], res, seeds)
        _plot_equal(axes[1][j], res)
        for ax, what in ((axes[0][j], "vs total follower steps"), (axes[1][j], "at equal steps B")):
            ax.axhline(1.0, color="k", lw=1, ls="--", label="box optimum F*")
            ax.axhline(
                res["reference"]["frac_local_from_x0"],
                color="grey",
                lw=1,
                ls="-.",
                label="exact gradient ascent from x0",
            )
            ax.set_ylim(-1.0, 1.05)
            ax.set_ylabel("(F - F(x0)) / (F* - F(x0)), exact")
            ax.set_title(f"{task}: {what}", fontsize=9)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASK_CONFIGS), choices=list(TASK_CONFIGS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--follower-lr", type=float, default=0.2, help="tabular eta (eta*beta/step)")
    ap.add_argument(
        "--split", type=int, nargs="+", default=[2, 4, 5, 10, 20], help="m of split sweeps"
    )
    ap.add_argument(
        "--hpgd-multiple",
        type=int,
        default=None,
        help="HPGD runs this many times B (default: the 3-value grid's size, its total steps)",
    )
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--plot", type=Path, default=None, help="PNG")
    args = ap.parse_args()
    if args.seeds < 2 or any(m < 1 for m in args.split):
        raise SystemExit("need --seeds >= 2 and --split values >= 1")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            results[task] = run_task(task, args, Path(tmp))
            print_table(task, results[task])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"\ntotal {wall:.1f} s wall, {cpu:.1f} s CPU")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out = {"settings": settings, "grids": {k: list(v) for k, v in GRIDS.items()}, "tasks": results}
    out.update(wall_s=wall, cpu_s=cpu)
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    if args.plot is not None:
        plot(results, args.plot, args.seeds)


if __name__ == "__main__":
    main()
