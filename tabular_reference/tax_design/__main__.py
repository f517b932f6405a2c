"""``python -m tabular_reference.tax_design ...`` (same options as ``tax-design``)."""

from tabular_reference.tax_design.cli import _standalone

raise SystemExit(_standalone())
