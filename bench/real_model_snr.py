"""How far the real-model bench's HPGD direction can be trusted at a given leader budget.

At one leader and one follower (the bench's start: the untrained SmolLM2 follower and zero
incentive, or a trained arm's checkpoint with ``--arm-dir``), sample ``P`` training prompts x
``N`` completions once and compute the hypergradient of every prompt group separately (the
surrogate (SUR) of ``docs/theory.md`` §3 on one group; the estimator is their mean). From the
per-group gradients ``g_1..g_P`` (mean ``mu``, covariance ``Sigma``) it reports, for leader
budgets of ``G`` groups per update:

* per coordinate (context x component) the signal-to-noise ``|mu_j| / (sd_j / sqrt(G))``;
* the expected cosine between two independent estimates,
  ``||mu||^2 / (||mu||^2 + tr(Sigma) / G)`` (``E[g . g'] = ||mu||^2``,
  ``E||g||^2 = ||mu||^2 + tr Sigma / G``);
* the cosine of two disjoint halves of the sampled groups, measured.

Within-group size: the groups are also re-estimated from their first ``N/2`` completions, so
the effect of ``num_samples`` is measured, not assumed. Prompts are drawn per category evenly
(``G/3`` per category at budget ``G``), as every category has its own weights.

    python bench/real_model_snr.py --config configs/real_model.yaml --prompts-per-category 6 \\
        --samples 8 --out docs/real_model_snr.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def per_group_gradients(trainer: Any, rows: list[dict[str, Any]], n: int, keep: int) -> Any:
    """``[P, D]``: the HPGD surrogate's gradient on each prompt's group of ``keep`` of its
    ``n`` sampled completions (same samples for every ``keep``: pass the cached draw)."""
    import torch

    from align_cbrl.trainer import GroupedSamples, leader_surrogate

    follower = trainer.bundles[0].follower
    column = trainer.setup.context_column
    grads = []
    for r, completions in rows:
        comp = completions[:keep]
        keys = sorted(set(r) - {"prompt"})
        columns = {k: [r.get(k)] * keep for k in keys}
        scores = trainer_scores(trainer, [r["prompt"]] * keep, comp, columns)
        batch = GroupedSamples(
            "f", follower.beta, keep, [r["prompt"]] * keep, comp, columns, scores
        )
        trainer.leader.zero_grad(set_to_none=True)
        surrogate, _ = leader_surrogate(trainer.bilevel, [batch], "hpgd", column)
        surrogate.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in trainer.leader.parameters()]))
    return torch.stack(grads).double()


_SCORE_CACHE: dict[tuple[str, tuple[str, ...]], Any] = {}


def trainer_scores(trainer: Any, prompts: list[str], comps: list[str], columns: dict) -> Any:
    """Component scores of ``comps`` (cached: a subset's scores are the full group's rows)."""
    from align_cbrl.rewards.base import score_components

    key = (prompts[0], tuple(comps))
    if key not in _SCORE_CACHE:
        _SCORE_CACHE[key] = score_components(trainer.setup.components, prompts, comps, columns)
    return _SCORE_CACHE[key]


def budget_table(grads: Any, labels: list[str], budgets: list[int], per_cat: int) -> dict:
    """SNR per coordinate and the expected cosine at each budget ``G`` (module docstring).
    ``per_cat`` prompts per category were sampled; a coordinate's groups are its category's."""
    import torch

    P, _ = grads.shape
    mu = grads.mean(0)
    # a budget of G groups spreads them evenly over the 3 categories: a coordinate of one
    # category sees G/3 groups, each of which is zero outside its category; the estimator is
    # the mean over all G groups, so Var = Var_all-groups / G with zeros included
    var = grads.var(0, unbiased=True)
    out: dict[str, Any] = {"groups_sampled": P, "per_category": per_cat, "budgets": {}}
    trace = float(var.sum())
    norm2 = float(mu.pow(2).sum())
    for G in budgets:
        se = (var / G).sqrt()
        snr = torch.where(se > 0, mu.abs() / se, torch.zeros_like(se))
        out["budgets"][str(G)] = {
            "expected_cosine": norm2 / (norm2 + trace / G) if norm2 + trace > 0 else math.nan,
            "snr": {lab: float(s) for lab, s in zip(labels, snr, strict=True)},
            "coords_snr_ge_2": int((snr >= 2).sum()),
        }
    out["mean_gradient"] = {lab: float(m) for lab, m in zip(labels, mu, strict=True)}
    half = P // 2
    perm = torch.randperm(P, generator=torch.Generator().manual_seed(0))
    a, b = grads[perm[:half]].mean(0), grads[perm[half : 2 * half]].mean(0)
    out["split_half_cosine"] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    out["split_half_groups"] = half
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/real_model.yaml")
    ap.add_argument("--prompts-per-category", type=int, default=6)
    ap.add_argument("--samples", type=int, default=8, help="completions per prompt (N)")
    ap.add_argument("--budgets", default="4,12,24,48", help="groups per leader update to report")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    import torch

    from align_cbrl.cli import quiet_libraries, set_cpu_defaults
    from align_cbrl.utils.io import atomic_write_json

    set_cpu_defaults()
    quiet_libraries()
    import real_model  # the bench's own config loader and arm configs

    w0, c0 = time.perf_counter(), time.process_time()
    data, _ = real_model.load_bench_config(ROOT / args.config, {"seed": args.seed})
    out_root = Path("/tmp/real_model_snr")
    config = real_model.arm_config(data, "hpgd", out_root)
    trainer = real_model._timed_trainer_class()(config, overwrite=True)
    column = trainer.setup.context_column
    rows_all = trainer.bundles[0].rows
    cats = list(dict.fromkeys(r[column] for r in rows_all))
    rows = [
        r
        for c in cats
        for r in [x for x in rows_all if x[column] == c][: args.prompts_per_category]
    ]
    follower = trainer.bundles[0].follower
    drawn = []
    from tqdm.auto import tqdm

    for r in tqdm(rows, desc="sampling groups"):
        drawn.append((r, follower.sample([r["prompt"]], args.samples)[0]))
    names = trainer.setup.component_names
    # theta is [contexts, components] in the leader's context order
    labels = [f"{c}/{k}" for c in trainer.leader.context_index.values for k in names]
    budgets = [int(b) for b in args.budgets.split(",")]
    result: dict[str, Any] = {"config": args.config, "seed": args.seed, "samples": {}}
    for keep in sorted({args.samples, args.samples // 2}):
        grads = per_group_gradients(trainer, drawn, args.samples, keep)
        result["samples"][str(keep)] = budget_table(
            grads, labels, budgets, args.prompts_per_category
        )
    trainer.close()
    result["wall_s"] = time.perf_counter() - w0
    result["cpu_s"] = time.process_time() - c0
    result["torch_threads"] = torch.get_num_threads()
    for keep, tab in result["samples"].items():
        print(
            f"N = {keep} completions per prompt; split-half cosine {tab['split_half_cosine']:+.2f}"
        )
        for G, row in tab["budgets"].items():
            print(
                f"  G = {G:>3}: expected cosine {row['expected_cosine']:.2f}, "
                f"coordinates with SNR >= 2: {row['coords_snr_ge_2']} of {len(labels)}"
            )
    if args.out:
        atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
