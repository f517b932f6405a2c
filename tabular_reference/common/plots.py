"""Plots people would rather look at than read: learning curves with mean ± standard error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def mean_se(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean along ``axis`` (0 when there is a single sample)."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, values.std(axis=axis, ddof=1) / np.sqrt(n)


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    ylabel: str,
    title: str,
    xlabel: str = "outer iteration",
) -> Path:
    """One line per label (mean over seeds) with a shaded ± 1 s.e. band; saved as PNG atomically.

    ``curves[label] = (x[T], y[seeds, T])``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, (x, y) in curves.items():
        y = np.atleast_2d(np.asarray(y, dtype=float))
        m, se = mean_se(y, axis=0)
        (line,) = ax.plot(x, m, label=f"{label} (n={y.shape[0]})", lw=1.6)
        ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.25, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike[str], dpi: float | None = None) -> Path:
    """Save a matplotlib figure as PNG atomically (parent directories created) and close it;
    ``dpi`` renders it at that resolution instead of the figure's own."""
    import io

    from align_cbrl.utils.io import atomic_write_bytes

    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or "figure")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_bias_vs_budget(
    results: list[dict],
    path: str | os.PathLike[str],
    *,
    who: str,
    plug_in: str,
    exact: str,
    title: str,
) -> Path:
    """Relative bias of the HPGD mean vs the learning follower's sweeps ``n`` (one panel per
    follower start), with the exact-formula plug-in, the exact follower's floor and the
    multilevel estimates at their top level (``docs/accelerated.md``). ``results`` rows are
    those the learning-bias benches write; ``who`` names the follower ("follower",
    "household"); ``plug_in`` and ``exact`` label the plug-in and the exact follower's line;
    ``title`` prefixes each panel's start."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(results), figsize=(5.5 * len(results), 4), squeeze=False, dpi=110
    )
    for ax, res in zip(axes[0], results, strict=True):
        rows = [r for r in res["plain"] if r["n"] != "inf"]
        ns = np.array([max(r["n"], 0.5) for r in rows])  # n = 0 drawn at 1/2 on the log axis
        ax.errorbar(
            ns,
            [r["rel_bias"] for r in rows],
            yerr=[2 * r["rel_se"] for r in rows],
            marker="o",
            label="HPGD, n sweeps (mean of M, ±2 s.e.)",
        )
        ax.plot(ns, [r["plug_in"]["rel_bias"] for r in rows], "k:", label=plug_in)
        inf = res["plain"][-1]
        ax.axhline(inf["rel_bias"], color="grey", ls="--", label=f"HPGD, {exact} (n = inf)")
        for r in res["multilevel"]:
            ax.errorbar(
                [r["top"]],
                [r["rel_bias"]],
                yerr=[2 * r["rel_se"]],
                marker="s",
                ms=8,
                ls="none",
                label=f"multilevel n0={r['base_steps']} J={r['max_level']} "
                f"({r['sweeps']:.0f} sweeps/est.)",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"{who} sweeps n (multilevel: its top level)")
        ax.set_ylabel("||mean - exact|| / ||exact||")
        ax.set_title(f"{title}{res['start']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
