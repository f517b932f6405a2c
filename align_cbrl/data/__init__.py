"""Embedded prompt sets and enumerable tasks (no downloads): package data files
``quickstart.yaml`` and ``tiny_language.yaml`` beside this module, read once at import.

* ``"quickstart"``: the README's main job. A word-level "assistant" language with four words
  (``sure``, ``please``, ``maybe``, ``thanks``), prompts in three categories and rule-based reward
  components. The follower's own reward likes long, confident answers (``+0.5`` per word, ``+0.5``
  per ``sure``); the leader wants something different per category: short answers to ``quick``
  prompts, ``please`` in ``polite`` ones and no ``sure`` (but a ``maybe``) in ``careful`` ones.
  Completions have at most two words, so everything is enumerable and the leader objective can
  be computed exactly (:mod:`align_cbrl.reference.tiny_language`).
* ``"tiny_language"``: the core issue's enumerable task in its well-posed variant used by the
  end-to-end acceptance runs (``docs/trainer.md``): vocabulary ``a b c d``, at most two words,
  the leader's components restricted to the ones its objective uses.

:func:`task_config` returns the task as ``TinyLanguageConfig`` fields (a plain dict, YAML-friendly),
:func:`load_prompts` the prompt rows of an embedded set or of a ``.jsonl`` / ``.json`` / ``.yaml``
file (rows with a ``prompt`` field and context columns such as ``category``).
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

__all__ = ["EMBEDDED_TASKS", "known_prompt_sets", "load_prompts", "task_config"]

# One YAML file of package data per task, ``<name>.yaml`` beside this module (shipped in the
# wheel by setup.py's package_data): data, not code, so they read as the configs they are.
_TASK_NAMES = ("quickstart", "tiny_language")


def _load_task(name: str) -> dict[str, Any]:
    """The embedded task ``name`` as parsed from its package data file (``yaml.safe_load``)."""
    text = files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


EMBEDDED_TASKS: dict[str, dict[str, Any]] = {name: _load_task(name) for name in _TASK_NAMES}


def known_prompt_sets() -> list[str]:
    """Names of the embedded prompt sets."""
    return sorted(EMBEDDED_TASKS)


def task_config(name: str) -> dict[str, Any]:
    """A copy of an embedded enumerable task as ``TinyLanguageConfig`` fields."""
    if name not in EMBEDDED_TASKS:
        raise ValueError(f"unknown embedded task {name!r}; known: {known_prompt_sets()}")
    return copy.deepcopy(EMBEDDED_TASKS[name])


def load_prompts(source: str) -> list[dict[str, Any]]:
    """Prompt rows ``[{"prompt": ..., <context columns>...}, ...]``.

    ``source`` is an embedded set name (:func:`known_prompt_sets`) or a file: ``.jsonl`` (one
    JSON object per line), ``.json`` (a list of objects) or ``.yaml`` / ``.yml`` (a list, or a
    mapping with a ``prompts`` list). Raises ``ValueError`` saying what to fix for a missing
    file, an empty set, or rows without a non-empty string ``prompt``."""
    if source in EMBEDDED_TASKS:
        rows = copy.deepcopy(EMBEDDED_TASKS[source]["prompts"])
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(
                f"dataset {source!r} is neither an embedded prompt set ({known_prompt_sets()}) "
                "nor an existing .jsonl/.json/.yaml file; fix the dataset path"
            )
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".jsonl":
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            elif path.suffix == ".json":
                rows = json.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                rows = yaml.safe_load(text)
                if isinstance(rows, dict):
                    rows = rows.get("prompts")
            else:
                raise ValueError(
                    f"dataset file {source!r}: use a .jsonl, .json or .yaml file of prompt rows"
                )
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"dataset file {source!r} cannot be parsed: {err}") from err
    if not isinstance(rows, list) or not rows:
        raise ValueError(
            f"dataset {source!r} is empty; give at least one row with a 'prompt' (and context "
            "columns such as 'category')"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise ValueError(
                f"dataset {source!r}: row {i} ({row!r}) needs a non-empty string 'prompt'"
            )
    return rows
