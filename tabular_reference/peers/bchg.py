"""BC-HG, the Boltzmann-covariance hypergradient (Kudo, Tanabe, Wachi, Akimoto, "Sample-Efficient
Hypergradient Estimation for Decentralized Bi-Level Reinforcement Learning", ICAPS 2026,
arXiv 2603.14867), the worked example of the estimator interface (``docs/validate.md``).

What the published code computes (read from ``configurable_mdp/train_four_rooms_bchg.py`` of
github.com/akimotolab/BC-HG and its configurations; re-implemented here, nothing copied):

* **response term** ``(1/lambda) sum_t gamma^tau_t Qd(s_t, a_t) Abar(s_t, a_t) / max(n_done, 1)``:
  ``Qd(s, a)`` is the every-visit average, over the batch's visits of ``(s, a)``, of the discounted
  return of the follower's reward gradient ``d r_x`` (an estimate of ``dQ*``), ``n_done`` the
  number of finished episodes. This is the covariance form ``(1/lambda) E[dQ* Abar]`` of
  ``docs/theory.md`` §2 (no follower-side centring, so single visits count);
* **leader advantage** from a tabular leader ``Q(s, a)``, initialised ``N(0, 1)``, kept across
  outer iterations and updated, before each estimate, by SARSA(0) on every transition of the
  current batch in a random order (step ``alpha``, target ``rbar_t + gamma Q(s_{t+1}, a_{t+1})``,
  no bootstrap at an episode's end); ``V(s) = sum_a pi(a|s) Q(s, a)`` with the follower's
  policy, ``Abar = Q - V``;
* **direct term**: the mean over episode starts of the every-visit average, at the start's
  state, of the discounted ``d rbar_x`` return (``(P2)`` of :mod:`align_cbrl.estimators.published`,
  :func:`~align_cbrl.estimators.published.start_visit_weights`);
* their Four-Rooms setting: one goal (1,9), incentive cost 5, the published dynamics (samples
  from 0.67 / 0.11, planning in 0.56), lambda in {0.001, 0.003, 0.005}, 100 / 200 / 400 / 1,000
  steps per outer iteration in one environment, 10,000 outer iterations, 10 seeds; grids
  ``alpha`` in {0.1, 0.3, 0.5, 0.7, 0.9, 1.0} and learning rate in {0.5, 0.1, 0.05, 0.01}.

Our choices, where the published code leaves room: one ``Q`` table per (run, context) (their
setting has one context); ``alpha = 0.5`` by default (:func:`with_alpha` for others; which grid
value their runs selected is not published); where ``x`` also moves the dynamics (the tax
design's income tax) the core's transition term (``docs/theory.md`` §4, the planner's own
``d log P``) is added -- their code shapes rewards only and has none.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from numba import njit

from align_cbrl.estimators.episodes import Episodes, scatter_sum
from align_cbrl.estimators.published import start_visit_weights
from align_cbrl.estimators.trajectory import HPGDWeights, direct_weights
from tabular_reference.common.estimator_api import ENVS, Batch, Estimator, Model, register
from tabular_reference.common.kernel_tuples import kernel_tuple

__all__ = ["ALPHA", "bchg", "with_alpha"]

ALPHA = 0.5


@kernel_tuple
class Transitions(NamedTuple):
    """``[R, T]`` sampled steps for :func:`_sarsa`: context, state, action, the leader's reward
    and whether step ``t + 1`` continues the episode."""

    contexts: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    continues: np.ndarray


@njit(cache=True, nogil=True)
def _sarsa(q, steps, order, alpha, gamma):
    """SARSA(0) in place on ``q[r, c, s, a]``: each run's :class:`Transitions` ``steps`` in the
    order ``order[r]``; bootstrap from step ``t + 1`` where it continues the episode."""
    ctx, s, a, rew, cont = steps
    R, T = s.shape
    for r in range(R):
        for i in range(T):
            t = order[r, i]
            c, st, at = ctx[r, t], s[r, t], a[r, t]
            nxt = gamma * q[r, c, s[r, t + 1], a[r, t + 1]] if cont[r, t] else 0.0
            q[r, c, st, at] += alpha * (rew[r, t] + nxt - q[r, c, st, at])


def leader_advantage(batch: Batch, model: Model, alpha: float = ALPHA) -> np.ndarray:
    """``Abar(s_t, a_t)`` ``[R, T]`` from the SARSA leader table of ``model.memory`` (created
    ``N(0, 1)`` on first use, updated by this batch first; module docstring)."""
    table = model.memory.get("bchg_q")
    if table is None:
        shape = (model.n_runs, model.n_contexts, model.n_states, model.n_actions)
        table = model.memory["bchg_q"] = model.rng.standard_normal(shape)
    R, T = batch.states.shape
    q = table[batch.runs]  # [R, C, S, A], a copy, written back below
    cont = np.zeros((R, T), dtype=np.bool_)
    cont[:, :-1] = ~batch.episode_start[:, 1:]
    order = np.argsort(model.rng.random((R, T)), axis=1)  # a random permutation per run
    ctx, s, a = batch.contexts, batch.states, batch.actions
    steps = Transitions(ctx, s, a, batch.leader_rewards, cont)
    _sarsa(q, steps, order, float(alpha), float(model.gamma))
    table[batch.runs] = q
    v = np.einsum("rsa,rcsa->rcs", model.policy, q)  # V(s) = sum_a pi(a|s) Q(s, a)
    rows = np.arange(R)[:, None]
    return q[rows, ctx, s, a] - v[rows, ctx, s]


def bchg(batch: Batch, model: Model, alpha: float = ALPHA) -> HPGDWeights:
    """BC-HG's estimate as per-step weights (module docstring)."""
    st, es = batch.tensor("states"), batch.tensor("episode_start")
    abar = torch.from_numpy(leader_advantage(batch, model, alpha))
    S, A = model.n_states, model.n_actions
    ep = Episodes.of(es, model.gamma, abar.dtype)
    # sum_t gamma^tau_t Qd(s_t,a_t) Abar_t = sum_t c_t Dhat_t with c_t = Abar_t Gamma_sa / n_sa
    # (Gamma_sa: the sum of gamma^tau over the visits of (s,a)); then a forward scan puts it on
    # the per-step gradients d r_x (docs/theory.md §4, (W)).
    sa = st * A + batch.tensor("actions")
    n_sa = scatter_sum(torch.ones_like(abar), sa, S * A)
    gamma_sa = scatter_sum(ep.gpow, sa, S * A)
    c = torch.gather(gamma_sa / n_sa.clamp_min(1.0), 1, sa) * abar
    done = torch.zeros_like(es)
    done[:, :-1] = es[:, 1:]
    done[:, -1] = ep.tau[:, -1] == model.max_episode_steps - 1
    n_done = done.sum(dim=1).clamp_min(1).to(abar.dtype)
    beta = torch.from_numpy(np.asarray(model.beta, dtype=np.float64))
    follower = ep.scan(c, reverse=False) / (beta[:, None] * n_done[:, None])
    leader = start_visit_weights(st, es, S, model.gamma, ep.tau, ep.max_len, abar.dtype)
    transition = torch.zeros_like(leader)
    if batch.transition_grad is not None:  # x moves the dynamics: the core's d log P term
        g_hat = ep.scan(batch.tensor("leader_rewards"), reverse=True)
        transition = direct_weights(ep, g_hat)[1]
    return HPGDWeights(follower, leader, transition, ep.n_episodes)


def with_alpha(alpha: float) -> Estimator:
    """BC-HG with SARSA step ``alpha`` (an unregistered :class:`Estimator`)."""
    return Estimator(f"bc-hg[alpha={alpha}]", partial(bchg, alpha=alpha))


for _env in ENVS:
    register(_env, Estimator("bc-hg", bchg, doc="BC-HG (ICAPS 2026), SARSA leader critic"))
