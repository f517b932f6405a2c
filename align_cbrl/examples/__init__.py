"""The example configs and recipes, in a checkout and in an installed package.

A checkout has them at its top level: ``configs/`` (run configs such as
``tiny_language_grpo.yaml``, ``rewards/``, ``recipes/`` and ``accelerate/`` YAMLs) and
``recipes/`` (the plain TRL scripts). The wheel ships the same files inside this package
(``align_cbrl/examples/configs``, ``align_cbrl/examples/recipes``; see ``setup.py``), so that

* ``align-cbrl train --config tiny_language_grpo`` finds a shipped run config by name
  (:func:`resolve_config`; an existing file always wins), and
* ``align-cbrl init DIR`` copies ``configs/`` and ``recipes/`` into ``DIR``
  (:func:`copy_examples`), where the README's commands (``--config configs/...``,
  ``recipes/plugin.py``) work as in a checkout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from align_cbrl.utils.suggest import did_you_mean

__all__ = ["config_names", "copy_examples", "examples_root", "resolve_config"]

_PARTS = ("configs", "recipes")


def examples_root() -> Path:
    """The directory holding ``configs/`` and ``recipes/``: this package's own copy in an
    installed wheel, else the checkout this package is imported from."""
    here = Path(__file__).resolve().parent
    for root in (here, here.parents[1]):
        if all((root / part).is_dir() for part in _PARTS):
            return root
    raise FileNotFoundError(
        "the example configs and recipes are not installed with this copy of align_cbrl; "
        "reinstall it from a wheel or a checkout (pip install align-cbrl)"
    )


def config_names() -> list[str]:
    """Names of the shipped run configs (``configs/<name>.yaml`` with a ``followers`` section;
    the others there are prompt sets), e.g. ``tiny_language_grpo``."""
    import yaml

    names = []
    for p in sorted((examples_root() / "configs").glob("*.yaml")):
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "followers" in data:
            names.append(p.stem)
    return names


def resolve_config(spec: str | os.PathLike[str]) -> Path:
    """``spec`` if it is an existing path, else the shipped config it names: ``NAME`` or
    ``NAME.yaml`` (``configs/NAME.yaml``), or a path under ``configs/`` such as
    ``recipes/grpo_tiny.yaml`` or ``configs/recipes/grpo_tiny``. A one-line error lists the
    shipped names otherwise."""
    path = Path(spec)
    if path.exists():
        return path
    rel = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    candidates = [rel] if rel.suffix in (".yaml", ".yml") else [rel.with_suffix(".yaml")]
    try:
        root = examples_root() / "configs"
    except FileNotFoundError:
        return path  # reported as a missing file by the config loader
    for cand in candidates:
        if (root / cand).is_file():
            return root / cand
    names = config_names()
    raise FileNotFoundError(
        f"--config {str(spec)!r}: no such file, and no shipped example config of that name"
        f"{did_you_mean(path.stem, names)}; shipped: {', '.join(names)} (align-cbrl init DIR "
        "copies them out)"
    )


def copy_examples(directory: str | os.PathLike[str]) -> list[Path]:
    """Copy ``configs/`` and ``recipes/`` into ``directory`` (created if needed); refuses when
    either already exists there, so nothing of the user's is overwritten. Returns the two
    copied directories."""
    dest = Path(directory)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"align-cbrl init: {dest} is a file; give a directory")
    clash = [str(dest / p) for p in _PARTS if (dest / p).exists()]
    if clash:
        raise FileExistsError(
            f"align-cbrl init: {', '.join(clash)} already exist(s); nothing was copied (move "
            "them away or choose another directory)"
        )
    root = examples_root()
    out = []
    for part in _PARTS:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "__init__.py")
        out.append(Path(shutil.copytree(root / part, dest / part, ignore=ignore)))
    return out
