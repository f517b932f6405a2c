"""Results of ``bench/real_model.py``: ``results.json`` from the arms' directories, the
markdown table, the figures and example completions (the half of the bench that only reads)."""

from __future__ import annotations

import json
import math
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


def run_entry(root: Path, unit: str) -> dict[str, Any]:
    """One run ``<arm>/s<seed>``: its time, iterations, final weights, curve and, when finished,
    its held-out (and validation) numbers."""
    d = root / unit
    segs = _read_jsonl(d / "segments.jsonl")
    iters = [r for r in _read_jsonl(d / "metrics.jsonl") if r.get("step", 0) > 0]
    seed = unit.rpartition("/s")[2]
    entry: dict[str, Any] = {
        "run": unit,
        "seed": int(seed),
        "finished": (d / "heldout.json").is_file(),
        "iterations_done": len(iters),
        "wall_s": sum(s["wall_s"] for s in segs),
        "cpu_s": sum(s["cpu_s"] for s in segs),
        "train_wall_s": sum(r.get("time/iteration_wall", 0.0) for r in iters),
        "train_cpu_s": sum(r.get("time/iteration_cpu", 0.0) for r in iters),
        "processes": len(segs),
        "curve": [r.get("objective_estimate") for r in iters],
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
            seeds_used=h.get("seeds"),
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
    return entry


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its s.e. across seeds (``nan`` with one seed)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, math.nan
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def _average(dicts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Per key, the mean over seeds of ``mean`` and the within-seed s.e. of that mean,
    ``sqrt(sum se_s^2) / n`` (nested by category when given ``by_category``)."""
    out: dict[str, Any] = {}
    for key, v in dicts[0].items():
        if isinstance(v, Mapping) and "mean" in v:
            ms = [d[key]["mean"] for d in dicts]
            ses = [d[key]["se"] for d in dicts]
            se = math.sqrt(sum(x * x for x in ses)) / len(ses)
            out[key] = {"mean": sum(ms) / len(ms), "se": se}
        elif isinstance(v, Mapping):
            out[key] = _average([d[key] for d in dicts])
    return out


def arm_entry(arm: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """An arm over its seeds: the mean of the seeds' held-out means with the s.e. across seeds
    (``leader_objective_se_seeds``, the main figure's error) and, beside it, the within-seed
    s.e. over completions (``leader_objective_se``); ``per_seed`` as the issue asks."""
    done = [r for r in runs if r["finished"]]
    entry: dict[str, Any] = {
        "arm": arm,
        "runs": [r["run"] for r in runs],
        "seeds": [r["seed"] for r in runs],
        "finished": bool(runs) and len(done) == len(runs),
        "seeds_finished": len(done),
        "wall_s": sum(r["wall_s"] for r in runs),
        "cpu_s": sum(r["cpu_s"] for r in runs),
        "cpu_s_per_seed": [r["cpu_s"] for r in runs],
        "iterations_done": [r["iterations_done"] for r in runs],
        "curves": {str(r["seed"]): r["curve"] for r in runs},
        "final_weights": {str(r["seed"]): r.get("final_weights") for r in runs},
        "per_seed": [{"seed": r["seed"], **{k: r[k] for k in _PER_SEED_KEYS}} for r in done],
    }
    if done:
        m, se_seeds = _mean_se([r["leader_objective_mean"] for r in done])
        b, b_seeds = _mean_se([r["base_reward_mean"] for r in done])
        within = math.sqrt(sum(r["leader_objective_se"] ** 2 for r in done)) / len(done)
        entry.update(
            leader_objective_mean=m,
            leader_objective_se_seeds=se_seeds,
            leader_objective_se=within,
            base_reward_mean=b,
            base_reward_se_seeds=b_seeds,
            follower_steps=done[0]["follower_steps"],
            overall=_average([r["overall"] for r in done]),
            by_category=_average([r["by_category"] for r in done]),
        )
    return entry


_PER_SEED_KEYS = ("leader_objective_mean", "leader_objective_se", "base_reward_mean")
_PER_SEED_KEYS += ("follower_steps", "cpu_s", "wall_s", "seeds_used")


def paired(a: Mapping[str, Any], b: Mapping[str, Any], pair_by: str = "seed") -> dict[str, Any]:
    """``a - b`` on the held-out leader objective, paired by seed: the mean difference, its
    s.e. across seeds (``nan`` with one pair) and z; the within-seed s.e. beside it."""
    pa = {r["seed"]: r for r in a["per_seed"]}
    pb = {r["seed"]: r for r in b["per_seed"]}
    seeds = sorted(set(pa) & set(pb))
    row: dict[str, Any] = {"arm": a["arm"], "vs": b["arm"], "seeds": seeds}
    if not seeds:
        return row
    diffs = [pa[s]["leader_objective_mean"] - pb[s]["leader_objective_mean"] for s in seeds]
    m, se = _mean_se(diffs)
    within = math.sqrt(
        sum(pa[s]["leader_objective_se"] ** 2 + pb[s]["leader_objective_se"] ** 2 for s in seeds)
    ) / len(seeds)
    row.update(
        per_seed_difference=diffs,
        difference=m,
        se=se,
        z=m / se if se and se > 0 else math.nan,
        se_within_seed=within,
        z_within_seed=m / within if within > 0 else math.nan,
    )
    return row


# HPGD against each alternative, and the frozen reuse against the hand-set weights
_COMPARISONS = [("hpgd", "none"), ("hpgd", "fixed"), ("hpgd", "sweep_best")]
_COMPARISONS += [("hpgd", "hpgd_frozen"), ("hpgd_frozen", "fixed"), ("hpgd", "zero_order")]
_COMPARISONS += [("hpgd_long", "none_long")]


def collect(root: Path, bench: Mapping[str, Any], config_path: str) -> dict[str, Any]:
    """``results.json``: every arm over its seeds (finished or partial), the base model, the
    sweep and its selection, and HPGD's paired comparisons. ``complete`` is false while any
    run is unfinished."""
    import real_model_plan as plan

    units = plan.phase_one(bench) + plan.phase_two(root, bench)
    runs = {u.name: run_entry(root, u.name) for u in units}
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for u in units:
        by_arm.setdefault(u.arm, []).append(runs[u.name])
    before = runs[units[0].name] | {"arm": "before"}
    arms = [arm_entry(a, rs) for a, rs in by_arm.items() if a != "before" and a[:6] != "sweep_"]
    selection = plan.select_sweep(root, bench) if "sweep" in bench["arms"] else None
    if selection is not None:
        best = plan.sweep_best_units(root, bench)
        entry = arm_entry("sweep_best", [run_entry(root, u.name) for u in best])
        entry["selected"] = selection["selected"]
        arms.append(entry)
    named = {a["arm"]: a for a in arms}
    swept = "sweep" not in bench["arms"] or selection is not None
    comps = []
    for x, y in _COMPARISONS:
        if x in named and y in named and named[x]["per_seed"] and named[y]["per_seed"]:
            comps.append(paired(named[x], named[y]))
    return {
        "scale": bench["scale"],
        "config": os.path.relpath(config_path, ROOT) if os.path.isabs(config_path) else config_path,
        "seeds": list(bench["seeds"]),
        "wall_s": sum(r["wall_s"] for r in runs.values()),
        "cpu_s": sum(r["cpu_s"] for r in runs.values()),
        "before": before,
        "complete": all(r["finished"] for r in runs.values()) and swept,
        "arms": arms,
        "sweep": [] if selection is None else selection["sweep"],
        "sweep_runs": {u.name: runs[u.name] for u in units if u.arm.startswith("sweep_")},
        "comparisons": comps,
    }


def format_comparison(c: Mapping[str, Any]) -> str:
    """One line: the paired difference with its s.e. across seeds and within seeds."""
    if "difference" not in c:
        return f"{c['arm']} - {c['vs']}: no common finished seed yet"
    return (
        f"{c['arm']} - {c['vs']}: {c['difference']:+.3f} ± {c['se']:.3f} across "
        f"{len(c['seeds'])} seeds (z {c['z']:+.1f}); within-seed s.e. {c['se_within_seed']:.3f} "
        f"(z {c['z_within_seed']:+.1f})"
    )


def _has_spread(n: int, se: float | None) -> bool:
    """Whether an s.e. across ``n`` seeds exists (NaN in memory, null in JSON with one seed)."""
    return n > 1 and se is not None and not math.isnan(se)


def _across_seeds(mean: float, se: float | None, n: int) -> str:
    return f"{mean:.3f} ± {se:.3f}" if _has_spread(n, se) else f"{mean:.3f} (1 seed)"


def format_table(results: Mapping[str, Any]) -> str:
    """Markdown table of the held-out numbers. The leader objective and the base reward are the
    mean over seeds ± the s.e. *across seeds* (the main figure; "1 seed" where there is no
    spread yet), with the within-seed s.e. over completions in its own column beside it; the
    other columns are means over seeds ± their pooled within-seed s.e."""
    comps = None
    lines = []
    for a in [results["before"], *results["arms"]]:
        if "overall" not in a:
            lines.append(f"| {a['arm']} | (not finished: {a['iterations_done']} iterations) |")
            continue
        o = a["overall"]
        if comps is None:
            comps = [k for k in o if k not in _LEADER_KEYS]
        n = len(a.get("per_seed") or [None])
        lo = o["leader_objective"]
        cells = [
            str(n),
            _across_seeds(lo["mean"], a.get("leader_objective_se_seeds"), n),
            f"{a.get('leader_objective_se', lo['se']):.3f}",
            _across_seeds(o["base_reward"]["mean"], a.get("base_reward_se_seeds"), n),
        ]
        cells += [f"{o[k]['mean']:.3f} ± {o[k]['se']:.3f}" for k in (*_LEADER_KEYS[2:], *comps)]
        lines.append(
            f"| {a['arm']} | {' | '.join(cells)} | {a['follower_steps']} | "
            f"{a['wall_s']:.0f} | {a['cpu_s']:.0f} |"
        )
    comps = comps or []
    cols = ["arm", "seeds", "leader objective (± s.e. across seeds)", "within-seed s.e."]
    cols += ["base reward (± across seeds)", *_LEADER_KEYS[2:], *comps]
    cols += ["follower steps", "wall s", "CPU s"]
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "---|" * len(cols)
    return "\n".join([head, sep, *lines])


def plot_results(root: Path, results: Mapping[str, Any], out_dir: Path, prefix: str) -> list[Path]:
    """``<prefix>leader_objective.png`` (sampled training estimate per iteration against the
    follower steps, each arm) and
    ``<prefix>components.png`` (held-out per-category component means, before / each arm)."""
    from tabular_reference.common.plots import pyplot, save_figure

    plt = pyplot()
    paths = []
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = ["-o", "--s", ":^", "-.d", "-x", "--v", ":p", "-.*"]
    for i, a in enumerate(results["arms"]):
        curves = [c for c in a["curves"].values() if c and None not in c]
        if not curves:
            continue
        # a seed still running would cut every seed's curve to its length: leave it out
        T = max(len(c) for c in curves)
        curves = [c for c in curves if len(c) == T]
        mean = [sum(c[t] for c in curves) / len(curves) for t in range(T)]
        # x in follower steps, so that the 2x-longer arms line up with the others
        per_iter = (a.get("follower_steps") or T) / T
        xs = [per_iter * (t + 1) for t in range(T)]
        line = ax.plot(
            xs,
            mean,
            styles[i % len(styles)],
            markersize=4,
            label=f"{a['arm']} ({len(curves)} seeds)",
        )
        for c in curves:  # each seed faintly behind its arm's mean
            ax.plot(xs, c, color=line[0].get_color(), alpha=0.2, linewidth=1)
    ax.set_xlabel("follower steps (one point per outer iteration)")
    ax.set_ylabel("leader objective (sampled estimate, training prompts)")
    ax.set_title("learning curves: mean over seeds (faint: each seed)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    done = [a for a in results["arms"] if a["per_seed"]]
    for i, a in enumerate(done):
        ys = [r["leader_objective_mean"] for r in a["per_seed"]]
        ax2.plot([i] * len(ys), ys, "o", alpha=0.5, color="tab:gray")
        se = a.get("leader_objective_se_seeds")
        ax2.errorbar(
            [i + 0.15],
            [a["leader_objective_mean"]],
            # one seed has no spread: NaN in memory, null once written to JSON
            yerr=[0 if se is None or se != se else se],
            fmt="s",
            color="black",
            capsize=4,
        )
    if "leader_objective_mean" in results["before"]:
        ax2.axhline(
            results["before"]["leader_objective_mean"],
            color="tab:red",
            linewidth=0.8,
            linestyle=":",
            label="base model (before training)",
        )
        ax2.legend(fontsize=7)
    ax2.set_xticks(range(len(done)), [a["arm"] for a in done], rotation=30, fontsize=8)
    ax2.set_ylabel("held-out leader objective")
    ax2.set_title("per seed (grey) and mean ± s.e. across seeds (black)")
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir / f"{prefix}leader_objective.png", dpi=100))

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
        paths.append(save_figure(fig, out_dir / f"{prefix}components.png", dpi=100))
    return paths


def examples(root: Path, results: Mapping[str, Any], k: int) -> dict[str, Any]:
    """The first ``k`` held-out completions of each category's first prompt, before and per arm."""
    out: dict[str, Any] = {}
    for a in [results["before"], *results["arms"]]:
        f = root / (a["runs"][0] if "runs" in a else a["run"]) / "heldout.json"
        if not f.is_file():
            continue
        seen: dict[str, Any] = {}
        for g in json.loads(f.read_text())["completions"]:
            seen.setdefault(
                g["category"], {"prompt": g["prompt"], "completions": g["completions"][:k]}
            )
        out[a["arm"]] = seen
    return out


# ------------------------------------------------------------------------- markdown tables
def _terms(objective: Mapping[str, Mapping[str, float]]) -> list[tuple[str, str]]:
    """``(category, component)`` for every term of the leader's per-category objective."""
    return [(cat, comp) for cat, row in objective.items() for comp, w in row.items() if w]


def _run_cost(arm: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """Runs and follower steps an arm costs at its seeds. ``sweep_best``: every sweep point
    at the first seed, then the winner retrained at the other seeds; ``hpgd_frozen`` reuses
    HPGD's runs, so their cost comes on top."""
    n, steps = len(arm["per_seed"]), arm["follower_steps"]
    if arm["arm"] == "sweep_best":
        runs = len(results["sweep"]) + n - 1
        return f"{len(results['sweep'])} at s{arm['per_seed'][0]['seed']} + {n - 1} retrains = {runs} ({runs * steps})"
    cost = f"{n} ({n * steps})"
    return cost + f" + HPGD's {n}" if arm["arm"] == "hpgd_frozen" else cost


def _per_arm_table(results: Mapping[str, Any], runs: Mapping[str, Any], terms: list) -> str:
    cols = ["arm", "seeds", "held-out leader objective: mean ± s.e. across seeds"]
    cols += ["within-seed s.e.", "base reward"]
    cols += [f"{comp} ({cat}) per seed" for cat, comp in terms]
    cols += ["follower steps per run", "process CPU per run", "runs (follower steps)"]
    lines = []
    for a in results["arms"]:
        ps = a["per_seed"]
        if not ps:
            continue
        name = f"`{a['arm']}`" + (f" (`{a['selected']}`)" if a.get("selected") else "")
        se = a.get("leader_objective_se_seeds")
        mean = a["leader_objective_mean"]
        cells = [name, ", ".join(str(p["seed"]) for p in ps)]
        spread = _has_spread(len(ps), se)
        cells += [f"**{mean:+.3f} ± {se:.3f}**" if spread else f"{mean:+.3f} (1 seed)"]
        cells += [f"{a['leader_objective_se']:.3f}", f"{a['base_reward_mean']:.3f}"]
        unit = a["selected"] if a.get("selected") else a["arm"]
        for cat, comp in terms:
            vals = [runs[f"{unit}/s{p['seed']}"]["by_category"][cat][comp]["mean"] for p in ps]
            cells.append(" / ".join(f"{v:.2f}" for v in vals))
        cpu = sum(p["cpu_s"] for p in ps) / len(ps)
        cells += [str(a["follower_steps"]), f"{cpu:.0f} s", _run_cost(a, results)]
        lines.append("| " + " | ".join(cells) + " |")
    return _markdown(cols, lines)


def _paired_table(results: Mapping[str, Any]) -> str:
    cols = ["comparison (paired by seed)", "difference ± s.e. across seeds", "z", "per seed"]
    cols += ["within-seed s.e. (z)"]
    lines = []
    for c in results["comparisons"]:
        if "difference" not in c:
            continue
        spread = _has_spread(len(c["seeds"]), c["se"])
        se, z = (f"{c['se']:.3f}", f"{c['z']:+.1f}") if spread else ("(1 seed)", "-")
        cells = [f"{c['arm']} - {c['vs']} (seeds {', '.join(map(str, c['seeds']))})"]
        cells += [f"{c['difference']:+.3f} ± {se}", z]
        cells += [", ".join(f"{x:+.3f}" for x in c["per_seed_difference"])]
        cells += [f"{c['se_within_seed']:.3f} ({c['z_within_seed']:+.1f})"]
        lines.append("| " + " | ".join(cells) + " |")
    return _markdown(cols, lines)


def _every_run_table(results: Mapping[str, Any], runs: Mapping[str, Any], terms: list) -> str:
    cols = ["run", "held-out leader objective (± within-seed s.e.)", "base reward", "incentive"]
    cols += ["cost", *(f"{comp} ({cat})" for cat, comp in terms), "follower steps"]
    cols += ["process CPU"]
    selected = next((s["arm"] for s in results["sweep"] if s["selected"]), None)
    lines = []
    for name, r in runs.items():
        if not r["finished"]:
            continue
        o, b = r["overall"], r["by_category"]
        label = f"`{name}`"
        follower_seed = (r.get("seeds_used") or {}).get("run", r["seed"])
        if follower_seed != r["seed"]:
            label += f" (follower seed {follower_seed})"
        if name.partition("/")[0] == selected:
            label += " (selected: `sweep_best`)"
        cells = [label, f"{o['leader_objective']['mean']:+.3f} ± {o['leader_objective']['se']:.3f}"]
        cells += [f"{o['base_reward']['mean']:.3f}", f"{o['incentive']['mean']:+.3f}"]
        cells += [
            f"{o['cost']['mean']:.3f}",
            *(f"{b[cat][comp]['mean']:.3f}" for cat, comp in terms),
        ]
        eval_only = name.startswith("before/")
        cells += [
            str(r["follower_steps"]),
            f"{r['cpu_s']:.0f} s" + (" (eval)" if eval_only else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return _markdown(cols, lines)


def _sweep_table(results: Mapping[str, Any], runs: Mapping[str, Any]) -> str:
    cols = ["sweep point", "weights", "validation leader objective", "held-out (same seed)"]
    cols += ["selected"]
    lines = []
    for s in results["sweep"]:
        w = "; ".join(
            f"{cat}: " + ", ".join(f"{k} {v:+g}" for k, v in row.items())
            for cat, row in s["weights"].items()
        )
        r = runs.get(f"{s['arm']}/s{results['seeds'][0]}")  # the sweep runs at the first seed
        held = "-"
        if r is not None and r["finished"]:
            lo = r["overall"]["leader_objective"]
            held = f"{lo['mean']:+.3f} ± {lo['se']:.3f} (`{r['run']}`)"
        cells = [f"`{s['arm']}`", w, f"{s['validation_objective']:+.3f} ± {s['validation_se']:.3f}"]
        cells += [held, "**yes**" if s["selected"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return _markdown(cols, lines)


def _markdown(cols: list[str], lines: list[str]) -> str:
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *lines])


def markdown_tables(
    root: Path, results: Mapping[str, Any], objective: Mapping[str, Mapping[str, float]]
) -> dict[str, str]:
    """The documentation's tables, laid out from ``results`` (``collect``) and the runs under
    ``root``: ``per_arm`` (mean ± s.e. across seeds, each term of the leader's per-category
    ``objective`` per seed, cost), ``paired`` (the comparisons), ``every_run`` and ``sweep``."""
    names = [results["before"]["run"]]
    names += [n for a in results["arms"] if a["arm"] != "sweep_best" for n in a["runs"]]
    names += [n for n in results["sweep_runs"] if n not in names]
    runs = {n: run_entry(root, n) for n in names}
    terms = _terms(objective)
    return {
        "per_arm": _per_arm_table(results, runs, terms),
        "paired": _paired_table(results),
        "every_run": _every_run_table(results, runs, terms),
        "sweep": _sweep_table(results, runs),
    }


def _marker(scale: str, name: str) -> tuple[str, str]:
    return f"<!-- generated:{scale}:{name} -->", f"<!-- /generated:{scale}:{name} -->"


def replace_generated(text: str, scale: str, tables: Mapping[str, str]) -> str:
    """``text`` with each ``<!-- generated:<scale>:<name> -->`` ... ``<!-- /generated:... -->``
    block replaced by ``tables[name]``; blocks absent from ``text`` are left out, a block
    opened and never closed is a ``ValueError``."""
    for name, table in tables.items():
        start, end = _marker(scale, name)
        i = text.find(start)
        if i < 0:
            continue
        j = text.find(end, i)
        if j < 0:
            raise ValueError(f"{start} has no closing {end}")
        text = text[: i + len(start)] + "\n" + table + "\n" + text[j:]
    return text
