"""The main job (``make quickstart`` = ``python -m align_cbrl.quickstart``): HPGD on an embedded
default, no downloads.

A tiny word-level Llama follower (built locally, cached under ``~/.cache/align_cbrl/tiny``) is
fine-tuned with TRL's GRPO (``beta = 0.5``, ``scale_rewards="none"``, ``kl_mode="reward"``: the
KL as a sequence-level reward penalty, whose fixed point is exactly ``pi*``) on the embedded
``quickstart`` prompt set (:mod:`align_cbrl.data`): six prompts in three categories. The
follower's own reward likes long, confident answers (``0.5 * words + 0.5 * "sure"``); the leader
wants short answers to ``quick`` prompts, ``please`` in ``polite`` ones and no ``sure`` (but a
``maybe``) in ``careful`` ones, and pays a quadratic cost ``0.25 * incentive^2``. Its incentive is
a per-category weighting of the four rule-based components, bounded to ``[-2, 2]``.

Three arms with the same seeds: the HPGD leader, no leader (zero incentive, never updated) and a
naive leader (gradient of ``E rbar`` ignoring the follower's reaction). The naive gradient here
is ``-d cost``, exactly zero at zero incentive: a leader that ignores how the follower reacts
sees no reason to pay anything, so it ends where "no leader" does. Completions have at most
two words, so the leader objective ``F(x)`` is also computed *exactly* (``docs/theory.md §3``,
enumerable case) next to its estimate on held-out samples. Prints a table and writes
``runs/quickstart/{comparison.png, summary.json, <arm>/...}``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ARMS", "QUICKSTART_CONFIG", "format_table", "main", "run_quickstart"]

QUICKSTART_CONFIG: dict[str, Any] = {
    "output_dir": "runs/quickstart",
    "seed": 0,
    "task": "quickstart",
    "iterations": 20,
    "follower_steps": 10,
    "prompts_per_iteration": 6,
    "num_samples": 8,
    "save_every": 0,
    "keep_checkpoints": 1,
    "eval_samples": 64,
    "leader": {
        "spec": {
            "type": "weights",
            "parametrization": "sigmoid",
            "lo": -2.0,
            "hi": 2.0,
            "init_weights": 0.0,
            "cost_coef": 0.25,
            "cost_kind": "l2",
        },
        "estimator": "hpgd",
        "optimizer": "adam",
        "lr": 0.3,
        "max_grad_norm": 1.0,
    },
    "followers": [
        {
            "name": "assistant",
            "trainer": "grpo",
            "model": "tiny-word",
            "beta": 0.5,
            "prompts_per_step": 3,
            "kl_mode": "reward",
            "trl": {"learning_rate": 0.02, "num_generations": 8, "scale_rewards": "none"},
        }
    ],
}
"""The quickstart run (HPGD arm); ``configs/quickstart.yaml`` holds the same settings."""

ARMS: dict[str, dict[str, Any]] = {
    "HPGD leader": {"leader.estimator": "hpgd"},
    "no leader": {"leader.estimator": "fixed"},
    "naive leader": {"leader.estimator": "naive"},
}
"""The compared arms: dotted overrides of :data:`QUICKSTART_CONFIG` (same seeds)."""


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_")


def run_quickstart(
    output_dir: str | os.PathLike[str] = "runs/quickstart",
    overrides: Mapping[str, Any] | None = None,
    arms: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run every arm (fresh, replacing earlier quickstart results under ``output_dir``) and
    return ``{arm: {"summary": ..., "history": [...], "seconds": ...}}``; writes the comparison
    plot and ``summary.json``."""
    from align_cbrl.utils.env import pin_cpu_kernels, quiet_libraries, set_cpu_defaults

    pin_cpu_kernels()  # the same kernel path, hence the same digits, on every AVX2 CPU
    set_cpu_defaults()
    quiet_libraries()
    from align_cbrl.config_parser import from_dict, set_dotted
    from align_cbrl.trainer import HPGDConfig, HPGDTrainer
    from align_cbrl.trainer.plots import plot_comparison
    from align_cbrl.utils.env import cpu_kernel_paths
    from align_cbrl.utils.io import atomic_write_json

    out = Path(output_dir)
    arms = ARMS if arms is None else arms
    results: dict[str, dict[str, Any]] = {}
    references: dict[str, float] = {}
    for arm, arm_overrides in arms.items():
        data = copy.deepcopy(QUICKSTART_CONFIG)
        for k, v in {**dict(overrides or {}), **dict(arm_overrides)}.items():
            set_dotted(data, k, v)
        data["output_dir"] = str(out / _slug(arm))
        data["progress"] = progress
        config = from_dict(HPGDConfig, data)
        t0 = time.perf_counter()
        trainer = HPGDTrainer(config, overwrite=True)
        if not references:
            F = exact_optimum(trainer)
            if F is not None:
                references["exact gradient ascent from x0 (reference)"] = F
        try:
            summary = trainer.train()
        finally:
            trainer.close()
        if config.leader.estimator == "hpgd":
            F = exact_optimum(trainer)
            if F is not None:
                references[f"exact gradient ascent from the {arm} (reference)"] = F
        # the exact references (here and the F(x*) line of training.png) are not part of the
        # arm's time; they are computed once per starting point in the process
        seconds = time.perf_counter() - t0 - trainer.exact_optimum_seconds
        results[arm] = {"summary": summary, "history": trainer.history, "seconds": seconds}
    plot_comparison(
        {arm: r["history"] for arm, r in results.items()},
        out / "comparison.png",
        title="quickstart: exact leader objective F(x)",
    )
    doc: dict[str, Any] = {
        arm: {"seconds": r["seconds"], **r["summary"]} for arm, r in results.items()
    }
    doc["exact_references"] = references
    doc["cpu_kernels"] = cpu_kernel_paths()
    atomic_write_json(out / "summary.json", doc)
    for name, F in references.items():
        results[name] = {"summary": {"eval/objective_exact": F}}
    return results


def exact_optimum(trainer: Any) -> float | None:
    """``F`` at the local optimum that exact gradient ascent reaches from the trainer's current
    leader (:meth:`HPGDTrainer.exact_local_optimum`: ``optimize_exact``, single follower,
    enumerable task). ``F`` is not concave here: from ``x0`` the ascent stalls at a poor local optimum in
    the ``quick`` category (small penalties cost more than they change), so the quickstart also
    reports the ascent started at the HPGD leader."""
    return trainer.exact_local_optimum()


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The result table (held-out numbers are means over fresh samples of every prompt)."""
    head = (
        "| arm | leader objective F(x), exact | leader objective, held-out estimate | "
        "follower base reward | incentive paid (mean) | incentive cost | seconds |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]

    def num(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, int | float) else "-"

    def mean(s: Mapping[str, Any], key: str) -> float | None:
        fols = sorted({k.split("/")[1] for k in s if k.startswith("eval/") and k.endswith("/cost")})
        return sum(s[f"eval/{f}/{key}"] for f in fols) / len(fols) if fols else None

    for arm, r in results.items():
        s = r["summary"]
        lines.append(
            f"| {arm} | {num(s.get('eval/objective_exact'))} | "
            f"{num(s.get('eval/objective_estimate'))} | {num(mean(s, 'base_reward'))} | "
            f"{num(mean(s, 'incentive'))} | {num(mean(s, 'cost'))} | {_secs(r.get('seconds'))} |"
        )
    return "\n".join(lines)


def _secs(v: Any) -> str:
    return f"{v:.0f}" if isinstance(v, int | float) else "-"


def _bool(text: str) -> bool:
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value[text.lower()]


def main(argv: Sequence[str] | None = None) -> int:
    """``align-cbrl quickstart [--output-dir DIR] [--iterations T] [--progress | --no-progress]``
    (also ``python -m align_cbrl.quickstart``)."""
    from align_cbrl import __version__

    parser = argparse.ArgumentParser(
        prog="align-cbrl quickstart",
        description="HPGD leader vs no leader vs naive leader on the embedded default (no "
        "downloads). Booleans take the same forms as in align-cbrl train: --progress / "
        "--no-progress, or --progress true|false.",
    )
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        default="runs/quickstart",
        help="where the arms' runs, comparison.png and summary.json go; earlier quickstart "
        "results there are replaced (default: runs/quickstart)",
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="outer iterations per arm (default: 20)"
    )
    parser.add_argument(
        "--progress",
        nargs="?",
        const=True,
        default=True,
        type=_bool,
        metavar="BOOL",
        help="show the progress bars (default: true)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bars"
    )
    parser.add_argument("--version", action="version", version=f"align-cbrl {__version__}")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    overrides = {} if args.iterations is None else {"iterations": args.iterations}
    t0 = time.perf_counter()
    results = run_quickstart(args.output_dir, overrides, progress=args.progress)
    total = time.perf_counter() - t0
    print()
    print(format_table(results))
    print()
    from align_cbrl.utils.env import cpu_kernel_paths

    print(f"total time {total:.0f} s; plots and metrics under {args.output_dir}/")
    print(f"CPU kernels: {cpu_kernel_paths()} (docs/quickstart.md: reproducing the digits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
