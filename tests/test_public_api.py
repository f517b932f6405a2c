"""The top-level API resolves every advertised name, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import align_cbrl


@pytest.mark.parametrize("name", [n for n in align_cbrl.__all__ if n != "__version__"])
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(align_cbrl, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'HPGDTrainr'"):
        align_cbrl.HPGDTrainr  # noqa: B018


def test_import_does_not_pull_in_trl_or_tabular_code() -> None:
    code = (
        "import sys, align_cbrl, align_cbrl.estimators, align_cbrl.leaders, align_cbrl.rewards, "
        "align_cbrl.objective, align_cbrl.reference;"
        "bad = [m for m in ('trl', 'transformers', 'tabular_reference') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
