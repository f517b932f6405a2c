"""Test-wide settings: single-threaded math (2-core machine) and offline Hugging Face."""

from align_cbrl.utils.env import set_cpu_defaults

set_cpu_defaults()

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def econ():
    """The paper's tax-design economy (101 asset bins), built once per test module."""
    from tabular_reference.tax_design.economy import Economy

    return Economy()


@pytest.fixture(scope="module")
def task():
    """The enumerable tiny-language task (its default config), built once per test module; a
    module that means another task defines its own ``task`` fixture."""
    from align_cbrl.reference.tiny_language import TinyLanguageTask

    return TinyLanguageTask()


@pytest.fixture(scope="session")
def two_process_runs(tmp_path_factory):
    """Uninterrupted two-process GRPO runs of the recipes (tests/helpers.launch_recipe),
    launched on first use and shared by the tests that compare with them (each launch costs
    tens of seconds): ``get(recipe)`` -> ``(run directory, rank 0 report, rank 1 report)``.
    The orchestrated run uses ``configs/recipes/grpo_tiny.yaml``, the plugin run
    ``plugin_grpo_tiny.yaml`` with a user reward function and 16 prompt rows
    (tests/helpers.write_flaky_plugin_config)."""
    from tests.helpers import ROOT, launch_recipe, write_flaky_plugin_config

    runs = {}

    def get(recipe: str):
        if recipe not in runs:
            tmp = tmp_path_factory.mktemp(f"{recipe}_two_processes")
            config = ROOT / "configs" / "recipes" / "grpo_tiny.yaml"
            if recipe == "plugin":
                config = write_flaky_plugin_config(tmp)
            runs[recipe] = launch_recipe(recipe, config, tmp)
        return runs[recipe]

    return get
