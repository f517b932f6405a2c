"""User estimators for the estimator-interface tests (resolved as
``tests.estimator_examples:<name>``, the repository root being on the import path): what a user writes against ``docs/validate.md``."""

from __future__ import annotations

import numpy as np
import torch

from align_cbrl.estimators.episodes import time_in_episode
from align_cbrl.estimators.trajectory import hpgd_weights


def _weights(batch, model, **kw):
    return hpgd_weights(
        batch.tensor("states"),
        batch.tensor("leader_rewards"),
        batch.tensor("episode_start"),
        model.gamma,
        float(model.beta[0]),
        n_states=model.n_states,
        **kw,
    )


def hpgd_dense(batch, model):
    """HPGD's cross-fitted MC form, contracted by the user with the batch's step gradients:
    returns the hypergradient itself, ``[R, P]`` (unbiased)."""
    w = _weights(
        batch,
        model,
        form="mc",
        actions=batch.tensor("actions"),
        n_actions=model.n_actions,
        leader_q="crossfit",
    )
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


# --- the example of docs/validate.md, verbatim -------------------------------------------------
def cov_crossfit(batch, model):
    """Covariance form (1/beta) E[dQ* Abar] (docs/theory.md §2), leader values cross-fitted
    from the other half of the episodes: per-step weights, contracted by the harness."""
    return hpgd_weights(
        batch.tensor("states"),
        batch.tensor("leader_rewards"),
        batch.tensor("episode_start"),
        model.gamma,
        torch.from_numpy(model.beta),
        form="covariance",
        leader_q="crossfit",
        actions=batch.tensor("actions"),
        n_actions=model.n_actions,
        n_states=model.n_states,
    )


def direct_only(batch, model):
    """The naive estimate by hand, as the hypergradient itself [R, P]: the direct term
    sum_t gamma^tau_t d rbar_t / n_episodes (Four-Rooms: x moves no transition)."""
    tau = time_in_episode(batch.tensor("episode_start")).numpy()
    n_episodes = batch.episode_start.sum(axis=1, keepdims=True)
    return batch.leader_grad.contract(model.gamma**tau / n_episodes)
