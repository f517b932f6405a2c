"""The tax-design results table, rendered from ``docs/tax_design.json`` (written by
``bench/tax_design_sweep.py``) into the README and ``docs/tax_design.md``.

The table sits between the markers :data:`BEGIN` and :data:`END`; :func:`update_file` replaces
what is between them, so the docs never carry numbers that are not in the JSON.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "describe", "render_table", "update_file"]

BEGIN = "<!-- tax_design_table:begin (rendered from docs/tax_design.json) -->"
END = "<!-- tax_design_table:end -->"
_ORDER = ("hpgd", "zero_order_sampled", "naive", "zero_order", "exact")


def describe(label: str) -> str:
    """Readable name of a sweep label (``hpgd_s60000``, ``zero_order_sampled_c50_s60000``, ...)."""
    m = re.fullmatch(r"(hpgd|naive)_s(\d+)", label)
    if m:
        name = "HPGD" if m.group(1) == "hpgd" else "naive"
        return f"{name}, {int(m.group(2)):,} steps"
    m = re.fullmatch(r"zero_order_sampled_c([\d.e+-]+)_s(\d+)(_crn)?", label)
    if m:
        crn = ", CRN" if m.group(3) else ""
        return f"zero-order, sampled values, c = {m.group(1)}, 2 x {int(m.group(2)):,} steps{crn}"
    m = re.fullmatch(r"zero_order_c([\d.e+-]+)", label)
    if m:
        return f"zero-order, exact values (oracle), c = {m.group(1)}"
    if label == "exact":
        return "exact gradient (ceiling)"
    return label


def _sort_key(row: dict[str, Any]) -> tuple:
    label = row["algo"]
    # the label's algorithm: the longest name it starts with (zero_order_sampled, not zero_order)
    algo = max((k for k in _ORDER if label == k or label.startswith(f"{k}_")), key=len, default="")
    kind = _ORDER.index(algo) if algo else len(_ORDER)
    steps = re.search(r"_s(\d+)", label)
    return (row["lam"], kind, -(int(steps.group(1)) if steps else 0), label)


def _fmt_reach(row: dict[str, Any]) -> str:
    if row.get("reference") == row["algo"]:
        return "(reference)"
    n, k = row.get("n_seeds"), row.get("n_seeds_reaching")
    if k is None:
        return "-"
    if not k:
        return f"never (0/{n})"
    return f"{row['iters_to_zo_sampled_final']:.1f} ({k}/{n})"


def render_table(data: dict[str, Any]) -> str:
    """Markdown table of every row of ``data`` (and of its ``extra`` runs)."""
    rows = list(data["rows"])
    for extra in data.get("extra", []):
        rows += extra["rows"]
    lines = [
        "| lambda | algorithm | final F (mean ± s.e.) | iterations to zero-order-sampled's final F "
        "(seed mean, seeds reaching) | half-gain iteration | tau / v1 / v2 / v3 |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=_sort_key):
        se = "" if row.get("n_seeds", 2) < 2 else f" ± {row['final_se']:.3f}"
        half = row.get("half_gain_iteration")
        rates = " / ".join(f"{v:.3f}" for v in row["rates"])
        lines.append(
            f"| {row['lam']:g} | {describe(row['algo'])} | {row['final_mean']:.3f}{se} | "
            f"{_fmt_reach(row)} | {'-' if half is None else half} | {rates} |"
        )
    return "\n".join(lines) + "\n"


def update_file(path: str | os.PathLike[str], data: dict[str, Any]) -> bool:
    """Replace the table between the markers in ``path``; returns whether the file changed."""
    p = Path(path)
    text = p.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN!r} ... {END!r} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render_table(data)}{END}{tail}"
    if new != text:
        p.write_text(new)
    return new != text


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
