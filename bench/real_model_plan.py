"""The runs of ``bench/real_model.py``: every arm at every seed, the weight sweep, the frozen
reuse of HPGD's leaders and the longer runs, as named units ``<arm>/s<seed>`` (one run
directory each, ``<output_dir>/<arm>/s<seed>/``), in the order they are worth running.

Arms (``bench.arms`` lists the families to run):

* ``hpgd``, ``none``, ``fixed``, ``naive``, ``zero_order``: as before, at ``bench.seeds``
  (``zero_order`` at ``bench.zero_order_seeds``); ``naive`` is not in the default list: at zero
  initial incentive its gradient is ``-d cost = 0``, so it is the ``none`` arm exactly.
* ``sweep``: the practitioner's baseline. Every hand-set weighting of ``bench.sweep`` (and
  ``fixed``, the scale-1 point) is trained once at the first seed and scored on the validation
  prompts (``bench.validation``); the best by validation leader objective is ``sweep_best``,
  retrained at the other seeds (``sweep_<name>/s<seed>``; when ``fixed`` wins, its own seeded
  runs are the retrains) and scored on the held-out prompts like every arm.
* ``hpgd_frozen``: each HPGD seed's final leader, frozen (``leader.estimator: fixed``,
  ``leader.init``), shaping a fresh follower: the run seed ``s + bench.frozen_seed_offset``
  reseeds the follower (LoRA initialisation, prompt order, sampling).
* ``long``: ``hpgd`` and ``none`` with ``bench.long_factor`` times the outer iterations (and so
  the follower steps) at ``bench.long_seeds``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAMILIES = ("hpgd", "none", "fixed", "naive", "zero_order", "sweep", "hpgd_frozen", "long")
ESTIMATOR = {"hpgd": "hpgd", "naive": "naive", "zero_order": "zero_order"}


@dataclass(frozen=True)
class Unit:
    """One training run: ``arm`` at ``seed`` (the arm's seed label; ``hpgd_frozen`` runs at
    ``seed + frozen_seed_offset``)."""

    arm: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm}/s{self.seed}"

    @classmethod
    def parse(cls, name: str) -> Unit:
        arm, _, s = name.rpartition("/s")
        if not arm or not s.lstrip("-").isdigit():
            raise ValueError(f"unit {name!r} must read <arm>/s<seed>, e.g. hpgd/s0")
        return cls(arm, int(s))


def base_arm(arm: str) -> str:
    """The arm's estimator family: ``hpgd_long`` -> ``hpgd``, ``sweep_x2`` -> ``fixed``."""
    if arm.endswith("_long"):
        return arm.removesuffix("_long")
    if arm.startswith("sweep_") or arm in ("hpgd_frozen", "before"):
        return "fixed"
    return arm


def phase_one(bench: Mapping[str, Any]) -> list[Unit]:
    """Every unit that needs no sweep selection, most informative first: HPGD and no leader
    seed by seed (the acceptance pair), the hand-set arm, HPGD's leaders reused, the sweep,
    zero-order, the longer runs."""
    fams, seeds = set(bench["arms"]), list(bench["seeds"])
    units = [Unit("before", seeds[0])]
    for s in seeds:
        units += [Unit(a, s) for a in ("hpgd", "none", "naive") if a in fams]
    if "fixed" in fams or "sweep" in fams:
        units += [Unit("fixed", s) for s in seeds]
    if "hpgd_frozen" in fams:
        units += [Unit("hpgd_frozen", s) for s in seeds]
    if "sweep" in fams:
        units += [Unit(f"sweep_{k}", seeds[0]) for k in bench["sweep"]]
    if "zero_order" in fams:
        units += [Unit("zero_order", s) for s in bench["zero_order_seeds"]]
    if "long" in fams:
        units += [Unit(f"{a}_long", s) for s in bench["long_seeds"] for a in ("hpgd", "none")]
    return units


def sweep_candidates(bench: Mapping[str, Any]) -> list[str]:
    """The sweep's arms: ``fixed`` (the leader's own weights, scale 1) and ``sweep_<name>``."""
    return ["fixed", *(f"sweep_{k}" for k in bench["sweep"])]


def select_sweep(root: Path, bench: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sweep's validation scores at the first seed and the selected arm (highest
    validation leader objective), or ``None`` while a candidate is unfinished."""
    s0 = bench["seeds"][0]
    rows = []
    for arm in sweep_candidates(bench):
        f = root / arm / f"s{s0}" / "validation.json"
        if not f.is_file():
            return None
        v = json.loads(f.read_text())["overall"]["leader_objective"]
        weights = bench["fixed_weights"] if arm == "fixed" else bench["sweep"][arm[6:]]
        row = {"arm": arm, "weights": weights, "validation_objective": v["mean"]}
        rows.append({**row, "validation_se": v["se"]})
    best = max(rows, key=lambda r: r["validation_objective"])
    for r in rows:
        r["selected"] = r is best
    return {"selected": best["arm"], "sweep": rows}


def phase_two(root: Path, bench: Mapping[str, Any]) -> list[Unit]:
    """The selected weighting retrained at the other seeds (none when ``fixed`` won: its seeded
    runs exist already, or when the sweep is not run or not finished)."""
    if "sweep" not in bench["arms"]:
        return []
    sel = select_sweep(root, bench)
    if sel is None or sel["selected"] == "fixed":
        return []
    return [Unit(sel["selected"], s) for s in bench["seeds"][1:]]


def sweep_best_units(root: Path, bench: Mapping[str, Any]) -> list[Unit]:
    """The ``sweep_best`` arm's runs, one per seed (empty before the selection)."""
    sel = select_sweep(root, bench)
    if sel is None:
        return []
    return [Unit(sel["selected"], s) for s in bench["seeds"]]


def requirement(unit: Unit, root: Path) -> Path | None:
    """A file that must exist before ``unit`` can start: HPGD's final leader for a frozen
    reuse (its held-out file is written after the leader)."""
    if unit.arm == "hpgd_frozen":
        return root / "hpgd" / f"s{unit.seed}" / "heldout.json"
    return None


def needs_validation(unit: Unit, bench: Mapping[str, Any]) -> bool:
    """Sweep candidates at the first seed are also scored on the validation prompts."""
    return (
        "sweep" in bench["arms"]
        and unit.arm in sweep_candidates(bench)
        and (unit.seed == bench["seeds"][0])
    )
