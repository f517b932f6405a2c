"""Launch stress: do two-process runs always end? (issue #25, docs/reliability.md)

Launches each recipe (``recipes/orchestrated.py`` and ``recipes/plugin.py``, GRPO) with two CPU
processes (``accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes 2``,
the multi-process tests' launch) N times in a row, alternating the recipes, while K CPU-bound
load processes (pure-Python busy loops) run beside them. The exit hang this guards against
happened after a run's last line, more often on a loaded machine, so the runs are the smallest
the recipes allow, more exits per minute (orchestrated: ``configs/recipes/grpo_tiny.yaml`` with
one outer iteration of one GRPO step; plugin: ``configs/recipes/plugin_grpo_tiny.yaml`` with one
step and one leader update), and keep ``--debug_sync`` (its all-gathers are the collectives
whose work objects the stuck rank was destroying).

Per launch it records the wall time, the exit status and whether the outputs are complete
(every file of the run, a metrics row per iteration, both ranks' ``--debug_sync`` reports with
bit-identical leaders), appended as one JSON line to ``--log`` (resumable: launches already in
the log are skipped). A launch still running after ``--timeout`` seconds is a **hang**: the
stacks of its processes are dumped next to the log (faulthandler; py-spy when installed) and it
is killed. A **failure** is a non-zero exit or incomplete outputs. The summary goes to
``--out`` (default ``docs/launch_stress.json``)::

    {"launches": total, "launches_per_recipe": N, "hangs": H, "failures": F,
     "load_processes": K, "per_recipe": {recipe: {launches, hangs, failures, wall_s}},
     "wall_s": {"min", "median", "p90", "max"}, ...}

Usage: ``python bench/launch_stress.py --launches 40 --load 4`` (about 1-2 h on a 2-core host);
``--summary-only`` rewrites the JSON from the log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: the tests' launch helpers come with it

from align_cbrl.utils.io import atomic_write_json  # noqa: E402
from tests.helpers import (  # noqa: E402
    dump_stacks,
    kill_all,
    launch_command,
    launch_env,
    start,
    wait_all,
)

RECIPES = ("orchestrated", "plugin")
CONFIGS = {
    "orchestrated": ROOT / "configs" / "recipes" / "grpo_tiny.yaml",
    "plugin": ROOT / "configs" / "recipes" / "plugin_grpo_tiny.yaml",
}
SMALLEST = {  # one leader update after one GRPO step
    "orchestrated": ["--iterations", "1", "--follower_steps", "1"],
    "plugin": ["--max_steps", "1", "--leader_update_every", "1", "--save_steps", "1"],
}
_BUSY = "while True:\n    pass\n"


def outputs_complete(recipe: str, out: Path, sync: Path) -> tuple[bool, str]:
    """Whether a finished launch left every output (module docstring); the reason if not."""
    if recipe == "orchestrated":
        files = ["checkpoints", "leader", "metrics.jsonl", "summary.json"]
        metrics, steps = out / "metrics.jsonl", [0, 1]
    else:
        files = ["README.md", "checkpoint-1", "leader", "leader_metrics.jsonl"]
        metrics, steps = out / "leader_metrics.jsonl", [1]
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present != files:
        return False, f"run directory holds {present}, expected {files}"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if [r["step"] for r in rows] != steps:
        return False, f"{metrics.name} steps {[r['step'] for r in rows]}, expected {steps}"
    reports = [sync / f"rank{r}.json" for r in (0, 1)]
    if not all(p.is_file() for p in reports):
        return False, "a --debug_sync report is missing"
    r0, r1 = (json.loads(p.read_text()) for p in reports)
    if r0["hex"] != r1["hex"] or r0["world_size"] != 2:
        return False, "the ranks' leaders differ"
    return True, ""


def run_launch(recipe: str, index: int, timeout: float, logs: Path) -> dict[str, Any]:
    """One two-process launch of ``recipe``; its record (module docstring)."""
    work = Path(tempfile.mkdtemp(prefix=f"stress_{recipe}_"))
    out, sync = work / "run", work / "sync"
    args = [
        "grpo",
        "--config",
        str(CONFIGS[recipe]),
        "--output_dir",
        str(out),
        "--debug_sync",
        str(sync),
        *SMALLEST[recipe],
    ]
    cmd = launch_command(ROOT / "recipes" / f"{recipe}.py", args, 2)
    t0 = time.monotonic()
    proc, log = start(cmd, launch_env(), f"{recipe}{index}")
    hung = bool(wait_all([proc], timeout))
    wall = time.monotonic() - t0
    record: dict[str, Any] = {"recipe": recipe, "index": index, "wall_s": round(wall, 2)}
    if hung:
        spy = dump_stacks([proc.pid])
        kill_all([proc])
        dump = logs / f"hang_{recipe}_{index}.txt"
        dump.write_text(spy + "\n=== output\n" + log.read_text())
        record.update(hang=True, exit_code=None, complete=False, stacks=str(dump))
    else:
        complete, why = outputs_complete(recipe, out, sync)
        record.update(hang=False, exit_code=proc.returncode, complete=complete)
        if proc.returncode != 0 or not complete:
            record.update(reason=why, output_tail=log.read_text()[-3000:])
    log.unlink()
    shutil.rmtree(work, ignore_errors=True)
    return record


def distribution(values: list[float]) -> dict[str, float]:
    """min / median / p90 (nearest rank) / max, in seconds."""
    if not values:
        return {}
    ranked = sorted(values)
    p90 = ranked[min(len(ranked) - 1, max(0, int(0.9 * len(ranked) + 0.999999) - 1))]
    return {
        "min": ranked[0],
        "median": round(statistics.median(ranked), 2),
        "p90": p90,
        "max": ranked[-1],
    }


def summarise(records: list[dict[str, Any]], load: int, per_recipe_target: int) -> dict[str, Any]:
    def counts(rs: list[dict[str, Any]]) -> dict[str, Any]:
        failed = [r for r in rs if not r["hang"] and (r["exit_code"] != 0 or not r["complete"])]
        return {
            "launches": len(rs),
            "hangs": sum(r["hang"] for r in rs),
            "failures": len(failed),
            "wall_s": distribution([r["wall_s"] for r in rs if not r["hang"]]),
        }

    total = counts(records)
    return {
        "launches": total["launches"],
        "launches_per_recipe": per_recipe_target,
        "hangs": total["hangs"],
        "failures": total["failures"],
        "load_processes": load,
        "processes_per_launch": 2,
        "per_recipe": {r: counts([x for x in records if x["recipe"] == r]) for r in RECIPES},
        "wall_s": total["wall_s"],
        "launch": {
            r: "accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes 2 "
            f"recipes/{r}.py grpo --config {CONFIGS[r].relative_to(ROOT)} "
            f"{' '.join(SMALLEST[r])} --debug_sync DIR"
            for r in RECIPES
        },
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launches", type=int, default=40, help="launches per recipe (N)")
    ap.add_argument("--load", type=int, default=4, help="CPU-bound load processes (K)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a launch hangs")
    ap.add_argument("--log", type=Path, default=ROOT / "runs" / "launch_stress" / "launches.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "launch_stress.json")
    ap.add_argument("--summary-only", action="store_true", help="only rewrite --out from --log")
    args = ap.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["recipe"], r["index"]) for r in read_log(args.log)}
    todo = [(r, i) for i in range(args.launches) for r in RECIPES if (r, i) not in done]
    load: list[subprocess.Popen] = []
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so the load processes are killed below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if todo and not args.summary_only:
            load = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(args.load)]
        for recipe, index in [] if args.summary_only else todo:
            record = dict(run_launch(recipe, index, args.timeout, args.log.parent), load=args.load)
            with args.log.open("a") as fh:  # one line per launch: a kill loses at most this one
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            state = "HANG" if record["hang"] else f"exit {record['exit_code']}"
            line = f"{recipe} #{index}: {state}, {record['wall_s']:.1f} s"
            print(f"{line}, complete={record['complete']}", flush=True)
    finally:
        for p in load:
            p.kill()
            p.wait()
    records = [r for r in read_log(args.log) if r["index"] < args.launches]
    summary = summarise(records, args.load, args.launches)
    atomic_write_json(args.out, summary)
    print(json.dumps({k: summary[k] for k in ("launches", "hangs", "failures", "wall_s")}))
    return 0 if summary["hangs"] == 0 and summary["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
