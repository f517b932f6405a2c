"""Code the bench scripts share, imported by plain name (``from bench_common import ...``): a
script's own directory comes first on the import path when it runs (``python bench/x.py``), and
pytest puts ``bench/`` there for the tests that load the benches.

* :func:`four_rooms_parser`: the command line of a Four-Rooms bench, starting with the model's
  two settings every one of them takes.
* Runs of the orchestrated trainer inside a bench: :data:`QUIET_RUN`, the settings of a run that
  writes nothing the bench does not read, and :func:`tabular_follower`, a learning tabular
  follower's config entry.
* The learning-bias benches (``four_rooms_learning_bias.py``, ``tax_design_learning_bias.py``,
  ``docs/accelerated.md``): :func:`multilevel_row`, one row of the multilevel table, and
  :func:`run_starts`, the measurement of every follower start with the results file rewritten
  after each and the figure at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align_cbrl.utils.io import atomic_write_text

if TYPE_CHECKING:
    from align_cbrl.estimators.multilevel import MultilevelSchedule


def four_rooms_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser for a Four-Rooms bench with the model's settings: ``--lam``, the
    follower temperature (``RunConfig.beta``; the paper's lambda, default 0.005), and
    ``--beta``, the leader's budget cost (``RunConfig.budget_cost``, default 1)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--lam", type=float, default=0.005, help="follower temperature beta")
    ap.add_argument("--beta", type=float, default=1.0, help="budget cost")
    return ap


QUIET_RUN: dict[str, Any] = {
    "save_every": 0,
    "eval_samples": 0,
    "plots": False,
    "progress": False,
    "tensorboard": False,
}
"""Run config settings of a bench's run: no checkpoints, held-out evaluation, plots, progress
bars or TensorBoard (the bench reads the trainer's history or metrics file itself)."""


def tabular_follower(name: str, beta: float, learning_rate: float, **fields: Any) -> dict[str, Any]:
    """A run config's entry for the learning tabular follower of the enumerable tasks
    (``trainer: tabular``, mirror-descent steps of size ``learning_rate``) named ``name`` with
    temperature ``beta``; ``fields`` adds its other settings (``seed``, ``model``, ...)."""
    return {
        "name": name,
        "trainer": "tabular",
        "beta": beta,
        **fields,
        "trl": {"learning_rate": learning_rate},
    }


def multilevel_row(
    sched: MultilevelSchedule, sweeps: float, summary: Mapping[str, Any]
) -> dict[str, Any]:
    """One row of a learning-bias bench's multilevel table: the schedule (``n_0``, ``J_max``
    and the top level's ``n_0 2^J_max`` sweeps), the sweeps an estimate spent on average
    against the schedule's expectation ``E[sweeps]``, then ``summary`` (the bias statistics of
    :func:`tabular_reference.common.bias.bias_summary`)."""
    return {
        "base_steps": sched.base_steps,
        "max_level": sched.max_level,
        "top": sched.steps(sched.max_level),
        "sweeps": sweeps,
        "expected_sweeps": sched.expected_steps(),
        **summary,
    }


def run_starts(
    args: argparse.Namespace,
    header: Mapping[str, Any],
    labels: Mapping[str, str],
    t0: float,
    starts: Iterable[Any],
    measure: Callable[[Any], dict[str, Any]],
) -> None:
    """``measure(start)`` for every follower start; after each, the results so far are
    written to ``args.json`` (``header``, then ``results`` and ``wall_s``, the seconds since
    ``t0``), so a long run leaves what it measured. At the end, the bias-vs-budget figure
    (:func:`tabular_reference.common.plots.plot_bias_vs_budget` with ``labels``) goes to
    ``args.plot`` unless that is empty."""
    json_path, plot_path = args.json, args.plot
    from tabular_reference.common.plots import plot_bias_vs_budget

    results: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for start in starts:
        results.append(measure(start))
        out = {**header, "results": results, "wall_s": time.perf_counter() - t0}
        atomic_write_text(json_path, json.dumps(out, indent=1))
    if plot_path:
        plot_bias_vs_budget(results, Path(plot_path), **labels)
    print(f"wrote {json_path} ({out['wall_s']:.0f} s)")
