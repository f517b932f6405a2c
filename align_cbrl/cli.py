"""The ``align-cbrl`` command.

* ``align-cbrl train --config configs/<name>.yaml [--resume] [--overwrite] [--key.sub value ...]``:
  an orchestrated HPGD run (:class:`~align_cbrl.trainer.HPGDTrainer`) configured by an
  :class:`~align_cbrl.trainer.HPGDConfig` YAML; dotted overrides follow TRL's ``TrlParser``
  (``--leader.lr 0.05``, ``--followers.0.beta 0.2``).
* ``align-cbrl quickstart [--output-dir DIR] [--iterations T]``: the README's main job
  (:mod:`align_cbrl.quickstart`).

Configuration and input errors are printed as one ``error: ...`` line (exit status 2), without a
traceback; nothing already written is removed.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence

__all__ = ["main", "quiet_libraries", "set_cpu_defaults", "train_main"]

_ENV_DEFAULTS = (
    ("OMP_NUM_THREADS", "1"),
    ("MKL_NUM_THREADS", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("MPLBACKEND", "Agg"),
)


def set_cpu_defaults() -> None:
    """Single-threaded math and offline Hugging Face (call before torch is imported; an
    already-set variable is left alone), then ``torch.set_num_threads(1)``."""
    for key, value in _ENV_DEFAULTS:
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(1)


def quiet_libraries() -> None:
    """Hide transformers' per-load progress bars and deprecation chatter (errors still show)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


USAGE = """usage: align-cbrl <command> [options]

commands:
  train --config FILE.yaml [--resume] [--overwrite] [--key.sub VALUE ...]
        orchestrated HPGD run (see configs/*.yaml and docs/trainer.md)
  quickstart [--output-dir DIR] [--iterations T] [--no-progress]
        HPGD leader vs no leader vs naive leader on the embedded default
"""


def train_main(argv: Sequence[str]) -> int:
    """``align-cbrl train``: load the config, validate, run; returns the exit status."""
    set_cpu_defaults()
    quiet_libraries()
    from align_cbrl.config_parser import load_config, parse_overrides
    from align_cbrl.trainer import HPGDConfig, HPGDTrainer

    argv = list(argv)
    flags = {"--resume": False, "--overwrite": False}
    for flag in flags:
        while flag in argv:
            argv.remove(flag)
            flags[flag] = True
    if flags["--resume"] and flags["--overwrite"]:
        raise ValueError("give --resume or --overwrite, not both")
    config_path, overrides = parse_overrides(argv)
    if config_path is None:
        raise ValueError("align-cbrl train needs --config FILE.yaml (see configs/)")
    config = load_config(HPGDConfig, config_path, overrides)
    trainer = HPGDTrainer(config, resume=flags["--resume"], overwrite=flags["--overwrite"])
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    keys = [k for k in summary if k.startswith("eval/") and k.count("/") == 1]
    for k in sorted(keys):
        print(f"{k}: {summary[k]:.4f}")
    print(f"outputs under {config.output_dir}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``align-cbrl`` console script."""
    from align_cbrl.config_parser import ConfigError
    from align_cbrl.followers.base import RewardFunctionError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    try:
        if command == "train":
            if rest and rest[0] in ("-h", "--help"):
                print(USAGE)
                return 0
            return train_main(rest)
        if command == "quickstart":
            from align_cbrl.quickstart import main as quickstart_main

            return quickstart_main(rest)
    except (
        ConfigError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        RewardFunctionError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
