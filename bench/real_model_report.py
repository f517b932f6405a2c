"""Results of ``bench/real_model.py``: ``results.json`` from the arms' directories, the
markdown table, the figures and example completions (the half of the bench that only reads)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_LEADER_KEYS = ("leader_objective", "base_reward", "incentive", "cost")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(
    root: Path, bench: Mapping[str, Any], config_path: str, steps_per_iteration: int
) -> dict[str, Any]:
    """``results.json``: one entry per arm (finished or partial) plus the base model;
    ``complete`` is false while any arm is unfinished (then its ``follower_steps`` counts the
    iterations done so far and it has no held-out numbers)."""
    arms: list[dict[str, Any]] = []
    total_wall = 0.0
    for arm in ["before", *bench["arms"]]:
        d = root / arm
        segs = _read_jsonl(d / "segments.jsonl")
        metrics = _read_jsonl(d / "metrics.jsonl")
        iters = [r for r in metrics if r.get("step", 0) > 0]
        wall = sum(s["wall_s"] for s in segs)
        total_wall += wall
        entry: dict[str, Any] = {
            "arm": arm,
            "finished": (d / "heldout.json").is_file(),
            "iterations_done": len(iters),
            "wall_s": wall,
            "cpu_s": sum(s["cpu_s"] for s in segs),
            "train_wall_s": sum(r.get("time/iteration_wall", 0.0) for r in iters),
            "train_cpu_s": sum(r.get("time/iteration_cpu", 0.0) for r in iters),
            "processes": len(segs),
            "follower_steps": 0 if arm == "before" else len(iters) * steps_per_iteration,
        }
        if entry["finished"]:
            h = json.loads((d / "heldout.json").read_text())
            o = h["overall"]
            entry.update(
                leader_objective_mean=o["leader_objective"]["mean"],
                leader_objective_se=o["leader_objective"]["se"],
                base_reward_mean=o["base_reward"]["mean"],
                base_reward_se=o["base_reward"]["se"],
                follower_steps=h["follower_steps"],
                overall=o,
                by_category=h["by_category"],
                samples_per_prompt=h["samples_per_prompt"],
                heldout_prompts=h["prompts"],
                eval_wall_s=h["eval_wall_s"],
                eval_cpu_s=h["eval_cpu_s"],
            )
        if iters:
            entry["final_weights"] = {
                k.removeprefix("leader/w/"): v
                for k, v in iters[-1].items()
                if k.startswith("leader/w/")
            }
        arms.append(entry)
    before = arms.pop(0)
    return {
        "scale": bench["scale"],
        "config": os.path.relpath(config_path, ROOT) if os.path.isabs(config_path) else config_path,
        "wall_s": total_wall,
        "before": before,
        "complete": all(a["finished"] for a in [before, *arms]),
        "arms": arms,
    }


def format_table(results: Mapping[str, Any]) -> str:
    """Markdown table of the held-out numbers (mean ± s.e.)."""
    comps = None
    lines = []
    for a in [results["before"], *results["arms"]]:
        if "overall" not in a:
            lines.append(f"| {a['arm']} | (not finished: {a['iterations_done']} iterations) |")
            continue
        o = a["overall"]
        if comps is None:
            comps = [k for k in o if k not in _LEADER_KEYS]
        cells = [f"{o[k]['mean']:.3f} ± {o[k]['se']:.3f}" for k in (*_LEADER_KEYS, *comps)]
        lines.append(
            f"| {a['arm']} | {' | '.join(cells)} | {a['follower_steps']} | "
            f"{a['wall_s']:.0f} | {a['cpu_s']:.0f} |"
        )
    comps = comps or []
    cols = ["arm", "leader objective", "base reward", "incentive", "cost", *comps]
    cols += ["follower steps", "wall s", "CPU s"]
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "---|" * len(cols)
    return "\n".join([head, sep, *lines])


def plot_results(root: Path, results: Mapping[str, Any], out_dir: Path, prefix: str) -> list[Path]:
    """``<prefix>leader_objective.png`` (sampled training estimate per iteration, each arm) and
    ``<prefix>components.png`` (held-out per-category component means, before / each arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = ["-o", "--s", ":^", "-.d", "-x"]
    for i, a in enumerate(results["arms"]):
        rows = [r for r in _read_jsonl(root / a["arm"] / "metrics.jsonl") if r.get("step", 0) > 0]
        xs = [r["step"] for r in rows]
        ys = [r["objective_estimate"] for r in rows]
        if xs:
            ax.plot(xs, ys, styles[i % len(styles)], markersize=4, label=a["arm"])
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("leader objective (sampled estimate, training prompts)")
    ax.set_title("leader objective while training")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / f"{prefix}leader_objective.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    entries = [a for a in [results["before"], *results["arms"]] if "by_category" in a]
    if entries:
        cats = list(entries[0]["by_category"])
        keys = [k for k in entries[0]["overall"] if k not in ("incentive", "cost")]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 4.2), squeeze=False)
        width = 0.8 / len(entries)
        for j, key in enumerate(keys):
            ax = axes[0, j]
            for i, a in enumerate(entries):
                ms = [a["by_category"][c][key]["mean"] for c in cats]
                ses = [a["by_category"][c][key]["se"] for c in cats]
                xs = [k + (i - (len(entries) - 1) / 2) * width for k in range(len(cats))]
                ax.bar(xs, ms, width, yerr=ses, capsize=2, label=a["arm"])
            ax.set_xticks(range(len(cats)), cats)
            ax.set_title(key.replace("_", " "))
            ax.axhline(0, color="black", linewidth=0.5)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(
            "held-out means per category (± s.e.): base model ('before') and each arm after training"
        )
        fig.tight_layout()
        p = out_dir / f"{prefix}components.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def examples(root: Path, results: Mapping[str, Any], k: int) -> dict[str, Any]:
    """The first ``k`` held-out completions of each category's first prompt, before and per arm."""
    out: dict[str, Any] = {}
    for a in [results["before"], *results["arms"]]:
        f = root / a["arm"] / "heldout.json"
        if not f.is_file():
            continue
        seen: dict[str, Any] = {}
        for g in json.loads(f.read_text())["completions"]:
            seen.setdefault(
                g["category"], {"prompt": g["prompt"], "completions": g["completions"][:k]}
            )
        out[a["arm"]] = seen
    return out
