"""Household trajectories as the estimator interface's ``Batch`` and ``Model``
(:mod:`tabular_reference.common.estimator_api`, ``docs/validate.md``, ``docs/theory.md`` §4, §6).

States are the joint index ``type * n_bins + bin`` (``flat_batch``'s ``joint_state``), so the
two household types never share a state. Every per-step gradient with respect to
``theta[R, 4]`` is a lookup in a small ``theta``-dependent table (the same tables the harness's
contraction :func:`hypergradient.surrogate_gradient` differentiates), whose Jacobians are taken
by forward-mode autodiff (four directions) when an estimator first asks for them:

* follower, ``d rtilde_t``: the Cobb-Douglas term per (type, action) (VAT), plus
  ``gamma (K_tau V*)[type, bin, flow]`` (``follower_transition="expected"``) or the score form
  ``gamma (V*(s') - E[V*(s')|s, f]) d log P_tau(s'|s, f)`` (``"score"``) (income tax);
* leader, ``d rbar_t``: the welfare per action (the asset term does not depend on ``theta``);
* transition, ``d log P_tau(s_{t+1}|s_t, f_t) = d log D[f, s' - s] - d log Z[s, f]``, zero where
  the mean is clipped (:mod:`kernel`).

Handles (``Model.handles``): ``economy``, ``theta``, ``follower`` (the households'
:class:`solver.FollowerSolution`: their policy, their own soft values ``V*`` -- the follower's
critic, used by the pseudo-reward as in the paper -- and the transition law ``K_tau`` the planner
sets), ``follower_transition``; ``leader_values`` (the exact ``Vbar[R, C, S]``) is an *oracle*
(None unless the caller passes it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor

from tabular_reference.common.estimator_api import Batch, Model, StepGradients, Term
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.hypergradient import leader_rewards
from tabular_reference.tax_design.kernel import expected_next, kernel_parts
from tabular_reference.tax_design.rewards import (
    asset_utility,
    consumption_utility,
    household_action_reward,
    rates,
    welfare_action,
)
from tabular_reference.tax_design.solver import FollowerSolution

__all__ = ["make_batch", "make_model", "policy_table"]

N_PARAMS = 4


def _tables(econ: Economy, theta: Tensor, V: Tensor, score: bool) -> dict[str, Tensor]:
    """The ``theta``-dependent lookup tables, ``[R, K]`` each (module docstring)."""
    R, C, S, F, A = theta.shape[0], econ.n_contexts, econ.n_states, econ.n_flows, econ.n_actions
    x = rates(theta)
    tau, vat = x[:, 0], x[:, 1:]
    k = kernel_parts(econ, tau)
    out = {
        "cd": consumption_utility(econ, vat).reshape(R, C * A),
        "welfare": welfare_action(econ, tau, vat),
        "log_d": torch.log(k.D).reshape(R, -1),
        "log_z": torch.log(k.Z).reshape(R, S * F),
    }
    if not score:
        out["kv"] = econ.gamma * expected_next(k, V).reshape(R, C * S * F)
    return out


def _jacobians(econ: Economy, theta: Tensor, V: Tensor, score: bool) -> dict[str, np.ndarray]:
    """``J[name][r, k, j] = d table[r, k] / d theta[r, j]`` by forward-mode autodiff (runs are
    independent, so one tangent per parameter serves all runs). Entries of tables whose value is
    not finite (``log 0`` far outside the noise band) are never sampled and are set to 0."""
    cols: dict[str, list[Tensor]] = {}
    th0 = theta.detach().to(torch.float64)
    for j in range(N_PARAMS):
        tangent = torch.zeros_like(th0)
        tangent[:, j] = 1.0
        with fwad.dual_level():
            tabs = _tables(econ, fwad.make_dual(th0, tangent), V.detach(), score)
            for name, t in tabs.items():
                d = fwad.unpack_dual(t).tangent
                cols.setdefault(name, []).append(torch.zeros_like(t) if d is None else d)
    return {
        n: np.nan_to_num(torch.stack(c, -1).numpy(), nan=0.0, posinf=0.0, neginf=0.0)
        for n, c in cols.items()
    }


def _indices(econ: Economy, sol: FollowerSolution, b: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Per-step rows of each table (-1: no term)."""
    s, f, c, a, s2 = (b[k].numpy() for k in ("state", "flow", "context", "action", "next_state"))
    S, F, A = econ.n_states, econ.n_flows, econ.n_actions
    L = sol.parts.D.shape[-1]
    rows = np.arange(s.shape[0])[:, None]
    clipped = (sol.parts.clip_hi | sol.parts.clip_lo).numpy()[rows, s, f]
    off = s2 - s - int(sol.parts.d_lo)
    band = (off >= 0) & (off < L) & ~clipped
    return {
        "cd": c * A + a,
        "welfare": a,
        "kv": (c * S + s) * F + f,
        "log_d": np.where(band, f * L + off, -1),
        "log_z": np.where(clipped, -1, s * F + f),
    }


def make_batch(
    econ: Economy,
    theta: Tensor,
    sol: FollowerSolution,
    b: dict[str, Tensor],
    follower_transition: str,
) -> Batch:
    """``flat_batch(econ, traj)`` (``b``) of all runs as a ``Batch`` (module docstring)."""
    R, T = b["state"].shape
    score = follower_transition == "score"
    with torch.no_grad():
        x = rates(theta.detach())
        r_act = household_action_reward(econ, x[:, 1:])  # [R, C, A]
        r_follow = (
            asset_utility(econ)[b["state"]]
            + r_act[torch.arange(R)[:, None], b["context"], b["action"]]
        )
        rbar = leader_rewards(econ, theta.detach(), b)
    idx = _indices(econ, sol, b)
    coef_v = None
    if score:
        c, s, f, s2 = (b[k] for k in ("context", "state", "flow", "next_state"))
        rows = torch.arange(R)[:, None]
        ev = expected_next(sol.parts, sol.V)[rows, c, s, f]
        coef_v = (econ.gamma * (sol.V[rows, c, s2] - ev)).numpy()
    cache: dict[str, dict[str, np.ndarray]] = {}

    def jac() -> dict[str, np.ndarray]:
        if not cache:
            cache["J"] = _jacobians(econ, theta, sol.V, score)
        return cache["J"]

    def transition() -> list[Term]:
        J = jac()
        return [(J["log_d"], idx["log_d"], None), (J["log_z"], idx["log_z"], -np.ones((R, T)))]

    def follower() -> list[Term]:
        J = jac()
        terms: list[Term] = [(J["cd"], idx["cd"], None)]
        if coef_v is None:
            return [*terms, (J["kv"], idx["kv"], None)]
        return [*terms, (J["log_d"], idx["log_d"], coef_v), (J["log_z"], idx["log_z"], -coef_v)]

    shape = (R, T, N_PARAMS)
    S = econ.n_states
    return Batch(
        states=b["joint_state"].numpy(),
        actions=b["action"].numpy(),
        episode_start=b["episode_start"].numpy(),
        follower_rewards=r_follow.numpy(),
        leader_rewards=rbar.numpy(),
        contexts=b["context"].numpy(),
        next_states=(b["context"] * S + b["next_state"]).numpy(),
        follower_grad=StepGradients(follower, shape),
        leader_grad=StepGradients(lambda: [(jac()["welfare"], idx["welfare"], None)], shape),
        transition_grad=StepGradients(transition, shape),
        runs=np.arange(R),
    )


def policy_table(econ: Economy, sol: FollowerSolution) -> np.ndarray:
    """``pi(a | type, bin)`` as ``[R, C * S, A]`` (flow-group probability times the in-group
    probability)."""
    pi_f, log_pa = sol.pi_f.detach(), sol.log_pa.detach()
    R, C, S, _ = pi_f.shape
    pa = pi_f[..., econ.flow_a] * torch.exp(log_pa)[:, :, None, :]
    return pa.reshape(R, C * S, econ.n_actions).numpy()


def make_model(
    econ: Economy,
    theta: Tensor,
    beta: Tensor,
    sol: FollowerSolution,
    memory: dict[str, Any],
    rng: np.random.Generator,
    follower_transition: str,
    leader_values: Tensor | None = None,
) -> Model:
    """The constants and handles of one call on all runs (module docstring)."""
    R = theta.shape[0]
    return Model(
        env="tax-design",
        gamma=float(econ.gamma),
        beta=beta.detach().numpy().astype(np.float64),
        n_states=econ.n_contexts * econ.n_states,
        n_actions=econ.n_actions,
        n_contexts=econ.n_contexts,
        n_params=N_PARAMS,
        max_episode_steps=econ.config.episode_length,
        policy_source=lambda: policy_table(econ, sol),
        n_runs=R,
        rng=rng,
        memory=memory,
        handles={
            "economy": econ,
            "theta": theta,
            "follower": sol,
            "follower_transition": follower_transition,
            "leader_values": leader_values,
        },
    )
