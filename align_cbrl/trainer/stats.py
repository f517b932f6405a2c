"""Typed statistics of one leader update and the metric names shared by both modes.

Orchestrated runs (:class:`~align_cbrl.trainer.hpgd_trainer.HPGDTrainer`) and plugin runs
(:class:`~align_cbrl.trainer.callback.HPGDCallback`) report the same quantities under the same
keys (one namespace), built here from typed records instead of ad-hoc string keys:

======================================  =============================================================
key                                     meaning
======================================  =============================================================
``objective_estimate``                  ``sum_f w_f mean rbar_x`` of the groups the update used
                                        (``w_f`` the followers' normalised weights)
``leader/grad_norm``                    hypergradient norm before clipping (0 without a step)
``leader/groups``                       number of prompt groups behind the step (this process)
``<f>/reward``                          mean shaped reward ``r_x`` of follower ``f``'s samples
``<f>/base_reward``                     mean base mix ``r_x - i_x``
``<f>/leader_reward``                   mean ``rbar_x``
``<f>/incentive``, ``<f>/incentive_abs`` mean incentive ``i_x`` and mean ``|i_x|``
``<f>/cost``                            mean incentive cost
``<f>/weight``                          follower ``f``'s normalised weight ``w_f`` (several
                                        followers only)
``<f>/tracking``, ``<f>/tracking_se``   how far follower ``f`` keeps up with the leader's incentive
                                        changes (1: as its best response; 0: not at all) and its
                                        standard error (:mod:`align_cbrl.trainer.tracking`)
``leader/w/<context>/<component>``      the leader's incentive weight table (weight leaders with
                                        at most 64 entries; ``<context>`` is ``all`` without
                                        contexts), after the update
======================================  =============================================================

In plugin mode the follower name ``f`` is the callback's ``follower_name`` (default
``"follower"``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "ESTIMATOR_LABELS",
    "GRAD_NORM",
    "GROUPS",
    "OBJECTIVE_ESTIMATE",
    "FollowerStats",
    "LeaderStats",
    "Stopwatch",
    "UpdateResult",
    "iteration_line",
    "leader_weight_metrics",
    "progress_fields",
]

ESTIMATOR_LABELS = {
    "hpgd": "HPGD leader",
    "naive": "naive leader",
    "zero_order": "zero-order leader",
    "fixed": "fixed leader (no updates)",
}
"""How progress output names a run by its ``leader.estimator``."""

OBJECTIVE_ESTIMATE = "objective_estimate"
GRAD_NORM = "leader/grad_norm"
GROUPS = "leader/groups"


@dataclass(frozen=True)
class FollowerStats:
    """Means over one follower's samples under the leader before the step."""

    reward: float
    base_reward: float
    leader_reward: float
    incentive: float
    incentive_abs: float
    cost: float
    groups: int
    weight: float = 1.0

    def to_metrics(self, follower: str) -> dict[str, float]:
        return {
            f"{follower}/leader_reward": self.leader_reward,
            f"{follower}/reward": self.reward,
            f"{follower}/base_reward": self.base_reward,
            f"{follower}/incentive": self.incentive,
            f"{follower}/incentive_abs": self.incentive_abs,
            f"{follower}/cost": self.cost,
        }


@dataclass(frozen=True)
class LeaderStats:
    """Per-follower statistics; ``objective_estimate = sum_f w_f leader_reward_f``, the
    weighted mean over followers (``docs/theory.md §1``)."""

    followers: dict[str, FollowerStats] = field(default_factory=dict)

    @property
    def objective_estimate(self) -> float:
        return float(sum(s.weight * s.leader_reward for s in self.followers.values()))

    @property
    def groups(self) -> int:
        return int(sum(s.groups for s in self.followers.values()))

    def to_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {OBJECTIVE_ESTIMATE: self.objective_estimate}
        for name, s in self.followers.items():
            out.update(s.to_metrics(name))
            if len(self.followers) > 1:
                out[f"{name}/weight"] = s.weight
        return out


@dataclass(frozen=True)
class UpdateResult:
    """What one leader update did: the statistics it estimated from, the hypergradient norm
    before clipping (``0.0`` when no step was taken), whether a step was taken, and any
    strategy-specific extras (e.g. the zero-order radius)."""

    stats: LeaderStats
    grad_norm: float
    stepped: bool
    extra: dict[str, float] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, float]:
        out = {GRAD_NORM: self.grad_norm, GROUPS: float(self.stats.groups)}
        out.update(self.stats.to_metrics())
        out.update(self.extra)
        return out


class Stopwatch:
    """Wall-clock seconds per named phase of an iteration (the ``time/*`` metrics): each
    :meth:`lap` adds the seconds since the previous lap (or the start) to ``laps[name]``."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def leader_weight_metrics(leader: Any, max_entries: int = 64) -> dict[str, float]:
    """``leader/w/<context>/<component>`` of a leader with a ``weight_table()`` (rows: its
    contexts, or one row ``all``); ``{}`` for other leaders or tables over ``max_entries``."""
    table = getattr(leader, "weight_table", None)
    if table is None:
        return {}
    with torch.no_grad():
        w = table().detach()
    if w.numel() > max_entries:
        return {}
    idx = getattr(leader, "context_index", None)
    rows = ["all"] if idx is None else [str(v) for v in idx.values]
    return {
        f"leader/w/{rows[i]}/{name}": float(w[i, k])
        for i in range(w.shape[0])
        for k, name in enumerate(leader.component_names)
    }


def progress_fields(record: dict[str, Any]) -> dict[str, str]:
    """The progress bar's fields of one iteration: the objective estimate, the hypergradient
    norm and, on an enumerable task, the exact objective."""
    out = {
        "F_est": f"{record['objective_estimate']:.3f}",
        "|g|": f"{record['leader/grad_norm']:.2f}",
    }
    if "objective_exact" in record:
        out["F"] = f"{record['objective_exact']:.3f}"
    return out


def iteration_line(label: str, t: int, total: int, record: dict[str, Any]) -> str:
    """The line printed per iteration without a progress bar (``progress: false``), as TRL's
    ``logging_steps`` does: :func:`progress_fields`, each follower's ``tracking`` and the
    iteration's wall time."""
    fields = [f"{k} {v}" for k, v in progress_fields(record).items()]
    fields += [f"{k} {v:.2f}" for k, v in record.items() if k.endswith("/tracking")]
    seconds = sum(v for k, v in record.items() if k.startswith("time/"))
    return f"{label} iteration {t}/{total}: {', '.join(fields)} ({seconds:.1f} s)"
