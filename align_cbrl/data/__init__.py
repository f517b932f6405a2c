"""Embedded prompt sets and enumerable tasks (no downloads).

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
from pathlib import Path
from typing import Any

import yaml

__all__ = ["EMBEDDED_TASKS", "known_prompt_sets", "load_prompts", "task_config"]

_QUICKSTART: dict[str, Any] = {
    "vocab": ["sure", "please", "maybe", "thanks"],
    "max_words": 2,
    "min_words": 0,
    "prompts": [
        {"prompt": "thanks", "category": "quick"},
        {"prompt": "sure thanks", "category": "quick"},
        {"prompt": "please", "category": "polite"},
        {"prompt": "please thanks", "category": "polite"},
        {"prompt": "maybe", "category": "careful"},
        {"prompt": "maybe sure", "category": "careful"},
    ],
    "context_column": "category",
    "components": [
        {"type": "length", "name": "n_words", "unit": "words"},
        {"type": "keyword", "name": "says_sure", "keywords": ["sure"]},
        {"type": "keyword", "name": "says_please", "keywords": ["please"]},
        {"type": "keyword", "name": "says_maybe", "keywords": ["maybe"]},
    ],
    # the follower's own reward model: long, confident answers
    "follower": {"weights": {"n_words": 0.5, "says_sure": 0.5}},
    # what the leader wants, per category (conflicts with the follower differently in each)
    "leader": {
        "weights": {},
        "by_context": {
            "quick": {"n_words": -1.0},
            "polite": {"says_please": 1.0},
            "careful": {"says_sure": -1.0, "says_maybe": 0.5},
        },
    },
}

_TINY_LANGUAGE: dict[str, Any] = {
    "vocab": ["a", "b", "c", "d"],
    "max_words": 2,
    "min_words": 0,
    "prompts": [
        {"prompt": "a b", "category": "concise"},
        {"prompt": "c a", "category": "concise"},
        {"prompt": "b c", "category": "b_topic"},
        {"prompt": "d a", "category": "no_d"},
    ],
    "context_column": "category",
    "components": [
        {"type": "length", "name": "n_words", "unit": "words"},
        {"type": "keyword", "name": "count_a", "keywords": ["a"]},
        {"type": "keyword", "name": "count_b", "keywords": ["b"]},
        {"type": "keyword", "name": "count_d", "keywords": ["d"]},
    ],
    "follower": {"weights": {"n_words": 0.5, "count_a": 0.5}},
    "leader": {
        "weights": {},
        "by_context": {
            "concise": {"n_words": -1.0},
            "b_topic": {"count_b": 1.0},
            "no_d": {"count_d": -1.0},
        },
    },
}

EMBEDDED_TASKS: dict[str, dict[str, Any]] = {
    "quickstart": _QUICKSTART,
    "tiny_language": _TINY_LANGUAGE,
}


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
