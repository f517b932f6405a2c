"""``align-cbrl export RUN_DIR OUT``: the leader of a run as one ``save_pretrained`` folder
(``docs/shaping_artifact.md``).

``RUN_DIR`` may be, in the order they are tried:

* a saved leader folder (``config.json`` of a leader);
* a finished run, orchestrated or plugin (its ``leader/``);
* a TRL checkpoint ``checkpoint-<step>/`` holding ``hpgd_leader/`` (the plugin's leader at that
  step), or a plugin run's output directory without a final leader (its latest such
  checkpoint);
* an orchestrated run without a final leader (killed or still running): its latest
  ``checkpoints/iter_<N>/``, whose leader is rebuilt from the checkpointed run config and
  parameters, with the training summary of its ``metrics.jsonl`` up to iteration ``N``.

The folder is loaded and written again (so it is checked on the way), never copied blindly.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from align_cbrl.leaders.pretrained import load_leader, read_pretrained_config
from align_cbrl.utils.io import load_safetensors, read_json

__all__ = ["export_leader", "find_leader_source"]

_TRL_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")
_RUN_CHECKPOINT = re.compile(r"iter_(\d+)$")


def _latest(directory: Path, pattern: re.Pattern[str], marker: str) -> Path | None:
    found = [
        (int(m.group(1)), p)
        for p in (directory.iterdir() if directory.is_dir() else [])
        if (m := pattern.match(p.name)) and (p / marker).exists()
    ]
    return max(found)[1] if found else None


def _is_leader_folder(path: Path) -> bool:
    try:
        read_pretrained_config(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def find_leader_source(run_dir: str | os.PathLike[str]) -> tuple[str, Path]:
    """``("folder", path)`` of a saved leader folder, or ``("orchestrated", checkpoint)``; a
    directory with neither is a one-line ``FileNotFoundError``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"export: {str(run)!r} is not a directory")
    for candidate in (run, run / "leader", run / "hpgd_leader" / "leader"):
        if _is_leader_folder(candidate):  # a TRL checkpoint's config.json is its model's
            return "folder", candidate
    ckpt = _latest(run, _TRL_CHECKPOINT, "hpgd_leader")
    if ckpt is not None:
        return "folder", ckpt / "hpgd_leader" / "leader"
    ckpt = _latest(run / "checkpoints", _RUN_CHECKPOINT, "state.json")
    if ckpt is not None:
        return "orchestrated", ckpt
    raise FileNotFoundError(
        f"export: {str(run)!r} holds no leader: give a run directory (with leader/ or "
        "checkpoints/), a TRL checkpoint-<step>/ with hpgd_leader/, or a saved leader folder"
    )


def _orchestrated_checkpoint(ckpt: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The leader, the reward and the training summary of checkpoint ``iter_<N>/`` of an
    orchestrated run, rebuilt from its ``state.json`` config (relative paths resolved in the
    run's working directory)."""
    from align_cbrl.config_parser import from_dict
    from align_cbrl.metrics import read_jsonl
    from align_cbrl.trainer import builders
    from align_cbrl.trainer.config import HPGDConfig
    from align_cbrl.trainer.reward_function import ShapedReward

    state = read_json(ckpt / "state.json")
    config = from_dict(HPGDConfig, state["config"])
    cwd = state.get("cwd")
    with contextlib.chdir(cwd) if cwd and Path(cwd).is_dir() else contextlib.nullcontext():
        task = builders.resolve_task(config.task)
        setup = builders.build_reward_setup(config, task)
        column, contexts = setup.context_column, []
        for i, fc in enumerate(config.followers):
            rows = builders.dataset_rows(fc, task, f"followers.{i}")
            keep = builders.select_contexts(rows, fc, column, f"followers.{i}")
            contexts += [rows[j].get(column) for j in keep] if column is not None else []
        leader = builders.build_leader_from_config(config, setup, contexts)
    leader.load_state_dict(load_safetensors(ckpt / "leader.safetensors"))
    reward = ShapedReward(
        builders.bilevel_for(leader, setup), setup.components, context_column=column
    )
    n = int(state["iteration"])
    metrics = ckpt.parent.parent / "metrics.jsonl"
    rows = [r for r in read_jsonl(metrics) if r["step"] <= n] if metrics.is_file() else []
    training: dict[str, Any] = {"mode": "orchestrated", "estimator": config.leader.estimator}
    training.update(iterations=n, follower_steps=config.follower_steps, checkpoint=ckpt.name)
    for key in ("objective_estimate", "objective_exact"):
        if rows and rows[-1].get(key) is not None:
            training[key] = rows[-1][key]
    return leader, reward, training


def export_leader(run_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the leader of ``run_dir`` (module docstring) to the folder ``out``."""
    kind, source = find_leader_source(run_dir)
    if kind == "folder":
        doc = read_pretrained_config(source)
        leader = load_leader(source)
        return leader.save_pretrained(out, rewards=doc.get("rewards"), training=doc.get("training"))
    leader, reward, training = _orchestrated_checkpoint(source)
    from align_cbrl.trainer.final_leader import save_final_leader

    return save_final_leader(reward, out, training)
