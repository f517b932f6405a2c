"""User estimators for the estimator-interface tests (resolved as ``estimator_examples:<name>``,
``tests/`` being on the import path): what a user writes against ``docs/validate.md``."""

from __future__ import annotations

import numpy as np

from align_cbrl.estimators.trajectory import hpgd_weights


def _weights(batch, model, **kw):
    return hpgd_weights(
        batch.tensor("states"), batch.tensor("leader_rewards"), batch.tensor("episode_start"),
        model.gamma, float(model.beta[0]), n_states=model.n_states, **kw,
    )  # fmt: skip


def hpgd_dense(batch, model):
    """HPGD's cross-fitted MC form, contracted by the user with the batch's step gradients:
    returns the hypergradient itself, ``[R, P]`` (unbiased)."""
    w = _weights(batch, model, form="mc", actions=batch.tensor("actions"),
                 n_actions=model.n_actions, leader_q="crossfit")  # fmt: skip
    g = batch.follower_grad.contract(w.follower) + batch.leader_grad.contract(w.leader)
    if batch.transition_grad is not None:
        g = g + batch.transition_grad.contract(w.transition)
    return g


def same_trajectory_hpgd(batch, model):
    """Deliberately biased: the MC form with the leader's return from the same trajectory
    (``leader_q="trajectory"``), biased by ``Cov(Dhat_t, Ghat_t | s_t, a_t)``."""
    return _weights(batch, model, form="mc", leader_q="trajectory")


def wrong_shape(batch, model):
    return np.zeros(model.n_params)


def nan_estimate(batch, model):
    return np.full((batch.n_runs, model.n_params), np.nan)


def one_argument(batch):
    return batch


not_callable = 3
