"""Small helpers shared by the recipes (kept here so each recipe stays a short, plain script).

* :func:`cpu_defaults`: single-threaded math and offline Hugging Face; call before importing torch.
* :func:`pop_flags`: split the recipe's own switches off the ``--config`` / ``--key value`` list.
* :func:`check_identical_every_iteration` / :class:`SyncCheckCallback`: compare the leader's
  parameters across ranks after every leader update (``--debug_sync``).
* :func:`finish`: wait for every rank, then tear the process group down before Python exits.
* :func:`write_sync_report`: each rank writes ``rank<r>.json`` (checksum, exact hex of every
  parameter, per-update checksums) into the ``--debug_sync`` directory; meant for tests and
  debugging, the run's own outputs stay rank-0-only.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ENV_DEFAULTS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}


def cpu_defaults() -> None:
    """Set the environment defaults above (already-set variables win), then one torch thread."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pop_flags(
    argv: Sequence[str], switches: Sequence[str] = (), options: Sequence[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """Remove ``--switch`` (boolean) and ``--option VALUE`` arguments from ``argv``.

    Returns ``({name: value}, remaining)``; absent switches are ``False``, absent options
    ``None``. The remaining arguments are the config overrides for
    :func:`align_cbrl.config_parser.parse_overrides`."""
    rest = list(argv)
    found: dict[str, Any] = {s.lstrip("-").replace("-", "_"): False for s in switches}
    found.update({o.lstrip("-").replace("-", "_"): None for o in options})
    for s in switches:
        while s in rest:
            rest.remove(s)
            found[s.lstrip("-").replace("-", "_")] = True
    for o in options:
        key = o.lstrip("-").replace("-", "_")
        for i, tok in enumerate(rest):
            if tok == o:
                if i + 1 >= len(rest):
                    raise ValueError(f"{o} needs a value")
                found[key] = rest[i + 1]
                del rest[i : i + 2]
                break
            if tok.startswith(o + "="):
                found[key] = tok.split("=", 1)[1]
                del rest[i]
                break
    return found, rest


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


def exit_now(code: int = 0) -> None:
    """Leave the process without interpreter finalisation, after :func:`finish`.

    Called by the recipe scripts once ``main`` returned: every output is written and closed and
    the process group is destroyed. Two-process CPU runs still sometimes hung in garbage
    collection at interpreter exit after both ranks had finished (the two-process plugin test
    timed out at 300 s in a clean-clone run); the distributed test worker exits the same way.
    Standard streams are flushed first. An exception in ``main`` never reaches this call, so
    errors still exit with their traceback and a non-zero status."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def finish(state: Any) -> None:
    """Wait for every rank, then destroy the process group (an ``accelerate`` ``PartialState``).

    Without the explicit teardown, gloo's worker thread can still be releasing the last
    collective's work object (which holds tensors, hence Python references) while the interpreter
    finalises; taking the GIL then ends the thread mid C++ frame and the rank aborts with
    "terminate called without an active exception" (SIGABRT) after all its outputs are written
    (seen in about 1 of 20 two-process CPU runs; backtrace: ``ProcessGroupGloo::runLoop`` ->
    ``~AsyncBarrierWork`` -> ``decref`` -> ``take_gil`` -> ``pthread_exit``). Destroying the group
    joins those threads while Python is still alive.
    """
    state.wait_for_everyone()
    state.destroy_process_group()
