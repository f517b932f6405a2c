"""Small helpers shared by the recipes (kept here so each recipe stays a short, plain script).

* :func:`load_recipe_config`: the follower trainer (``grpo`` / ``rloo``, the first argument), the
  recipe's own switches (:func:`pop_flags`) and the ``HPGDConfig`` from ``--config`` plus dotted
  overrides.
* :func:`pop_flags`: split the recipe's own switches off the ``--config`` / ``--key value`` list.
* :func:`check_identical_every_iteration` / :class:`SyncCheckCallback`: compare the leader's
  parameters across ranks after every leader update (``--debug_sync``).
* ending the process: the recipes end a run with :func:`align_cbrl.trainer.faults.finish_run` and
  run ``main`` through :func:`align_cbrl.trainer.faults.run_and_leave` (one-line errors and exit
  statuses; a multi-process run leaves with ``os._exit`` while the trainer is still referenced,
  which is what keeps it from hanging at exit: docs/reliability.md).
* :func:`write_sync_report`: each rank writes ``rank<r>.json`` (checksum, exact hex of every
  parameter, per-update checksums) into the ``--debug_sync`` directory; meant for tests and
  debugging, the run's own outputs stay rank-0-only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RECIPE_KINDS = ("grpo", "rloo")


def load_recipe_config(
    argv: Sequence[str], script: str, switches: Sequence[str]
) -> tuple[str, Any, dict[str, Any]]:
    """``(kind, config, flags)`` from ``[grpo|rloo] --config FILE.yaml [--switch ...]
    [--debug_sync DIR] [--key value ...]``. Import torch (via the config) only after the
    environment defaults are set."""
    from align_cbrl.config_parser import ConfigError, load_config, parse_overrides, pop_flags
    from align_cbrl.trainer.config import HPGDConfig

    if not argv or argv[0] not in RECIPE_KINDS:
        raise ConfigError(
            f"usage: {script} {{{','.join(RECIPE_KINDS)}}} --config FILE.yaml [overrides]: "
            "name the follower trainer first"
        )
    flags, rest = pop_flags(argv[1:], switches=switches, options=["--debug_sync"])
    config_path, overrides = parse_overrides(rest)
    if config_path is None:
        raise ConfigError("give --config FILE.yaml (see configs/recipes/)")
    return argv[0], load_config(HPGDConfig, config_path, overrides), flags


def check_identical_every_iteration(trainer: Any) -> list[str]:
    """Wrap ``trainer.step`` (an :class:`~align_cbrl.trainer.HPGDTrainer`) so that after every
    outer iteration the leader's checksum is all-gathered and compared across ranks
    (:meth:`LeaderSync.assert_identical` raises on any difference). Returns the list that
    collects one checksum per iteration."""
    digests: list[str] = []
    step = trainer.step

    def checked_step(t: int) -> dict[str, Any]:
        record = step(t)
        digests.append(trainer.sync.assert_identical(trainer.leader))
        return record

    trainer.step = checked_step
    return digests


def make_sync_check_callback(hpgd_callback: Any) -> Any:
    """A ``TrainerCallback`` that compares the leader across ranks after every optimiser step
    on which ``hpgd_callback`` updated it (plugin mode); its ``digests`` list collects them."""
    from transformers import TrainerCallback

    class SyncCheckCallback(TrainerCallback):
        def __init__(self) -> None:
            self.digests: list[str] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % hpgd_callback.update_every == 0:
                sync = hpgd_callback.sync
                self.digests.append(sync.assert_identical(hpgd_callback.leader))

    return SyncCheckCallback()


def write_sync_report(
    directory: str | os.PathLike[str], sync: Any, leader: Any, digests: Sequence[str]
) -> Path:
    """Write this rank's ``rank<r>.json``: world size, final checksum (after an all-gather
    check), the exact bits of every leader parameter (``float.hex``) and the per-update
    checksums."""
    final = sync.assert_identical(leader)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    values = [v for p in leader.parameters() for v in p.detach().reshape(-1).tolist()]
    path = out / f"rank{sync.rank}.json"
    path.write_text(
        json.dumps(
            {
                "rank": sync.rank,
                "world_size": sync.world_size,
                "checksum": final,
                "hex": [float(v).hex() for v in values],
                "per_update": list(digests),
            },
            indent=1,
        )
    )
    return path
