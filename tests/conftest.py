"""Test-wide settings: single-threaded math (2-core machine) and offline Hugging Face."""

from align_cbrl.utils.env import set_cpu_defaults

set_cpu_defaults()

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def econ():
    """The paper's tax-design economy (101 asset bins), built once per test module."""
    from tabular_reference.tax_design.economy import Economy

    return Economy()
