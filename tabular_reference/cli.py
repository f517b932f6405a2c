"""Command-line entry point: ``python -m tabular_reference {four-rooms,table1,four-rooms-learning,
tax-design,validate} ...``.

Each experiment package exposes ``register(subparsers)`` in its ``cli`` module; this module only
assembles them, so experiments stay independent of each other.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

EXPERIMENT_CLIS = (
    "tabular_reference.four_rooms.cli",
    "tabular_reference.four_rooms.learning_cli",
    "tabular_reference.tax_design.cli",
    "tabular_reference.validate.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tabular_reference",
        description="Exact tabular reference experiments for contextual bilevel RL (HPGD).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in EXPERIMENT_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # experiment package not present in this installation
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
