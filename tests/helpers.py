"""Shared helpers of the test suite, the one module the tests import them from
(``from tests.helpers import ...``; ``tests`` is a package, the repository root is on the
import path through ``pythonpath`` in pyproject's pytest settings). Not collected: no ``test_``
prefix.

* Paths: :data:`ROOT` (the repository), :func:`load_script` (a script of ``bench/`` by path).
* Stored expected values: :func:`reference_values` (a table of ``tests/data/reference_values.json``).
* Runs: a small orchestrated run config file for the CLI tests (the enumerable tiny-language
  task with one exact follower, so nothing is trained), the tiny-language run config,
  train-to-the-end and metrics helpers of the trainer tests, and the recipes' tiny GRPO config
  with a user reward function (tests/fault_rewards.py) for the fault tests.
* TRL: small CPU ``GRPOConfig`` / ``RLOOConfig`` (TRL is imported when they are called, so a
  module that skips without TRL can import this one first).
* Launches of the multi-process tests: a free loopback port, ``accelerate launch`` on CPU
  processes with the project's accelerate config, ranks started directly (no launcher agent,
  for the fault tests), and a wait that never hangs.

Every launch has its own timeout. A launch that hits it does not just fail: the stacks of every
process still alive are dumped first, so the next hang comes with its diagnosis. Each process
runs with ``PYTHONFAULTHANDLER=1``; on the timeout it gets SIGABRT, on which Python's
``faulthandler`` writes the Python stack of every thread to the process's stderr (part of the
failure message), and ``py-spy dump --native`` adds the native frames when ``py-spy`` is
installed (on ``PATH`` or beside the interpreter; optional). Launched processes find this
package through ``PYTHONPATH`` (:func:`launch_pythonpath`), as a user's reward module would."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import yaml

if TYPE_CHECKING:
    from trl import GRPOConfig, RLOOConfig

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the checkout the tests run from)."""
LAUNCH_TIMEOUT_S = 300
"""Default limit of one launch (a two-process tiny run takes 15-40 s on the 2-core CI host)."""


def load_script(path: Path, name: str | None = None) -> ModuleType:
    """Import the script at ``path`` (``bench/*.py``, not a package) as a fresh module named
    ``name`` (default ``bench_<stem>``), registered in ``sys.modules`` under that name, without
    running its ``__main__`` block."""
    spec = importlib.util.spec_from_file_location(name or f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's names through sys.modules
    spec.loader.exec_module(module)
    return module


REFERENCE_VALUES = ROOT / "tests" / "data" / "reference_values.json"
"""Expected values that earlier code computed, one table per test family, as ``float.hex``
strings (exact; each table's ``_about`` says what it holds and which commit computed it)."""


def reference_values(table: str) -> dict[str, list[str]]:
    """The stored table ``table`` of :data:`REFERENCE_VALUES`: ``{case: [float.hex, ...]}`` in
    the file's order (the order the tests parametrize over). The strings are returned as stored,
    so a test compares them exactly (``float.hex`` of its result, or ``float.fromhex`` of
    these); a missing table raises ``KeyError`` naming the ones there are."""
    tables = json.loads(REFERENCE_VALUES.read_text(encoding="utf-8"))
    if table not in tables:
        known = sorted(k for k in tables if not k.startswith("_"))
        raise KeyError(f"no table {table!r} in {REFERENCE_VALUES}; there are {known}")
    return tables[table]["values"]


# ---------------------------------------------------------------------------- runs
_EXACT_RUN = """
output_dir: {out}
task: tiny_language
iterations: {iterations}
follower_steps: 0
prompts_per_iteration: 4
num_samples: 4
save_every: 1
eval_samples: 4
tensorboard: {tensorboard}
plots: {plots}
progress: false
leader:
  spec: {{type: weights, init_weights: 0.0, cost_coef: 0.25, cost_kind: l2}}
  lr: 0.1
followers:
  - {{name: exact, trainer: exact, beta: 0.5}}
"""


def write_exact_run_config(
    path: Path, out: str | Path, *, iterations: int, tensorboard: str = "false", plots: str = "true"
) -> Path:
    """Write the run config to ``path`` and return ``path``."""
    text = _EXACT_RUN.format(out=out, iterations=iterations, tensorboard=tensorboard, plots=plots)
    path.write_text(text)
    return path


def exact_follower(name: str = "exact", beta: float = 0.5, **fields: Any) -> dict[str, Any]:
    """A run config's entry for an exact follower (``trainer: exact``, nothing trained) named
    ``name`` with temperature ``beta``; ``fields`` adds its other settings (``weight``,
    ``contexts``, ``model_seed``, ...)."""
    return {"name": name, "trainer": "exact", "beta": beta, **fields}


def tiny_run_config(
    tmp_path: Path, name: str, followers: list[dict[str, Any]], *, leader=None, **overrides: Any
):
    """An orchestrated run on the tiny-language task for the trainer tests: ``followers``
    (copied), the quickstart leader spec with Adam (``leader`` updates these settings),
    ``overrides`` replace the run's top-level keys. No plots, progress or TensorBoard."""
    from align_cbrl.config_parser import from_dict
    from align_cbrl.quickstart import QUICKSTART_CONFIG
    from align_cbrl.trainer import HPGDConfig

    data: dict[str, Any] = {
        "output_dir": str(tmp_path / name),
        "task": "tiny_language",
        "iterations": 4,
        "follower_steps": 0,
        "prompts_per_iteration": 4,
        "num_samples": 8,
        "save_every": 2,
        "eval_samples": 0,
        "plots": False,
        "progress": False,
        "tensorboard": False,
        "leader": {
            "spec": dict(QUICKSTART_CONFIG["leader"]["spec"]),
            "optimizer": "adam",
            "lr": 0.2,
            **(leader or {}),
        },
        "followers": copy.deepcopy(list(followers)),
    }
    data.update(overrides)
    return from_dict(HPGDConfig, data)


def tiny_bilevel(task: Any, seed: int, **leader: Any) -> Any:
    """``task.bilevel`` of a weights leader of the tiny-language ``task`` drawn with ``seed``
    (``init_std`` 0.5 and ``cost_coef`` 0.2 unless ``leader`` sets them; ``leader`` goes to
    ``task.make_leader``)."""
    leader = {"init_std": 0.5, "cost_coef": 0.2, **leader}
    return task.bilevel(task.make_leader(seed=seed, **leader))


def run_trainer(config, **kw):
    """Train ``config`` to the end (closing the trainer); ``(trainer, summary)``."""
    from align_cbrl.trainer import HPGDTrainer

    trainer = HPGDTrainer(config, **kw)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return trainer, summary


def strip_times(records):
    """Metrics records without their wall-clock entries (``time/...``)."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def train_until_killed(trainer, iteration: int, monkeypatch) -> None:
    """Run ``trainer.train()`` with a simulated kill when it starts ``iteration`` (its
    ``step`` raises), and check the kill surfaced."""
    real_step = trainer.step

    def step(t):
        if t == iteration:
            raise RuntimeError(f"simulated kill during iteration {iteration}")
        return real_step(t)

    monkeypatch.setattr(trainer, "step", step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        trainer.train()


FLAKY = {"type": "callable", "name": "flaky", "target": "tests.fault_rewards:flaky"}
"""The user reward component of the fault tests (tests/fault_rewards.py)."""


def task_with_flaky(repeat: int = 1) -> dict[str, Any]:
    """The tiny-language task (``TinyLanguageConfig`` fields) with :data:`FLAKY` among its
    components and every prompt listed ``repeat`` times."""
    from align_cbrl.trainer.builders import resolve_task

    task = dataclasses.asdict(resolve_task("tiny_language").config)
    task["components"] = [*task["components"], FLAKY]
    task["prompts"] = [p for p in task["prompts"] for _ in range(repeat)]
    return task


def write_flaky_plugin_config(directory: Path) -> Path:
    """``configs/recipes/plugin_grpo_tiny.yaml`` (recipes/plugin.py, TRL-style) with
    :data:`FLAKY` added to the tiny task's reward config and the 4 prompts listed 4 times (16
    rows): the fault tests' plugin runs (6 steps of one prompt per process on at most two
    processes) stay inside one epoch of TRL's sampler, the only span over which TRL's own resume
    keeps the prompt order (docs/trainer.md). Writes three files into ``directory``; returns the
    recipe config's path."""
    from align_cbrl.data import load_prompts

    rows = [r for r in load_prompts("tiny_language") for _ in range(4)]
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards = yaml.safe_load((ROOT / "configs" / "rewards" / "tiny_language.yaml").read_text())
    rewards["components"] = [*rewards["components"], FLAKY]
    reward_config = directory / "rewards.yaml"
    reward_config.write_text(yaml.safe_dump(rewards))
    data = yaml.safe_load((ROOT / "configs" / "recipes" / "plugin_grpo_tiny.yaml").read_text())
    data.update(dataset=str(prompts), reward_config=str(reward_config))
    path = directory / "plugin_flaky.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------- TRL
_SMALL_CPU_RUN = dict(
    beta=0.5,
    num_generations=4,
    per_device_train_batch_size=8,
    max_completion_length=2,
    learning_rate=1e-2,
    max_steps=4,
    lr_scheduler_type="constant",
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    disable_tqdm=True,
    use_cpu=True,
    seed=0,
    bf16=False,
)


def grpo_args(tmp_path: Path, **kw: Any) -> GRPOConfig:
    """A small CPU GRPOConfig for the plugin tests; ``kw`` overrides single fields."""
    from trl import GRPOConfig

    args = dict(_SMALL_CPU_RUN, output_dir=str(tmp_path / "trl"), scale_rewards="none")
    args["activation_checkpointing"] = False
    args.update(kw)
    return GRPOConfig(**args)


def rloo_args(tmp_path: Path, **kw: Any) -> RLOOConfig:
    """The RLOO counterpart of :func:`grpo_args` (unnormalised advantages)."""
    from trl import RLOOConfig

    args = dict(_SMALL_CPU_RUN, output_dir=str(tmp_path / "trl"), normalize_advantages=False)
    args.update(kw)
    return RLOOConfig(**args)


# ---------------------------------------------------------------------------- launches
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**env: str) -> dict[str, str]:
    """The environment of launched processes: single-threaded, offline, faulthandler on."""
    full = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    full.update(PYTHONFAULTHANDLER="1", TOKENIZERS_PARALLELISM="false", **env)
    return full


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    beside = Path(sys.executable).with_name("py-spy")
    return found or (str(beside) if beside.is_file() else None)


def dump_stacks(pids: list[int]) -> str:
    """Native stacks (py-spy, when installed) of ``pids`` and every process below them, then
    SIGABRT to each so that ``faulthandler`` writes its Python stacks to its stderr; returns
    py-spy's output (empty without py-spy)."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    report = []
    spy = _py_spy()
    for p in procs:
        if spy and p.is_running() and "python" in p.name():
            cmd = [spy, "dump", "--native", "--pid", str(p.pid)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            report.append(f"--- py-spy dump of {p.pid} ({' '.join(p.cmdline()[-6:])})\n")
            report.append(out.stdout + out.stderr)
    for p in reversed(procs):  # workers first: a launcher then sees them die, not the other way
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGABRT)
    time.sleep(2.0)  # faulthandler writes, the process dies
    return "".join(report)


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Wait for every process (all started together) at most ``timeout`` seconds in all;
    return the pids of those still running then."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        for p in procs:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    return [p.pid for p in procs if p.poll() is None]


def kill_all(procs: list[subprocess.Popen]) -> None:
    """SIGKILL every process that still runs and everything below it; reap them."""
    for p in procs:
        if p.poll() is None:
            for child in _children(p.pid):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            p.kill()
        p.wait(timeout=30)


def wait_or_dump(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[str]:
    """:func:`wait_all`; return the processes' outputs. Past the limit: dump the stacks of what
    is still alive (:func:`dump_stacks`), kill it and fail the test with the stacks and the tail
    of every output."""
    alive = wait_all(procs, timeout)
    if alive:
        spy = dump_stacks(alive)
        kill_all(procs)
        tails = "\n".join(f"=== output of {log.name}\n{log.read_text()[-6000:]}" for log in logs)
        pytest.fail(f"processes {alive} still running after {timeout:.0f} s\n{spy}\n{tails}")
    return [log.read_text() for log in logs]


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _log_file(name: str) -> tuple[Path, object]:
    fd, path = tempfile.mkstemp(prefix=f"{name}.", suffix=".log")
    return Path(path), os.fdopen(fd, "w")


def start(cmd: list[str], env: dict[str, str], name: str) -> tuple[subprocess.Popen, Path]:
    """Start ``cmd`` from the repository root, stdout and stderr into one log file."""
    log, fh = _log_file(name)
    with fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return proc, log


def launch_command(script: Path, args: list[str], processes: int) -> list[str]:
    """``accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes N
    --main_process_port <free> script args``."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "cpu.yaml"),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        str(script),
        *args,
    ]


def launch(
    script: Path,
    args: list[str],
    processes: int,
    *,
    timeout: float = LAUNCH_TIMEOUT_S,
    **env: str,
) -> tuple[int, str]:
    """:func:`launch_command` from the repository root (:func:`launch_env`; ``env`` adds
    variables), waited on with :func:`wait_or_dump`; returns ``(exit status, output)``."""
    cmd = launch_command(script, args, processes)
    proc, log = start(cmd, launch_env(**env), Path(script).stem)
    (output,) = wait_or_dump([proc], [log], timeout)
    log.unlink()
    return proc.returncode, output


def accelerate_launch(
    script: Path, args: list[str], processes: int, *, timeout: float = LAUNCH_TIMEOUT_S, **env: str
) -> str:
    """:func:`launch`, asserting that it succeeded; returns the combined output."""
    code, output = launch(script, args, processes, timeout=timeout, **env)
    assert code == 0, output[-4000:]
    return output


def recipe_args(config: Path, out: Path, sync_dir: Path, *extra: str) -> list[str]:
    """``grpo --config CONFIG --output_dir OUT --debug_sync SYNC_DIR EXTRA...``."""
    return [
        "grpo",
        "--config",
        str(config),
        "--output_dir",
        str(out),
        "--debug_sync",
        str(sync_dir),
        *extra,
    ]


def launch_pythonpath() -> str:
    """``PYTHONPATH`` of launched processes that import this package (``tests.fault_rewards``,
    the worker scripts): the repository root, then what was set already."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def sync_reports(sync_dir: Path) -> tuple[dict, dict]:
    """Both ranks' ``--debug_sync`` reports (``rank0.json``, ``rank1.json``) of a 2-process run."""
    assert sorted(p.name for p in sync_dir.iterdir()) == ["rank0.json", "rank1.json"]
    r0, r1 = (json.loads((sync_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert (r0["rank"], r1["rank"]) == (0, 1)
    return r0, r1


def launch_recipe(recipe: str, config: Path, tmp: Path, *extra: str) -> tuple[Path, dict, dict]:
    """Launch ``recipes/<recipe>.py grpo`` on 2 processes with ``--debug_sync``: it succeeds
    and the exact bits of every leader parameter agree across the ranks after every update.
    Returns ``(run directory, rank 0 report, rank 1 report)``."""
    out, sync_dir = tmp / "run", tmp / "sync"
    args = recipe_args(config, out, sync_dir, *extra)
    output = accelerate_launch(
        ROOT / "recipes" / f"{recipe}.py", args, 2, PYTHONPATH=launch_pythonpath()
    )
    assert "on 2 process(es)" in output
    r0, r1 = sync_reports(sync_dir)
    assert r0["hex"] == r1["hex"] and r0["per_update"] == r1["per_update"]
    return out, r0, r1


def start_ranks(
    cmd: list[str], processes: int, **env: str
) -> tuple[list[subprocess.Popen], list[Path]]:
    """Start ``processes`` ranks of ``cmd`` directly (``RANK``, ``WORLD_SIZE``, ``MASTER_*``
    set here, no launcher agent: a rank's failure reaches the others only through the process
    group, which is what the fault tests check); each rank's output in its own log."""
    port = str(free_port())
    procs, logs = [], []
    for rank in range(processes):
        rank_env = launch_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(processes),
            LOCAL_WORLD_SIZE=str(processes),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **env,
        )
        proc, log = start(cmd, rank_env, f"rank{rank}")
        procs.append(proc)
        logs.append(log)
    return procs, logs
