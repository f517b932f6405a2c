"""The figure of ``validate``: bias per estimator and context, spread against sampled steps, and
the outer loop's exact objective (mean ± s.e. over seeds)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tabular_reference.common.plots import mean_se, pyplot, save_figure

__all__ = ["plot_validation"]


def _bias_panel(ax, res: dict) -> None:
    """Bars: ``||mean - exact|| / ||exact||``; black ticks: its s.e., the size an unbiased
    estimator's error has (the noise ratio is the squared ratio of the two)."""
    names, contexts = list(res["bias"]), res["contexts"]
    width = 0.8 / max(1, len(contexts))
    for k, ctx in enumerate(contexts):
        xs, ys, es = [], [], []
        for i, n in enumerate(names):
            row = res["bias"][n][k] if res["bias"][n] else {}
            if "rel_bias" in row:
                xs.append(i + (k - (len(contexts) - 1) / 2) * width)
                ys.append(row["rel_bias"])
                es.append(row["rel_se"])
        ax.bar(xs, ys, width, color=f"C{k}", alpha=0.8, label=ctx)
        ax.plot(xs, es, "k_", ms=14, mew=2, label="s.e. (unbiased scale)" if k == 0 else None)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("||mean - exact|| / ||exact||")
    ax.set_title(f"bias at {res['harness']['steps']:,} steps, M = {res['sizes']['m']}")
    ax.legend(fontsize=7)


def _spread_panel(ax, res: dict) -> None:
    """One colour per estimator, one line style per context."""
    styles = ["-", "--", ":", "-."]
    for i, (n, rows) in enumerate(res["variance"].items()):
        for k, ctx in enumerate(res["contexts"]):
            pts = [
                (r["steps"], r["contexts"][k]["rel_spread"])
                for r in rows
                if "rel_spread" in r["contexts"][k]
            ]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, styles[k % 4], color=f"C{i}", marker="o", label=f"{n}, {ctx}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    budgets = sorted({r["steps"] for rows in res["variance"].values() for r in rows})
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets], fontsize=8)
    ax.xaxis.set_minor_formatter(pyplot().NullFormatter())
    ax.set_xlabel("sampled steps per estimate")
    ax.set_ylabel("spread of one estimate sqrt(tr C) / ||exact||")
    ax.set_title("variance against sampled steps")
    ax.legend(fontsize=6)


def _outer_panel(ax, res: dict) -> None:
    for i, (n, o) in enumerate(res["outer"].items()):
        t, F = np.asarray(o["t"]), np.asarray(o["F"])
        m, se = mean_se(F, axis=0)
        ax.plot(t, m, color=f"C{i}", label=f"{n} ({len(F)} seeds)")
        ax.fill_between(t, m - se, m + se, color=f"C{i}", alpha=0.25)
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("exact objective F")
    ax.set_title("outer loop, equal sampled steps")
    ax.legend(fontsize=7)


def plot_validation(res: dict, path: str | os.PathLike[str]) -> Path:
    """Three panels (module docstring), saved as PNG atomically."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), dpi=100)
    _bias_panel(axes[0], res)
    _spread_panel(axes[1], res)
    if res["outer"]:
        _outer_panel(axes[2], res)
    else:
        axes[2].set_axis_off()
    h = res["harness"]
    fig.suptitle(f"validate {res['candidate']} on {h['env']} ({h['preset']})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
