"""Does the follower keep up with the leader? The ``<f>/tracking`` diagnostic (both modes).

HPGD assumes a (near) best-responding follower (``docs/theory.md §3``): after the leader moves
from ``x_{t-1}`` to ``x_t``, the follower's reward changes by the incentive change
``d(p, y) = v (i_{x_t}(p, y) - i_{x_{t-1}}(p, y))`` (``v``: the weight on ``r_x``) and its best
response moves from ``pi`` to ``pi' ∝ pi exp(d / beta)``. This module compares, at every leader
update, how far the follower actually moved along ``d`` with how far that best response would:

* **observed** ``O_t = mean_{B_t} d - mean_{B_{t-1}} d``: the mean incentive change over the
  completions sampled under ``x_t`` (``B_t``, after the follower trained on ``r_{x_t}``) minus
  its mean over the previous update's completions (``B_{t-1}``, sampled under ``x_{t-1}``);
* **predicted** ``P_t = sum_{B_{t-1}} w d / sum w - mean_{B_{t-1}} d``, ``w = exp(d / beta)``:
  the same change for a follower that best-responds, ``E_{pi'}[d] - E_pi[d]`` with ``pi'``
  reweighted from the previous samples (self-normalised importance weights; ``P_t >= 0``, about
  ``Var(d) / beta`` for small steps).

Both are taken within each context value present in both batches (the leader's weights differ
per context; a different prompt mix in the two batches is not mistaken for a response) and
averaged with the new batch's context frequencies. The metric is the response ratio over the
run so far, the least-squares slope of ``O_t`` on ``P_t`` through the origin (updates in which
the leader hardly moved carry little weight, as they carry little information),

    tracking_T = sum_{t<=T} O_t P_t / sum_{t<=T} P_t^2            (<f>/tracking)

with its standard error ``se = sqrt(sum_t (O_t - tracking_T P_t)^2 / (T - 1) / sum_t P_t^2)``
(``<f>/tracking_se``). 1 means the follower moves as far as its best response would, 0 that it
does not respond to the incentive at all. It is an estimate from the sampled groups: the
leader's step is fitted to the previous batch, which makes a follower that hardly moves read
below 0 (on the tiny task, -0.3 to -1.3 where the exact ratio is 0.1 to 0.35), and a tracking
one read 0.1 to 0.2 low (0.3 to 0.6 where the exact ratio is 0.5 to 0.7; ``docs/trainer.md``).

**Warning.** Once, per follower and run: a :class:`FollowerTrackingWarning` when, after at least
:data:`MIN_UPDATES` compared updates, ``tracking + 2 se < TRACKING_THRESHOLD`` (0.5): with 97.5%
confidence the follower responds less than half as much as HPGD assumes, so the hypergradient's
indirect term (the follower's reaction, ``docs/theory.md §2``) overstates the reaction more than
twofold and the leader's steps are unreliable. The confidence bound keeps sampling noise on
small batches from raising it. Not defined (no metric) while the leader has not moved, e.g.
``leader.estimator: fixed``.

On an enumerable task the orchestrated trainer also logs the exact gap,
``<f>/kl_to_best_response`` (:func:`~align_cbrl.trainer.exact_reference.exact_tracking`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from align_cbrl.distributed import LeaderSync
from align_cbrl.trainer.estimation import GroupedSamples
from align_cbrl.utils.io import atomic_write_json, load_safetensors, read_json, save_safetensors

__all__ = [
    "MIN_UPDATES",
    "TRACKING_THRESHOLD",
    "FollowerTracking",
    "FollowerTrackingWarning",
    "response_ratio_terms",
]

TRACKING_THRESHOLD = 0.5
"""Warn when the follower responds less than this fraction of its best response (see above)."""
MIN_UPDATES = 4
"""Compared leader updates before a warning can be given (the standard error needs a few)."""


class FollowerTrackingWarning(UserWarning):
    """The follower does not keep up with the leader's incentive changes (module docstring)."""


def _strata(contexts: Sequence[Any] | None, n: int) -> dict[Any, list[int]]:
    if contexts is None:
        return {None: list(range(n))}
    out: dict[Any, list[int]] = {}
    for i, c in enumerate(contexts):
        out.setdefault(c, []).append(i)
    return out


def response_ratio_terms(
    d_old: Tensor,
    d_new: Tensor,
    beta: float,
    contexts_old: Sequence[Any] | None = None,
    contexts_new: Sequence[Any] | None = None,
) -> tuple[float, float, int]:
    """``(O_t, P_t, n)`` of one update (module docstring) from the incentive change ``d`` on
    the previous batch (``d_old``) and the new one (``d_new``); ``n`` is the number of new
    samples in the contexts both batches share (0: nothing to compare)."""
    old, new = _strata(contexts_old, len(d_old)), _strata(contexts_new, len(d_new))
    shared = [c for c in new if c in old]
    n = sum(len(new[c]) for c in shared)
    observed = predicted = 0.0
    for c in shared:
        a, b = d_old[old[c]].double(), d_new[new[c]].double()
        w = torch.softmax(a / beta, 0)  # exp(d / beta), normalised: the best response's weights
        share = len(new[c]) / n
        observed += share * float(b.mean() - a.mean())
        predicted += share * float((w * a).sum() - a.mean())
    return observed, predicted, n


class FollowerTracking:
    """The ``<f>/tracking`` diagnostic (module docstring), fed by both modes' leader updates with
    the batches of every update before the leader steps.

    Args:
        threshold: warn below this response ratio (:data:`TRACKING_THRESHOLD`).
        min_updates: compared updates before a warning (:data:`MIN_UPDATES`).
        z: the warning needs ``tracking + z * se < threshold``.
    """

    def __init__(
        self, threshold: float = TRACKING_THRESHOLD, min_updates: int = MIN_UPDATES, z: float = 2.0
    ) -> None:
        self.threshold, self.min_updates, self.z = float(threshold), int(min_updates), float(z)
        self.terms: dict[str, list[tuple[float, float]]] = {}  # (O_t, P_t) per follower
        self.warned: set[str] = set()
        self._prev_leader: dict[str, Tensor] | None = None
        self._prev: dict[str, tuple[Tensor, list[Any] | None]] = {}

    def observe(
        self,
        leader: torch.nn.Module,
        batches: Sequence[GroupedSamples],
        context_column: str | None,
        sync: LeaderSync | None = None,
    ) -> dict[str, float]:
        """Compare ``batches`` (sampled under ``leader``'s current parameters) with the previous
        update's; remember them for the next. Returns ``<f>/tracking`` and ``<f>/tracking_se``
        of every follower whose ratio is defined."""
        sync = sync or LeaderSync()
        out: dict[str, float] = {}
        with torch.no_grad():
            for b in batches:
                contexts = b.contexts(context_column)
                prev = self._prev.get(b.follower)
                if prev is not None and self._prev_leader is not None:
                    d_old = self._change(leader, *prev) * b.reward_weight
                    d_new = self._change(leader, b.scores, contexts) * b.reward_weight
                    o, p, n = response_ratio_terms(d_old, d_new, b.beta, prev[1], contexts)
                    # only the main rank's batches count: its previous batch is the one a
                    # checkpoint holds, so a resumed multi-process run measures the same terms
                    if sync.rank != 0:
                        o, p, n = 0.0, 0.0, 0
                    # every rank joins (the same number of updates everywhere); weighted by n
                    s = torch.tensor([o * n, p * n, float(n)], dtype=torch.float64)
                    s = sync.all_reduce_mean(s)
                    if s[2] > 0:
                        self._add(b.follower, float(s[0] / s[2]), float(s[1] / s[2]))
                    out.update(self._metrics(b.follower, sync))
                self._prev[b.follower] = (b.scores.detach().clone(), contexts)
            self._prev_leader = {k: v.detach().clone() for k, v in leader.state_dict().items()}
        return out

    def _change(
        self, leader: torch.nn.Module, scores: Tensor, contexts: list[Any] | None
    ) -> Tensor:
        """``i_{x_t} - i_{x_{t-1}}`` on one batch (the leader's current minus previous state)."""
        assert self._prev_leader is not None
        before = functional_call(leader, self._prev_leader, (scores, contexts))
        return (leader(scores, contexts) - before).reshape(-1)

    def _add(self, name: str, o: float, p: float) -> None:
        self.terms.setdefault(name, []).append((o, p))

    def ratio(self, name: str) -> tuple[float, float, int]:
        """``(tracking, se, T)`` of follower ``name`` (NaN while undefined)."""
        terms = self.terms.get(name, [])
        T, pp = len(terms), sum(p * p for _, p in terms)
        if not pp > 0:
            return math.nan, math.nan, T
        rho = sum(o * p for o, p in terms) / pp
        if T < 2:
            return rho, math.nan, T
        residual = sum((o - rho * p) ** 2 for o, p in terms)
        return rho, math.sqrt(residual / (T - 1) / pp), T

    def _metrics(self, name: str, sync: LeaderSync) -> dict[str, float]:
        rho, se, T = self.ratio(name)
        if math.isnan(rho):
            return {}
        bound = rho + self.z * se
        if self.min_updates <= T and bound < self.threshold and name not in self.warned:
            self.warned.add(name)
            if sync.is_main_process:
                warnings.warn(
                    f"follower {name!r} is not tracking the leader: over the last {T} leader "
                    f"updates it moved {rho:.2f} (+- {se:.2f}) of the way its best response would "
                    f"({name}/tracking, warning below {self.threshold}). HPGD assumes a "
                    "near best-responding follower, so the leader's steps are unreliable: train "
                    "the follower more steps per leader update (follower_steps / "
                    "leader_update_every), raise its learning_rate, or lower the leader's lr",
                    FollowerTrackingWarning,
                    stacklevel=2,
                )
        return {f"{name}/tracking": rho} | ({} if math.isnan(se) else {f"{name}/tracking_se": se})

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors (previous leader state and scores, for safetensors) and a JSON document."""
        tensors = {f"leader.{k}": v for k, v in (self._prev_leader or {}).items()}
        names = sorted(self._prev)
        tensors.update({f"scores.{i}": self._prev[n][0] for i, n in enumerate(names)})
        doc = {
            "followers": names,
            "contexts": [self._prev[n][1] for n in names],
            "has_leader": self._prev_leader is not None,
            "terms": {n: [list(t) for t in v] for n, v in self.terms.items()},
            "warned": sorted(self.warned),
        }
        return tensors, doc

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the state (:meth:`state_dict`) as ``tracking.safetensors`` + ``tracking.json``
        into ``directory`` (part of a checkpoint), atomically per file."""
        tensors, doc = self.state_dict()
        save_safetensors(Path(directory) / "tracking.safetensors", tensors)
        atomic_write_json(Path(directory) / "tracking.json", doc)

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restore what :meth:`save` wrote; a checkpoint written before this diagnostic existed
        (no ``tracking.json``) starts it afresh."""
        directory = Path(directory)
        if not (directory / "tracking.json").is_file():
            self.__init__(self.threshold, self.min_updates, self.z)  # type: ignore[misc]
            return
        tensors = load_safetensors(directory / "tracking.safetensors")
        self.load_state_dict(tensors, read_json(directory / "tracking.json"))

    def load_state_dict(self, tensors: dict[str, Tensor], doc: dict[str, Any]) -> None:
        self._prev_leader = (
            {k[len("leader.") :]: v for k, v in tensors.items() if k.startswith("leader.")}
            if doc.get("has_leader")
            else None
        )
        self._prev = {
            n: (tensors[f"scores.{i}"], None if c is None else list(c))
            for i, (n, c) in enumerate(zip(doc["followers"], doc["contexts"], strict=True))
        }
        self.terms = {n: [(float(o), float(p)) for o, p in v] for n, v in doc["terms"].items()}
        self.warned = set(doc.get("warned", []))
