"""Render the tax-design results table from ``docs/tax_design.json`` into README.md and
``docs/tax_design.md`` (between the ``tax_design_table`` markers), or print it.

Run: ``.venv/bin/python bench/tax_design_table.py [--write]``.
"""

from __future__ import annotations

import argparse

from tabular_reference.tax_design.report import load, render_table, update_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default="docs/tax_design.json")
    parser.add_argument("--write", nargs="*", default=None, help="files to update (default: both)")
    args = parser.parse_args()
    data = load(args.json)
    if args.write is None:
        print(render_table(data), end="")
        return
    for path in args.write or ["README.md", "docs/tax_design.md"]:
        print(f"{path}: {'updated' if update_file(path, data) else 'unchanged'}")


if __name__ == "__main__":
    main()
