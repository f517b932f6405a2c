"""The ``align-cbrl`` command.

* ``align-cbrl train --config configs/<name>.yaml [--resume | --overwrite] [--key.sub value ...]``:
  an orchestrated HPGD run (:class:`~align_cbrl.trainer.HPGDTrainer`) configured by an
  :class:`~align_cbrl.trainer.HPGDConfig` YAML; dotted overrides follow TRL's ``TrlParser``
  (``--leader.lr 0.05``, ``--followers.0.beta 0.2``); booleans also as ``--progress`` /
  ``--no-progress``. ``align-cbrl train --help`` lists every config key with its default and
  help text (from the dataclass fields' ``metadata["help"]``).
  ``--config`` also takes the name of a shipped example config (``--config tiny_language_grpo``;
  :mod:`align_cbrl.examples`).
* ``align-cbrl quickstart [--output-dir DIR] [--iterations T] [--progress | --no-progress]``:
  the README's main job (:mod:`align_cbrl.quickstart`).
* ``align-cbrl export RUN_DIR OUT``: a run's leader as a ``save_pretrained`` folder
  (:mod:`align_cbrl.trainer.export`).
* ``align-cbrl init [DIR]``: copy the example ``configs/`` and ``recipes/`` into ``DIR``
  (default ``.``).
* ``align-cbrl --version``.

``--help`` works anywhere on the command line. The current directory is put first on
``sys.path`` (as ``python -m`` does) so a ``callable`` reward module next to the config imports.
Configuration and input errors are printed as one ``error: ...`` line (exit status 2), without a
traceback, before anything is written. Ctrl-C is one line too (exit status 130), saying that
``--resume`` continues the run from its last checkpoint; so are the other failures a run can
meet (a peer process gone, a checkpoint write refused, SIGINT / SIGTERM during training: the
run stops after the current iteration with a checkpoint), with the statuses of
:mod:`align_cbrl.trainer.faults` (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from align_cbrl.utils.env import quiet_libraries, set_cpu_defaults

__all__ = ["init_main", "main", "train_main"]

USAGE = """usage: align-cbrl <command> [options]     (align-cbrl <command> --help for details)

commands:
  train --config FILE.yaml [--resume | --overwrite] [--KEY VALUE ...]
        orchestrated HPGD run (see configs/*.yaml and docs/trainer.md)
  quickstart [--output-dir DIR] [--iterations T] [--progress | --no-progress]
        HPGD leader vs no leader vs naive leader on the embedded default
  export RUN_DIR OUT
        the leader of a run (or of a TRL checkpoint with hpgd_leader/) as one
        save_pretrained folder: config.json, model.safetensors, README.md model card
  init [DIR]
        copy the example configs/ and recipes/ into DIR (default: the current directory)

options:
  -h, --help     show this help and exit
  --version      print the version and exit
"""

TRAIN_DESCRIPTION = """\
Orchestrated HPGD run: T outer iterations; in each, every follower trains K steps on the
leader's current shaped reward, G prompts x N completions are sampled per follower, and the
leader takes one clipped optimiser step along the hypergradient estimate.

The YAML file (see configs/*.yaml) sets the config keys listed below; --KEY VALUE on the command
line overrides one (VALUE is read as YAML: 0.1, true, [1, 2]; dashes or underscores in KEY;
--KEY=VALUE works too). Nested keys are dotted: --leader.lr 0.05; list entries are indexed:
--followers.0.beta 0.2. Booleans: --KEY / --no-KEY, or --KEY true|false (e.g. --no-progress).

Every setting is validated before anything is written; a problem is one "error: ..." line
(exit status 2). Reward components of type `callable` ('module:function') are imported with the
current directory first on the import path, as `python -m` would."""

TRAIN_EPILOG = """\
outputs under output_dir: metrics.jsonl, tensorboard/ (unless tensorboard: false or the package
is missing; a line says so), checkpoints/iter_NNNNNN/, leader/, summary.json, training.png.
examples:
  align-cbrl train --config configs/tiny_language_grpo.yaml --leader.lr 0.1 --no-progress
  align-cbrl train --config configs/tiny_language_grpo.yaml --resume --iterations 40"""


def version_line() -> str:
    from align_cbrl import __version__

    return f"align-cbrl {__version__}"


def train_parser() -> argparse.ArgumentParser:
    """The ``align-cbrl train`` options and every config key (sections from the
    :class:`~align_cbrl.trainer.HPGDConfig` dataclasses, help from their field metadata); used
    for ``--help``, the values are parsed by :func:`~align_cbrl.config_parser.parse_overrides`."""
    from align_cbrl.config_parser import add_config_arguments
    from align_cbrl.trainer.config import HPGDConfig

    parser = argparse.ArgumentParser(
        prog="align-cbrl train",
        usage="align-cbrl train --config FILE.yaml [--resume | --overwrite] [--KEY VALUE ...]",
        description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="the run's YAML config (required; see configs/), or the name of a shipped example "
        "config such as tiny_language_grpo",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its latest checkpoint (only iterations, "
        "save_every, keep_checkpoints, collective_timeout, plots, progress, tensorboard may change; output_dir may "
        "be given another way or the directory moved); a run without a checkpoint starts again "
        "from iteration 0, and says so",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in output_dir: the whole directory is moved aside and deleted once "
        "validation passed, so no file of the old run survives",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    add_config_arguments(parser, HPGDConfig)
    return parser


def train_main(argv: Sequence[str]) -> int:
    """``align-cbrl train``: load the config, validate, run; returns the exit status."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(train_parser().format_help())
        return 0
    if "--version" in argv:
        print(version_line())
        return 0
    set_cpu_defaults()
    quiet_libraries()
    from align_cbrl.config_parser import load_config, parse_overrides, pop_flags
    from align_cbrl.examples import resolve_config
    from align_cbrl.trainer import HPGDConfig, HPGDTrainer
    from align_cbrl.trainer.faults import finish_run

    flags, argv = pop_flags(argv, switches=["--resume", "--overwrite"])
    if flags["resume"] and flags["overwrite"]:
        raise ValueError("give --resume or --overwrite, not both")
    config_path, overrides = parse_overrides(argv, HPGDConfig)
    if config_path is None:
        raise ValueError(
            "align-cbrl train needs --config FILE.yaml (see configs/; align-cbrl train --help)"
        )
    config = load_config(HPGDConfig, resolve_config(config_path), overrides)
    trainer = HPGDTrainer(config, resume=flags["resume"], overwrite=flags["overwrite"])
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    keys = [k for k in summary if k.startswith("eval/") and k.count("/") == 1]
    for k in sorted(keys):
        print(f"{k}: {summary[k]:.4f}")
    print(f"outputs under {config.output_dir}/")
    finish_run()  # several processes: barrier, then leave here, with the trainer still referenced
    return 0


def export_main(argv: Sequence[str]) -> int:
    """``align-cbrl export RUN_DIR OUT`` (:mod:`align_cbrl.trainer.export`)."""
    parser = argparse.ArgumentParser(
        prog="align-cbrl export",
        description="Write the leader of a run as one save_pretrained folder (config.json, "
        "model.safetensors, README.md): RUN_DIR is a run directory (orchestrated or plugin, "
        "finished or with checkpoints), a TRL checkpoint-<step>/ holding hpgd_leader/, or a "
        "saved leader folder. Reuse it with FrozenShapedReward.from_pretrained(OUT).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("out", metavar="OUT", help="the folder to write (created if missing)")
    args = parser.parse_args(list(argv))
    from align_cbrl.trainer.export import export_leader

    out = export_leader(args.run_dir, args.out)
    print(f"leader written to {out}/ (config.json, model.safetensors, README.md)")
    return 0


def init_main(argv: Sequence[str]) -> int:
    """``align-cbrl init [DIR]``: copy the example configs and recipes into ``DIR``."""
    from align_cbrl.examples import copy_examples

    if any(a in ("-h", "--help") for a in argv):
        print("usage: align-cbrl init [DIR]\n\ncopy the example configs/ and recipes/ into DIR")
        return 0
    if len(argv) > 1 or any(a.startswith("-") for a in argv):
        raise ValueError(f"usage: align-cbrl init [DIR] (one directory), got {list(argv)}")
    copied = copy_examples(argv[0] if argv else ".")
    print(f"copied {' and '.join(str(p) for p in copied)}; e.g.")
    print(f"  cd {copied[0].parent} && align-cbrl train --config configs/tiny_language_grpo.yaml")
    return 0


def _cwd_on_path() -> None:
    """Put the current directory first on ``sys.path``, as ``python -m`` does (a console
    script's ``sys.path[0]`` is its bin directory), so a ``callable`` reward module next to the
    config imports."""
    cwd = os.getcwd()
    if not any(p in ("", ".", cwd) for p in sys.path):
        sys.path.insert(0, cwd)


def interrupted_line(command: str, rest: Sequence[str]) -> str:
    """What Ctrl-C prints: for ``train``, the command that continues the run."""
    if command != "train":
        return f"interrupted (Ctrl-C); align-cbrl {command} did not finish"
    again = [a for a in rest if a not in ("--resume", "--overwrite")]
    line = shlex.join(["align-cbrl", "train", *again, "--resume"])
    return f"interrupted (Ctrl-C); `{line}` continues the run from its last checkpoint"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``align-cbrl`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("--version", "-V"):
        print(version_line())
        return 0
    command, rest = args[0], args[1:]
    _cwd_on_path()
    try:
        if command == "train":
            return train_main(rest)
        if command == "quickstart":
            from align_cbrl.quickstart import main as quickstart_main

            return quickstart_main(rest)
        if command == "export":
            return export_main(rest)
        if command == "init":
            return init_main(rest)
    except BaseException as err:
        from align_cbrl.trainer.faults import leave, multi_process, report_failure
        from align_cbrl.trainer.interrupt import TrainingInterrupted

        if isinstance(err, KeyboardInterrupt) and not isinstance(err, TrainingInterrupted):
            print(interrupted_line(command, rest), file=sys.stderr)
            if multi_process():
                leave(130)
            return 130
        code = report_failure(err)  # one line; several processes: leaves the process here
        if code is None:
            raise
        return code
    print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
