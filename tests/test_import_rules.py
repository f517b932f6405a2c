"""The layers of docs/architecture.md, enforced on the source: every ``import`` statement (module
level or inside a function) of every module is checked against the rules below.

    math core (estimators) <- leaders / rewards / objective / reference <- followers <- trainer
    <- CLI / recipes;   tabular_reference beside, using only the core (and utils).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

TRL_STACK = ("trl", "transformers", "accelerate", "datasets", "peft")
CORE = ("estimators",)
MODEL_LAYER = ("leaders", "rewards", "objective", "reference")
TOP_LEVEL = ("cli", "quickstart", "__main__")


def _imports(path: Path) -> list[str]:
    """Absolute module names imported anywhere in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def _package_modules(package: str) -> list[tuple[str, Path]]:
    """``(layer, path)`` for every module of ``package``: the layer is the subpackage or module
    directly under ``align_cbrl`` (``""`` for ``align_cbrl/__init__.py``)."""
    base = ROOT / package
    out = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).with_suffix("").parts
        out.append(("" if rel == ("__init__",) else rel[0], path))
    return out


def _layer_of(module: str) -> str | None:
    """``align_cbrl.<layer>...`` -> ``<layer>`` (``""`` for the package root); else None."""
    parts = module.split(".")
    if parts[0] != "align_cbrl":
        return None
    return parts[1] if len(parts) > 1 else ""


def _top(module: str) -> str:
    return module.split(".")[0]


def _violations(package: str, allowed) -> list[str]:
    bad = []
    for layer, path in _package_modules(package):
        for module in _imports(path):
            reason = allowed(layer, module)
            if reason:
                bad.append(f"{path.relative_to(ROOT)} imports {module}: {reason}")
    return bad


def _align_cbrl_rule(layer: str, module: str) -> str | None:
    target = _layer_of(module)
    top = _top(module)
    if top in ("tabular_reference", "recipes", "bench", "tests"):
        return "the library never depends on the tabular reference, recipes, benchmarks or tests"
    if layer in CORE:
        if target is not None and target not in CORE:
            return "the math core imports no other align_cbrl layer"
        if top in TRL_STACK:
            return "the math core is torch-only"
    if layer in MODEL_LAYER:
        if target is not None and target not in (*CORE, *MODEL_LAYER, "utils"):
            return "leaders/rewards/objective/reference use only the core and utils"
        if top in TRL_STACK and not (layer == "rewards" and top == "transformers"):
            return "no TRL stack below the followers (rewards may load transformers models)"
    if layer == "followers" and target in ("trainer", *TOP_LEVEL):
        return "followers do not import the trainer or the CLI"
    if layer == "trainer" and target in TOP_LEVEL:
        return "the trainer does not import the CLI / quickstart"
    if top == "trl" and layer not in ("followers", "trainer"):
        return "TRL is used by the followers and the trainer only"
    return None


def _tabular_rule(layer: str, module: str) -> str | None:
    target = _layer_of(module)
    if target is not None and target not in ("estimators", "utils"):
        return "the tabular reference uses only align_cbrl.estimators and align_cbrl.utils"
    if _top(module) in (*TRL_STACK, "recipes", "bench", "tests"):
        return "the tabular reference does not depend on TRL, recipes, benchmarks or tests"
    return None


def test_layers_of_align_cbrl() -> None:
    assert _violations("align_cbrl", _align_cbrl_rule) == []


def test_tabular_reference_uses_only_the_core() -> None:
    assert _violations("tabular_reference", _tabular_rule) == []


@pytest.mark.parametrize(
    ("package", "rule", "layer", "module"),
    [
        ("align_cbrl", _align_cbrl_rule, "estimators", "align_cbrl.leaders.base"),
        ("align_cbrl", _align_cbrl_rule, "estimators", "transformers"),
        ("align_cbrl", _align_cbrl_rule, "leaders", "align_cbrl.followers"),
        ("align_cbrl", _align_cbrl_rule, "objective", "trl"),
        ("align_cbrl", _align_cbrl_rule, "reference", "align_cbrl.trainer.config"),
        ("align_cbrl", _align_cbrl_rule, "followers", "align_cbrl.trainer"),
        ("align_cbrl", _align_cbrl_rule, "trainer", "align_cbrl.cli"),
        ("align_cbrl", _align_cbrl_rule, "checkpoint", "trl"),
        ("align_cbrl", _align_cbrl_rule, "utils", "tabular_reference.mdp"),
        ("tabular_reference", _tabular_rule, "four_rooms", "align_cbrl.leaders"),
        ("tabular_reference", _tabular_rule, "tax_design", "transformers"),
    ],
)
def test_rules_refuse_a_crossing_import(package, rule, layer, module) -> None:
    """Each rule fires on an import that crosses its layer (so the scans above can fail)."""
    assert rule(layer, module)


def test_scan_sees_function_level_imports(tmp_path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    from trl import GRPOConfig\n    import torch.nn\n")
    assert _imports(f) == ["os", "trl", "torch.nn"]
