"""The built-in Four-Rooms estimators, written against the estimator interface
(:mod:`tabular_reference.common.estimator_api`, ``docs/validate.md``) and registered under the
algorithm names of ``docs/theory.md`` §8:

* ``hpgd`` -- ``hpgd_weights(form="mc", leader_q="crossfit")``; fused path
  :data:`hpgd_kernels.FORM_CROSSFIT`;
* ``hpgd-published`` -- :func:`align_cbrl.estimators.published.published_hpgd_weights`; fused
  path :data:`hpgd_kernels.FORM_PUBLISHED`;
* ``naive`` -- the direct term only; fused path :data:`hpgd_kernels.FORM_NAIVE`;
* ``hpgd-cov`` -- ``form="covariance"``, ``leader_q="table"`` with the :class:`LeaderCritic`
  tables it keeps in ``model.memory`` (EMA rate ``config.baseline_ema``);
* ``hpgd-paper`` -- ``form="mc"``, ``leader_q="trajectory"`` (the same-trajectory product);
* ``hpgd-published-clip`` -- ``hpgd-published`` with the finished-episode count clipped at 1
  (BC-HG's port of it), for budgets where a batch may finish no episode.

Each returns per-step weights; the harness contracts them
(:func:`batch.weights_to_state_sums`, then the softmax chain rule). With a fused path the
harness samples and estimates in one numba pass instead (same estimate, its own random stream).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from align_cbrl.estimators.episodes import discounted_returns, per_state_sum, time_in_episode
from align_cbrl.estimators.published import published_hpgd_weights
from align_cbrl.estimators.trajectory import HPGDWeights, hpgd_weights
from tabular_reference.common.estimator_api import Batch, Estimator, Model, register
from tabular_reference.four_rooms import hpgd_kernels
from tabular_reference.four_rooms.env import FOUR_ROOMS

__all__ = ["BUILTIN", "LeaderCritic", "builtin_for", "form_weights"]

ENV = "four-rooms"


def form_weights(
    batch: Batch,
    model: Model,
    form: str,
    leader_q: str | None,
    tables: tuple[np.ndarray, np.ndarray] | None = None,
) -> HPGDWeights:
    """The core's estimators (torch) on a batch: ``form`` ``"mc"`` / ``"covariance"`` /
    ``"naive"`` of :func:`hpgd_weights` with the leader-value source ``leader_q``, or
    ``"published"``; ``tables = (q[R, S, 4], v[R, S])`` for ``leader_q="table"``."""
    if form == "published":
        return _published(batch, model, _finished(batch, model))
    st, ac = batch.tensor("states"), batch.tensor("actions")
    lr, es = batch.tensor("leader_rewards"), batch.tensor("episode_start")
    S, gamma, beta = model.n_states, model.gamma, float(model.beta[0])
    kw: dict
    if form == "naive":
        kw = {}
    elif leader_q == "trajectory":
        kw = {"leader_q": "trajectory"}
    else:
        kw = {"actions": ac, "n_actions": model.n_actions, "leader_q": leader_q}
        if leader_q == "table":
            if tables is None:
                raise ValueError("leader_q='table' needs tables=(q_table, v_table)")
            kw.update(q_table=torch.from_numpy(tables[0]), v_table=torch.from_numpy(tables[1]))
    return hpgd_weights(st, lr, es, gamma, beta, form=form, n_states=S, **kw)


def _finished(batch: Batch, model: Model) -> torch.Tensor:
    """``done[R, T]``: the last step of every finished episode (goal reached or time limit)."""
    cells = np.array([FOUR_ROOMS.goal_index(tuple(g)) for g in model.handles["goals"]])
    goal = torch.from_numpy(cells[batch.contexts[:, 0]])
    tau = time_in_episode(batch.tensor("episode_start"))
    return (batch.tensor("states") == goal[:, None]) | (tau == model.max_episode_steps - 1)


def _published(batch: Batch, model: Model, done: torch.Tensor) -> HPGDWeights:
    """:func:`published_hpgd_weights` of the batch, with ``done[R, T]`` marking the steps that
    end a counted episode (the estimate divides by their number)."""
    st, ac = batch.tensor("states"), batch.tensor("actions")
    lr, es = batch.tensor("leader_rewards"), batch.tensor("episode_start")
    S, A, gamma, beta = model.n_states, model.n_actions, model.gamma, float(model.beta[0])
    return published_hpgd_weights(st, ac, lr, es, gamma, beta, n_states=S, n_actions=A, done=done)


def hpgd_published_clip(batch: Batch, model: Model) -> HPGDWeights:
    """``hpgd-published`` with the count of finished episodes clipped at 1, as BC-HG's port of
    the published HPGD does (``train_four_rooms_hpgd.py`` of github.com/akimotolab/BC-HG): a
    batch without a finished episode (small budgets) divides by 1 instead of being refused."""
    done = _finished(batch, model)
    done[:, -1] |= ~done.any(dim=1)  # n_done = 1 where none finished (done only counts)
    return _published(batch, model, done)


class LeaderCritic:
    """Leader critic tables for the covariance form, per (run, context): EMA (rate ``ema``)
    of the mean observed leader return ``Ghat_t`` per (state, action) and per state over each
    iteration's visits (first visit: copied). Used from the next iteration on, so they are
    independent of the current sample; unvisited (s, a) entries fall back to ``v(s)`` (zero
    advantage)."""

    def __init__(self, n_runs: int, n_ctx: int, n_states: int, ema: float) -> None:
        self.q = np.zeros((n_runs, n_ctx, n_states, 4))
        self.q_seen = np.zeros((n_runs, n_ctx, n_states, 4), dtype=bool)
        self.v = np.zeros((n_runs, n_ctx, n_states))
        self.v_seen = np.zeros((n_runs, n_ctx, n_states), dtype=bool)
        self.ema = ema

    def tables(self, runs: np.ndarray, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = self.v[runs, ctx]
        q = np.where(self.q_seen[runs, ctx], self.q[runs, ctx], v[:, :, None])
        return np.ascontiguousarray(q), np.ascontiguousarray(v)

    def update(self, runs: np.ndarray, ctx: np.ndarray, batch: Batch, gamma: float) -> None:
        """Blend in the leader returns of the batch just sampled (rows ``runs``)."""
        R, S = batch.n_runs, self.v.shape[-1]
        G = discounted_returns(batch.tensor("leader_rewards"), batch.tensor("episode_start"), gamma)
        st = batch.tensor("states")
        sa = st * 4 + batch.tensor("actions")
        one = torch.ones_like(G)
        for tab, seen, idx, n in ((self.v, self.v_seen, st, S), (self.q, self.q_seen, sa, 4 * S)):
            tot = per_state_sum(G, idx, n).numpy()
            cnt = per_state_sum(one, idx, n).numpy()
            old = tab[runs, ctx].reshape(R, n)
            was = seen[runs, ctx].reshape(R, n)
            vis = cnt > 0
            mean = np.where(vis, tot / np.maximum(cnt, 1), 0.0)
            a = self.ema
            new = np.where(vis & was, (1 - a) * old + a * mean, np.where(vis, mean, old))
            tab[runs, ctx] = new.reshape(tab[runs, ctx].shape)
            seen[runs, ctx] = (was | vis).reshape(seen[runs, ctx].shape)


def hpgd_cov(batch: Batch, model: Model) -> HPGDWeights:
    """``form="covariance"`` with the critic tables of earlier iterations (``model.memory``)."""
    critic = model.memory.get("leader_critic")
    if critic is None:
        ema = model.handles["config"].baseline_ema
        critic = LeaderCritic(model.n_runs, model.n_contexts, model.n_states, ema)
        model.memory["leader_critic"] = critic
    ctx = batch.contexts[:, 0]
    w = form_weights(batch, model, "covariance", "table", critic.tables(batch.runs, ctx))
    critic.update(batch.runs, ctx, batch, model.gamma)
    return w


BUILTIN: dict[tuple[str, str | None], Estimator] = {
    ("mc", "crossfit"): Estimator(
        "hpgd",
        partial(form_weights, form="mc", leader_q="crossfit"),
        fused=hpgd_kernels.FORM_CROSSFIT,
        doc="Monte-Carlo form, cross-fitted leader values (docs/theory.md §4)",
    ),
    ("published", None): Estimator(
        "hpgd-published",
        partial(form_weights, form="published", leader_q=None),
        fused=hpgd_kernels.FORM_PUBLISHED,
        doc="the published code's every-visit estimator (§7)",
    ),
    ("naive", None): Estimator(
        "naive",
        partial(form_weights, form="naive", leader_q=None),
        fused=hpgd_kernels.FORM_NAIVE,
        doc="direct term only: the follower's response ignored (§8)",
    ),
    ("covariance", "table"): Estimator(
        "hpgd-cov", hpgd_cov, doc="covariance form, EMA leader critic from past iterations (§4)"
    ),
    ("mc", "trajectory"): Estimator(
        "hpgd-paper",
        partial(form_weights, form="mc", leader_q="trajectory"),
        doc="same-trajectory product, biased (docs/four_rooms.md)",
    ),
}
for _est in BUILTIN.values():
    register(ENV, _est)
register(ENV, Estimator("hpgd-published-clip", hpgd_published_clip, doc="n_done clipped at 1"))


def builtin_for(
    form: str, leader_q: str | None, tables: tuple[np.ndarray, np.ndarray] | None = None
) -> Estimator:
    """The built-in of ``(form, leader_q)`` (``leader_q`` ignored by ``naive`` and
    ``published``); explicit critic ``tables`` (``leader_q="table"``) or another combination of
    the core's options give an unregistered estimator on the same code path."""
    key = (form, None if form in ("naive", "published") else leader_q)
    if key in BUILTIN and tables is None:
        return BUILTIN[key]
    fn = partial(form_weights, form=form, leader_q=key[1], tables=tables)
    return Estimator(f"{form}/{key[1]}", fn, fused=BUILTIN[key].fused if key in BUILTIN else None)
