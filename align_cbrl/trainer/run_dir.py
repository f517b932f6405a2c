"""The run directory of an orchestrated HPGD run, treated as one unit.

``<output_dir>/`` holds exactly the files of one run: ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/``, ``leader/``, ``summary.json``, ``training.png`` (:data:`RUN_FILES`).
:func:`plan_run_directory` decides, before anything is built or written, what a new
:class:`~align_cbrl.trainer.HPGDTrainer` does with it:

* nothing there: a fresh run;
* a run there, no flag: :class:`RunExistsError` (nothing is changed);
* ``overwrite``: the whole directory is replaced when training starts (moved aside in one
  rename, then deleted: :func:`~align_cbrl.utils.io.remove_directory`), so no file of the old
  run survives next to the new one; refused when the directory also holds files that are not
  part of a run, or holds the current directory;
* ``resume`` with a checkpoint: continue from the latest one, provided the config matches
  (:func:`resume_differences`: ``output_dir`` is not compared, since the checkpoint is found
  where the run lives now, and paths are compared resolved against the working directory each
  run started in);
* ``resume`` without a checkpoint (a crash before the first one): start again from iteration 0,
  replacing the unfinished run's files, and say so.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RESUMABLE_CHANGES",
    "RUN_FILES",
    "RunDirectoryPlan",
    "RunExistsError",
    "check_resumable",
    "plan_run_directory",
    "resume_differences",
]

RUN_FILES = frozenset(
    {"metrics.jsonl", "tensorboard", "checkpoints", "leader", "summary.json", "training.png"}
)
"""What a run writes under its ``output_dir``."""

RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "iterations",
        "save_every",
        "keep_checkpoints",
        "collective_timeout",
        "plots",
        "progress",
        "tensorboard",
    }
)
"""Config keys that may differ between a run and its resumption."""

_NAMED_MODELS = frozenset({"tiny-word", "tiny-bpe", "smollm2"})


class RunExistsError(FileExistsError):
    """The output directory already holds a run and neither resume nor overwrite was asked for."""


@dataclass
class RunDirectoryPlan:
    """What :meth:`HPGDTrainer.train` does with ``output_dir``: continue from ``resume_from``,
    or (``replace``) remove the old directory first; ``notice`` is printed when training
    starts."""

    resume_from: Path | None
    replace: bool
    notice: str | None = None


def run_files(output_dir: Path) -> list[str]:
    """The run artefacts present in ``output_dir`` (sorted names)."""
    if not output_dir.is_dir():
        return []
    return sorted(p.name for p in output_dir.iterdir() if p.name in RUN_FILES)


def plan_run_directory(
    output_dir: Path, latest_checkpoint: Path | None, *, resume: bool, overwrite: bool
) -> RunDirectoryPlan:
    """Validate ``output_dir`` for a new trainer and decide what happens to it (module
    docstring). Raises before anything is changed."""
    if resume and overwrite:
        raise ValueError("give resume (--resume) or overwrite (--overwrite), not both")
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(
            f"output_dir {str(output_dir)!r} is a file, not a directory; choose another output_dir"
        )
    present = run_files(output_dir)
    notice = None
    if resume and latest_checkpoint is None:
        where = output_dir / "checkpoints"
        notice = f"--resume: no checkpoint under {where} yet; starting the run from iteration 0"
        if present:
            notice += " (the unfinished run's files are replaced)"
        resume, overwrite = False, bool(present)
    if present and not resume and not overwrite:
        again = (
            " It has no checkpoint yet, so --resume starts it again from iteration 0."
            if latest_checkpoint is None
            else ""
        )
        raise RunExistsError(
            f"{output_dir} already holds a run ({', '.join(present)}); pass --resume to continue "
            "it, --overwrite to replace it, or choose another output_dir. Nothing was changed."
            + again
        )
    replace = bool(present) and overwrite and not resume
    if replace:
        _check_replaceable(output_dir)
    return RunDirectoryPlan(latest_checkpoint if resume else None, replace, notice)


def _check_replaceable(output_dir: Path) -> None:
    """``--overwrite`` deletes the whole directory: only when it is nothing but a run."""
    foreign = sorted(
        p.name
        for p in output_dir.iterdir()
        if p.name not in RUN_FILES and not p.name.startswith(".")
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(
            f"--overwrite replaces the whole output_dir {str(output_dir)!r}, which also holds "
            f"files that are not part of a run ({shown}); move them away or choose another "
            "output_dir. Nothing was changed."
        )
    here, target = Path.cwd().resolve(), output_dir.resolve()
    if here == target or target in here.parents:
        raise ValueError(
            f"--overwrite would delete output_dir {str(output_dir)!r}, which holds the current "
            "directory; run from elsewhere. Nothing was changed."
        )


def _resolve(path: str, cwd: str) -> str:
    return os.path.realpath(os.path.join(cwd, os.path.expanduser(path)))


def comparable_config(config: Mapping[str, Any], cwd: str) -> dict[str, Any]:
    """``config`` (a ``to_dict`` of :class:`HPGDConfig`) with the file paths it names resolved
    against ``cwd``: ``rewards.config``, ``leader.init``, a follower's ``model`` (unless a
    named model) and ``dataset`` (unless an embedded prompt set); a missing
    ``leader.follower_schedule`` (older checkpoints) is the default fixed schedule."""
    from align_cbrl.data import known_prompt_sets

    out = copy.deepcopy(dict(config))
    rewards, leader = out.get("rewards"), out.get("leader")
    if isinstance(rewards, dict) and isinstance(rewards.get("config"), str):
        rewards["config"] = _resolve(rewards["config"], cwd)
    if isinstance(leader, dict) and isinstance(leader.get("init"), str):
        leader["init"] = _resolve(leader["init"], cwd)
    if isinstance(leader, dict) and "follower_schedule" not in leader:
        # written before leader.follower_schedule existed: those runs used the fixed schedule
        from align_cbrl.config_parser import to_dict
        from align_cbrl.trainer.follower_schedule import FollowerScheduleConfig

        leader["follower_schedule"] = to_dict(FollowerScheduleConfig())
    embedded = set(known_prompt_sets())
    for f in out.get("followers") or []:
        if not isinstance(f, dict):
            continue
        if isinstance(f.get("model"), str) and f["model"] not in _NAMED_MODELS:
            f["model"] = _resolve(f["model"], cwd)
        if isinstance(f.get("dataset"), str) and f["dataset"] not in embedded:
            f["dataset"] = _resolve(f["dataset"], cwd)
    return out


def resume_differences(
    saved_state: Mapping[str, Any],
    config: Mapping[str, Any],
    allowed: Iterable[str] = RESUMABLE_CHANGES,
) -> list[str]:
    """Top-level config keys in which ``config`` (a ``to_dict``) differs from the checkpoint's
    ``state.json`` (``saved_state``: its ``config`` and the ``cwd`` it was started in; a
    checkpoint without ``cwd`` is compared against the current directory)."""
    here = os.getcwd()
    saved = comparable_config(saved_state.get("config", {}), saved_state.get("cwd") or here)
    mine = comparable_config(config, here)
    allowed = set(allowed)
    return sorted(
        k for k in set(saved) | set(mine) if k not in allowed and saved.get(k) != mine.get(k)
    )


def check_resumable(ckpt: Path, config: Any) -> None:
    """Raise (one line) unless ``config`` (an :class:`~align_cbrl.trainer.HPGDConfig`) may
    continue checkpoint ``ckpt``: only :data:`RESUMABLE_CHANGES` may differ
    (:func:`resume_differences`; fields added since the checkpoint get their defaults)."""
    import contextlib

    from align_cbrl.config_parser import from_dict, to_dict
    from align_cbrl.utils.io import read_json

    saved = read_json(ckpt / "state.json")
    with contextlib.suppress(ValueError):
        saved["config"] = to_dict(from_dict(type(config), saved.get("config", {})))
    diffs = resume_differences(saved, to_dict(config))
    if diffs:
        raise ValueError(
            f"--resume: the config differs from the checkpointed run in {diffs}; resume with "
            f"the same config (only {sorted(RESUMABLE_CHANGES)} may change)"
        )
