"""Build configuration beyond ``pyproject.toml`` (which holds the metadata and dependencies).

The example configs (``configs/``: run configs, reward configs, recipe configs, accelerate
YAMLs) and the recipe scripts (``recipes/``) live at the repository's top level, where the
README, the docs, the tests and the Makefile use them. The wheel ships them too, as the data
of ``align_cbrl.examples.configs`` / ``align_cbrl.examples.recipes`` (``package_dir`` maps the
two directories there), so that an installed ``align-cbrl`` finds ``--config tiny_language_grpo``
by name and ``align-cbrl init DIR`` copies them out (:mod:`align_cbrl.examples`).
"""

from setuptools import find_packages, setup

EXAMPLES = {"align_cbrl.examples.configs": "configs", "align_cbrl.examples.recipes": "recipes"}

setup(
    packages=[*find_packages(include=["align_cbrl*", "tabular_reference*"]), *EXAMPLES],
    package_dir=EXAMPLES,
    package_data={
        "": ["*.yaml", "*.json", "*.txt"],
        "align_cbrl.examples.configs": ["*.yaml", "*/*.yaml"],
        "align_cbrl.examples.recipes": ["*.py"],
    },
)
