"""PNG plots of HPGD runs (matplotlib, ``Agg`` backend; no display needed).

* :func:`plot_run`: one run's curves over outer iterations: the leader objective (the sampled
  estimate ``sum_f mean rbar`` and, on an enumerable task, the exact ``F(x)``), the incentive paid,
  the hypergradient norm, and the followers' base reward; the exact optimum ``F(x*)`` as a line
  when it is known.
* :func:`plot_comparison`: the leader objective of several runs (e.g. HPGD leader / no leader /
  naive leader) on shared axes.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_comparison", "plot_run", "run_figure"]


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_run(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str = "",
    optimum: float | None = None,
) -> Path:
    """Four panels of one run's metrics (``metrics.jsonl`` records) over the outer iterations
    (integer ticks); ``title`` names the run (default "HPGD run"). ``optimum``: the exact
    leader objective at a (local) optimum, ``F(x*)``, drawn as a horizontal line in the
    objective panel (enumerable tasks). Returns the PNG path."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = run_figure(records, title, optimum)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_figure(
    records: Sequence[Mapping[str, Any]], title: str = "", optimum: float | None = None
) -> Any:
    """The matplotlib figure of :func:`plot_run` (not saved)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0, 0]
    for key, label in (
        ("objective_estimate", "estimate (samples)"),
        ("objective_exact", "exact F(x)"),
    ):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, marker=".", label=label)
    if optimum is not None and math.isfinite(optimum):
        ax.axhline(
            optimum,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"exact F(x*) = {optimum:.3f}",
        )
    ax.set_title("leader objective")
    followers = sorted(
        {k.split("/")[0] for r in records for k in r if k.endswith("/incentive_abs")}
    )
    for f in followers:
        xs, ys = _series(records, f"{f}/incentive_abs")
        axes[0, 1].plot(xs, ys, label=f)
        xs, ys = _series(records, f"{f}/base_reward")
        axes[1, 1].plot(xs, ys, label=f)
    axes[0, 1].set_title("mean |incentive|")
    axes[1, 1].set_title("follower base reward")
    xs, ys = _series(records, "leader/grad_norm")
    axes[1, 0].plot(xs, ys)
    axes[1, 0].set_title("hypergradient norm (before clipping)")
    for a in axes.flat:
        a.set_xlabel("outer iteration")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    # wrapped to the figure's width: a run with several followers has a long title
    fig.suptitle(textwrap.fill(title or "HPGD run", width=100), fontsize=11)
    fig.tight_layout()
    return fig


def run_title(config: Any, name: str) -> str:
    """The title of an orchestrated run's ``training.png``: the run directory's ``name``, the
    estimator, iterations x follower steps and every follower (trainer, ``beta``)."""
    fols = ", ".join(f"{f.name} ({f.trainer}, beta {f.beta:g})" for f in config.followers)
    return (
        f"{name}: leader estimator {config.leader.estimator}, "
        f"{config.iterations} outer iterations x {config.follower_steps} follower steps; "
        f"followers {fols}"
    )


def plot_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    key: str = "objective_exact",
    title: str = "leader objective",
) -> Path:
    """``key`` over iterations for each named run (falls back to ``objective_estimate``)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "d")]
    for i, (name, records) in enumerate(runs.items()):
        xs, ys = _series(records, key)
        if not xs:
            xs, ys = _series(records, "objective_estimate")
        line, marker = styles[i % len(styles)]
        # distinct dashes and markers keep identical curves (e.g. no leader / naive) visible
        ax.plot(xs, ys, linestyle=line, marker=marker, markersize=4, label=name)
    ax.set_xlabel("outer iteration")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
