"""Tax-design estimators through the estimator interface (``docs/validate.md``): the harness
:func:`estimate` and the built-in HPGD forms.

Built-ins (registered for ``tax-design``): ``hpgd`` (form ``mc``, ``leader_q="table"``, leader
critic learned from past iterations: :class:`critic.MonteCarloCritic`, kept in
``model.memory``), ``hpgd-cov`` (form ``covariance``, same critic), ``hpgd-paper`` (form ``mc``,
the same-trajectory product), ``naive`` (direct terms only), and the oracle ``hpgd-exact-critic``
(``mc`` with the model's exact ``Vbar``). Other option combinations: :func:`builtin_hpgd`. Each
returns the core's per-step weights (:func:`hypergradient.step_weights`), which the harness
contracts with :func:`hypergradient.surrogate_gradient`, as before the interface.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from align_cbrl.estimators.trajectory import HPGDWeights
from tabular_reference.common.estimator_api import (
    Batch,
    Estimator,
    Model,
    check_result,
    register,
    resolve,
)
from tabular_reference.tax_design.batch import make_batch, make_model
from tabular_reference.tax_design.critic import MonteCarloCritic
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.hypergradient import (
    EstimationPoint,
    flat_batch,
    step_weights,
    surrogate_gradient,
)
from tabular_reference.tax_design.sampling import Trajectories
from tabular_reference.tax_design.solver import FollowerSolution

__all__ = ["builtin_hpgd", "estimate", "hpgd_step"]

ENV = "tax-design"


def hpgd_step(batch: Batch, model: Model, form: str, leader_q: str, critic: str) -> HPGDWeights:
    """The core's weights for the options ``form`` / ``leader_q`` with the leader value table
    ``critic`` (``"learned"``: a :class:`MonteCarloCritic` in ``model.memory``, bootstrapped from
    the first batch and updated after each estimate; ``"exact"``: the oracle handle
    ``leader_values``)."""
    h = model.handles
    econ, theta, sol = h["economy"], h["theta"], h["follower"]
    joint, actions = batch.tensor("states"), batch.tensor("actions")
    starts, rbar = batch.tensor("episode_start"), batch.tensor("leader_rewards")
    values: Tensor | None = None
    learned = None
    if form != "naive" and leader_q != "crossfit":
        if critic == "exact":
            values = h["leader_values"]
            if values is None:
                raise ValueError("critic 'exact' needs the exact leader values (an oracle)")
        else:
            learned = model.memory.get("critic")
            if learned is None:  # first iteration: bootstrap from this batch
                learned = MonteCarloCritic(econ, theta.shape[0])
                learned.update(joint, rbar, starts)
                model.memory["critic"] = learned
            values = learned.values()
    w = step_weights(
        EstimationPoint(econ, theta, torch.from_numpy(model.beta), sol),
        joint,
        actions,
        starts,
        rbar,
        form=form,
        leader_q=leader_q,
        critic=values,
    )
    if learned is not None:
        learned.update(joint, rbar, starts)
    return w


def builtin_hpgd(form: str, leader_q: str, critic: str, name: str | None = None) -> Estimator:
    """The built-in of the options (a registered one when they match)."""
    label = name or f"hpgd[{form}/{leader_q}/{critic}]"
    fn = partial(hpgd_step, form=form, leader_q=leader_q, critic=critic)
    return Estimator(label, fn, oracle=critic == "exact" and form != "naive")


for _name, _opts, _doc in (
    ("hpgd", ("mc", "table", "learned"), "MC form, learned leader critic (docs/tax_design.md)"),
    ("hpgd-cov", ("covariance", "table", "learned"), "covariance form, learned leader critic"),
    ("hpgd-paper", ("mc", "trajectory", "learned"), "same-trajectory product, biased"),
    ("naive", ("naive", "table", "learned"), "direct terms only: the response ignored"),
    ("hpgd-exact-critic", ("mc", "table", "exact"), "MC form, exact Vbar (oracle)"),
):
    _est = builtin_hpgd(*_opts, name=_name)
    register(ENV, Estimator(_est.name, _est.fn, oracle=_est.oracle, doc=_doc))


def estimate(
    estimator: str | Estimator | Any,
    econ: Economy,
    theta: Tensor,
    beta: Tensor,
    sol: FollowerSolution,
    traj: Trajectories,
    *,
    memory: dict | None = None,
    rng: np.random.Generator | None = None,
    follower_transition: str = "expected",
    leader_values: Tensor | None = None,
) -> Tensor:
    """One estimate ``dF/dtheta[R, 4]`` per run from the trajectories ``traj`` of the
    households ``sol`` (all runs in one call). ``memory``: the job's estimator memory (kept by
    the caller across iterations); ``leader_values``: the exact ``Vbar`` (oracle handle)."""
    est = resolve(estimator, ENV)
    b = flat_batch(econ, traj)
    batch = make_batch(econ, theta, sol, b, follower_transition)
    rng = np.random.default_rng(0) if rng is None else rng
    memory = {} if memory is None else memory
    model = make_model(
        econ, theta, beta, sol, memory, rng, follower_transition, leader_values=leader_values
    )
    res = check_result(est.fn(batch, model), theta.shape[0], model.n_params, est.name)
    if isinstance(res, HPGDWeights):
        return surrogate_gradient(econ, theta, sol, b, res, follower_transition)
    return torch.from_numpy(res)
