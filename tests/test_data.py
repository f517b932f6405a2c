"""The embedded tasks of :mod:`align_cbrl.data`, shipped as package data (YAML files)."""

from __future__ import annotations

from importlib.resources import files

import pytest

from align_cbrl.data import EMBEDDED_TASKS, known_prompt_sets, load_prompts, task_config
from align_cbrl.trainer.builders import resolve_task

FIELDS = [
    "vocab",
    "max_words",
    "min_words",
    "prompts",
    "context_column",
    "components",
    "follower",
    "leader",
]


@pytest.mark.parametrize("name", ["quickstart", "tiny_language"])
def test_shipped_task_files_load_with_the_expected_structure(name: str) -> None:
    """Each task is a YAML file in the package (found through importlib.resources, as an
    installed wheel finds it) whose fields, in order, are TinyLanguageConfig's: a word
    vocabulary, prompts whose words are in it, each labelled by the context column, and
    follower/leader weights over the named reward components only."""
    assert files("align_cbrl.data").joinpath(f"{name}.yaml").is_file()
    task = task_config(name)
    assert list(task) == FIELDS
    assert task == EMBEDDED_TASKS[name] and task is not EMBEDDED_TASKS[name]  # a copy
    assert task["max_words"] == 2 and task["min_words"] == 0
    vocab = set(task["vocab"])
    assert len(vocab) == 4 and all(isinstance(w, str) for w in vocab)
    col = task["context_column"]
    for row in task["prompts"]:
        assert set(row) == {"prompt", col}
        assert set(row["prompt"].split()) <= vocab
    names = {c["name"] for c in task["components"]}
    assert task["follower"]["weights"] and set(task["follower"]["weights"]) <= names
    by_context = task["leader"]["by_context"]
    assert set(by_context) == {row[col] for row in task["prompts"]}
    for weights in by_context.values():
        assert set(weights) <= names
        assert all(isinstance(w, float) for w in weights.values())
    assert load_prompts(name) == task["prompts"]
    assert resolve_task(name) is not None  # and TinyLanguageConfig accepts it


def test_known_prompt_sets_are_the_shipped_files() -> None:
    shipped = sorted(
        p.name.removesuffix(".yaml")
        for p in files("align_cbrl.data").iterdir()
        if p.name.endswith(".yaml")
    )
    assert known_prompt_sets() == shipped == ["quickstart", "tiny_language"]
