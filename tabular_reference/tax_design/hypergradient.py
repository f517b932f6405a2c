"""The tax-design hypergradient, estimated from sampled household trajectories
(:func:`hypergradient`, ``docs/theory.md`` §2, §4, §6) and exact (:func:`exact_hypergradient`).

The planner's parameters enter in three places; the core estimator
(:func:`align_cbrl.estimators.trajectory.hpgd_weights`) returns per-step weights such that

    g = sum_t follower_t d rtilde_t + leader_t d rbar_t + transition_t d log P_tau(s_{t+1}|s_t,a_t)

* VAT ``v`` moves the household reward (R): ``rtilde_t`` contains the Cobb-Douglas term;
* the income tax ``tau`` moves the transition (A): ``rtilde_t`` contains the follower's
  pseudo-reward ``gamma log P_tau(s_{t+1}|s_t,a_t) stopgrad(V*(s_{t+1}))`` (``dQ*`` is the value
  of ``pi*`` for ``dr + gamma sum_s' dP V*``), and the leader's own ``d log P`` term appears
  with weight ``transition_t``;
* both enter the welfare (W) directly (``leader_t``).

``V*`` is the household's own soft value -- its critic, which a learning follower reports; here
the households are solved exactly, so it is the exact ``V*`` at the sampled next states. All
other quantities come from the sampled steps. The estimate is one autograd backward of the
stop-gradient surrogate ``sum_t w_t * (per-step term)_theta``.

Per-state centring (form ``"mc"``) and baselines (``"covariance"``) run over the joint index
``(household type, asset bin)`` so that different household types are never mixed.

Leader values (``leader_q``, passed to the core). With ``"trajectory"`` the leader's return
``Ghat_t`` multiplies the follower's ``Dhat_t`` from the *same* trajectory; both sum over the
same future steps, so ``E[Ghat_t Dhat_t | s_t, a_t] = Qbar dQ* + Cov(Ghat_t, Dhat_t | s_t, a_t)``
and here the covariance is large (consumption drives both the welfare and the VAT gradient):
measured at the initial rates the mean estimate is ~60-120x too long. ``"table"`` (default)
uses a leader critic ``Qbar(s, a) = rbar(s, a) + gamma (K_tau Vbar)[s, f(a)]`` built from a value
table ``Vbar(type, bin)`` (:func:`leader_q_table`; learned from past trajectories by
:class:`critic.MonteCarloCritic`, or the exact one), which depends on ``(s_t, a_t)`` only:
``"covariance"`` with the exact table is unbiased; ``"mc"`` additionally centres ``Dhat`` per
(type, bin) with visit averages, which removes most of the tax component's variance at the price
of an ``O(1 / visits)`` shrinkage. ``"crossfit"`` estimates ``Qbar(s, a)`` from the other half of
the episodes; with 202 (type, bin) cells x 1,250 actions most pairs are unvisited there.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numba import njit
from torch import Tensor

from align_cbrl.estimators.trajectory import HPGDWeights, hpgd_weights
from tabular_reference.tax_design.aggregate import (
    CellSums,
    Steps,
    StepWeights,
    TransitionTerm,
    aggregate,
)
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.kernel import expected_next, kernel_parts, mix_kernel
from tabular_reference.tax_design.rewards import asset_welfare, rates, welfare_action
from tabular_reference.tax_design.sampling import Trajectories
from tabular_reference.tax_design.solver import (
    FollowerSolution,
    check_temperature,
    household_problem,
    leader_values,
    newton_step,
    soft_policy_iteration,
    soft_q,
)

__all__ = [
    "FOLLOWER_TRANSITION",
    "FORMS",
    "LEADER_Q",
    "EstimationPoint",
    "exact_hypergradient",
    "flat_batch",
    "hypergradient",
    "leader_q_table",
    "leader_rewards",
    "step_weights",
    "surrogate_gradient",
]

FORMS = ("mc", "covariance", "naive")
LEADER_Q = ("table", "crossfit", "trajectory")
FOLLOWER_TRANSITION = ("score", "expected")


class EstimationPoint(NamedTuple):
    """Where the sampled hypergradient is estimated, as :func:`hypergradient` and
    :func:`step_weights` both take it: the economy, the planner's parameters ``theta[R, 4]``,
    the households' temperatures ``beta[R]`` and their solution ``follower`` at ``theta``
    (exact, or a learning follower's, whose ``V`` is its critic)."""

    econ: Economy
    theta: Tensor
    beta: Tensor
    follower: FollowerSolution


def flat_batch(econ: Economy, traj: Trajectories) -> dict[str, Tensor]:
    """Flatten ``[R, N, T]`` trajectories to the ``[R, N*T]`` layout of the core estimator."""
    R, N, T = traj.actions.shape
    start = torch.zeros(R, N, T, dtype=torch.bool)
    start[:, :, 0] = True
    ctx = traj.contexts[:, :, None].expand(R, N, T)
    s = traj.states[:, :, :-1]
    return {
        "state": s.reshape(R, -1),
        "next_state": traj.states[:, :, 1:].reshape(R, -1),
        "joint_state": (ctx * econ.n_states + s).reshape(R, -1),
        "context": ctx.reshape(R, -1),
        "flow": traj.flows.reshape(R, -1),
        "action": traj.actions.reshape(R, -1),
        "episode_start": start.reshape(R, -1),
    }


def leader_rewards(econ: Economy, theta: Tensor, b: dict[str, Tensor]) -> Tensor:
    """Observed welfare (W) of every sampled step, ``[R, N*T]`` (a differentiable function of
    ``theta``; the asset term does not depend on it): the per-action table of
    :func:`rewards.welfare_action` read at the sampled actions."""
    x = rates(theta)
    act = welfare_action(econ, x[:, 0], x[:, 1:])  # [R, A]
    return asset_welfare(econ)[b["state"]] + torch.gather(act, 1, b["action"])


def leader_q_table(
    econ: Economy,
    theta: Tensor,
    follower: FollowerSolution,
    critic: Tensor,
    *,
    advantage: bool = True,
) -> Tensor:
    """Leader critic for every (type, bin) and action, ``[R, C*S, A]``, from a value table
    ``critic[R, C, S]``: ``Qbar(s, a) = rbar(s, a) + gamma (K_tau Vbar)[s, f(a)]``, minus
    ``Vbar(s)`` when ``advantage`` (``docs/theory.md`` §2: since ``E_a[dA] = 0``, ``Qbar`` may be
    replaced by ``Abar``; with per-state centring this removes a large term whose mean is zero
    only up to the truncation of ``Dhat`` at the episode end)."""
    R, C, S = critic.shape
    x = rates(theta.detach())
    with torch.no_grad():
        state_part = asset_welfare(econ)[None, None, :, None] + econ.gamma * expected_next(
            follower.parts, critic
        )  # [R, C, S, F]
        if advantage:
            state_part = state_part - critic[..., None]
        act = welfare_action(econ, x[:, 0], x[:, 1:])  # [R, A]
        q = np.empty((R, C * S, econ.n_actions))
        _fill_q(
            state_part.reshape(R, C * S, -1).contiguous().numpy(),
            econ.flow_a.numpy(),
            act.contiguous().numpy(),
            q,
        )
    return torch.from_numpy(q)


@njit(cache=True, nogil=True)
def _fill_q(state_part, flow_a, act, out):
    """``out[r, i, a] = state_part[r, i, flow_a[a]] + act[r, a]``."""
    R, n, _ = state_part.shape
    A = flow_a.shape[0]
    for r in range(R):
        for i in range(n):
            for a in range(A):
                out[r, i, a] = state_part[r, i, flow_a[a]] + act[r, a]


def hypergradient(
    at: EstimationPoint,
    traj: Trajectories,
    *,
    form: str = "mc",
    leader_q: str = "table",
    critic: Tensor | None = None,
    follower_transition: str = "expected",
    batch: dict[str, Tensor] | None = None,
) -> tuple[Tensor, HPGDWeights]:
    """HPGD estimate of ``dF/dtheta`` ``[R, 4]`` at ``at`` from ``traj`` (see module
    docstring): :func:`step_weights` contracted by :func:`surrogate_gradient`.

    ``form`` and ``leader_q`` are the core estimator's (``leader_q`` is ignored by
    ``"naive"``). ``critic[R, C, S]`` is a leader value table ``Vbar(type, bin)``: required by
    ``leader_q="table"`` (it gives ``q_table`` via :func:`leader_q_table` and ``v_table``), and
    used as the baseline of ``form="covariance"`` with ``leader_q="trajectory"`` (zeros if
    omitted).
    ``follower_transition``: ``"score"`` puts ``gamma log P(s_{t+1}|s_t,a_t) (V*(s_{t+1}) -
    E[V*(s')|s_t,a_t])`` in the follower's pseudo-reward; ``"expected"`` its conditional
    expectation given ``(s_t, a_t)``, ``gamma (K_tau stopgrad(V*))[s_t, f_t]``, whose gradient is the
    exact ``gamma sum_s' dP(s'|s_t,a_t) V*(s')`` of ``docs/theory.md`` §2 (Rao-Blackwellised: same mean, no
    next-state noise; uses the transition law the planner already needs for ``d log P``).
    ``batch``: ``flat_batch(econ, traj)`` if the caller has it already.
    """
    if follower_transition not in FOLLOWER_TRANSITION:
        raise ValueError(
            f"unknown follower_transition {follower_transition!r}; choose one of "
            f"{', '.join(FOLLOWER_TRANSITION)}"
        )
    econ, theta, _, follower = at
    b = flat_batch(econ, traj) if batch is None else batch
    with torch.no_grad():
        rbar_obs = leader_rewards(econ, theta.detach(), b)
    w = step_weights(
        at,
        b["joint_state"],
        b["action"],
        b["episode_start"],
        rbar_obs,
        form=form,
        leader_q=leader_q,
        critic=critic,
    )
    grad = surrogate_gradient(econ, theta, follower, b, w, follower_transition)
    return grad, w


def step_weights(
    at: EstimationPoint,
    joint_state: Tensor,
    actions: Tensor,
    episode_start: Tensor,
    rbar_obs: Tensor,
    *,
    form: str = "mc",
    leader_q: str = "table",
    critic: Tensor | None = None,
) -> HPGDWeights:
    """The core's per-step weights (:func:`hpgd_weights`) on the ``[R, N*T]`` layout of
    :func:`flat_batch` (``joint_state`` = type x bin index, ``rbar_obs`` the observed welfare);
    options as in :func:`hypergradient`."""
    econ, theta, beta, follower = at
    if form not in FORMS:
        raise ValueError(f"unknown HPGD form {form!r}; choose one of {', '.join(FORMS)}")
    if leader_q not in LEADER_Q:
        raise ValueError(f"unknown leader_q {leader_q!r}; choose one of {', '.join(LEADER_Q)}")
    R, C, S = theta.shape[0], econ.n_contexts, econ.n_states
    if critic is not None and critic.shape != (R, C, S):
        raise ValueError(f"critic must have shape {(R, C, S)}, got {tuple(critic.shape)}")
    q_table = v_table = None
    if form != "naive" and leader_q == "table":
        if critic is None:
            raise ValueError(
                f'leader_q="table" needs critic values Vbar of shape {(R, C, S)} '
                "(a learned or exact leader value table)"
            )
        # "mc" centres per state: pass the advantage (module docstring); "covariance"
        # subtracts v_table itself, so it gets Qbar.
        q_table = leader_q_table(econ, theta, follower, critic, advantage=form == "mc")
    if form == "covariance" and leader_q != "crossfit":
        v_table = (
            critic.reshape(R, C * S)
            if critic is not None
            else torch.zeros(R, C * S, dtype=torch.float64)
        )
    return hpgd_weights(
        joint_state,
        rbar_obs,
        episode_start,
        econ.gamma,
        beta,
        form=form,  # type: ignore[arg-type]
        n_states=C * S,
        actions=actions,
        n_actions=econ.n_actions,
        leader_q=leader_q,  # type: ignore[arg-type]
        q_table=q_table,
        v_table=v_table,
    )


def surrogate_gradient(
    econ: Economy,
    theta: Tensor,
    follower: FollowerSolution,
    b: dict[str, Tensor],
    w: HPGDWeights,
    follower_transition: str,
) -> Tensor:
    """Gradient of the surrogate (module docstring)

        sum_t follower_t rtilde_t + leader_t rbar_t + transition_t log P_tau(s_{t+1}|s_t,a_t)

    with every per-step term a lookup in a small ``theta``-dependent table, so the step weights
    are first summed per table cell (exactly the same sum, reordered) and autograd runs over the
    tables only:

    * ``rbar_t = asset(s_t) + W_tau,v(a_t)``: weights summed per action, ``[R, A]``;
    * Cobb-Douglas ``cd(c_t, a_t) shrink_c(v)``: follower weights per (type, action);
    * ``gamma (K_tau V*)[c_t, s_t, f_t]`` (``"expected"``): follower weights per (type, bin, flow);
    * ``log P_tau(s'|s, f)``: by (K), ``log D[f, s' - s] - log Z[s, f]`` when the mean is not
      clipped (clipped rows use the fixed laws at the range ends: no ``tau`` dependence), so the
      weights (``transition_t``, plus ``gamma follower_t (V*(s') - E[V*(s')|s, f])`` for
      ``"score"``) are summed per (flow, offset) and per (bin, flow).
    """
    R = theta.shape[0]
    C, S, F, A = econ.n_contexts, econ.n_states, econ.n_flows, econ.n_actions
    parts = follower.parts
    L = parts.D.shape[-1]
    score = follower_transition == "score"
    with torch.no_grad():
        expected = expected_next(parts, follower.V) if score else follower.V[..., None]
        sums = CellSums(*(np.zeros((R, n)) for n in (A, C * A, C * S * F, F * L, S * F)))

        def arr(t: Tensor) -> np.ndarray:
            return t.detach().contiguous().numpy()

        bad = aggregate(
            StepWeights(arr(w.leader), arr(w.follower), arr(w.transition)),
            Steps(*(arr(b[k]) for k in ("state", "flow", "context", "action", "next_state"))),
            arr(parts.clip_hi | parts.clip_lo),
            int(parts.d_lo),
            TransitionTerm(score, econ.gamma, arr(follower.V), arr(expected)),
            sums,
        )
        if bad:
            raise ValueError("a sampled transition lies outside the kernel's band of offsets")
        w_lead, w_cd, w_kv, w_d, w_z = (torch.from_numpy(t) for t in sums)
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        x = rates(th)
        tau, vat = x[:, 0], x[:, 1:]
        shrink = torch.exp(-(econ.alphas[None] * torch.log1p(vat)[:, None, :]).sum(-1))  # [R, C]
        cd = (econ.cd_base[None] * shrink[..., None]).reshape(R, C * A)
        k = kernel_parts(econ, tau)
        one = torch.ones((), dtype=k.D.dtype)
        log_d = torch.log(torch.where(w_d != 0, k.D.reshape(R, F * L), one))
        log_z = torch.log(torch.where(w_z != 0, k.Z.reshape(R, S * F), one))
        surrogate = (
            (w_cd * cd).sum()
            + (w_lead * welfare_action(econ, tau, vat)).sum()
            + (w_d * log_d).sum()
            - (w_z * log_z).sum()
        )
        if not score:
            kv = expected_next(k, follower.V.detach()).reshape(R, C * S * F)
            surrogate = surrogate + econ.gamma * (w_kv * kv).sum()
        (grad,) = torch.autograd.grad(surrogate, th)
    return grad


def exact_hypergradient(
    econ: Economy,
    theta: Tensor,
    beta: Tensor | float,
    *,
    tol: float = 1e-12,
    V0: Tensor | None = None,
) -> tuple[Tensor, Tensor, FollowerSolution]:
    """Exact ``F(theta)[R]`` and the exact hypergradient ``dF/dtheta[R, 4]`` (``docs/theory.md``
    §2), with the household solution, by an implicit-function layer: one soft-policy-iteration
    step ``V1 = N_theta(V*)`` taken *with* autograd from the converged, detached ``V*`` has
    ``dV1/dtheta = dV*/dtheta`` exactly (at the fixed point the Newton map's Jacobian in ``V``
    vanishes: ``pi*`` maximises the soft value, so the policy-evaluation step is stationary in
    the policy). Building ``pi*`` and ``Vbar`` from ``V1`` and back-propagating ``F`` gives the
    exact gradient, including the ``d log P`` (income tax) term."""
    sol = soft_policy_iteration(econ, theta, beta, V0=V0, tol=tol)
    beta_t = check_temperature(beta, theta.shape[0])
    with torch.enable_grad():
        th = theta.detach().to(torch.float64).requires_grad_(True)
        hh = household_problem(econ, th, beta_t)
        V1, _, _ = newton_step(econ, hh, beta_t, soft_q(econ, hh, sol.V))  # carries dV*/dtheta
        pi_f = torch.softmax(soft_q(econ, hh, V1) / beta_t[:, None, None, None], dim=-1)
        P = mix_kernel(hh.parts, pi_f)
        Vbar = leader_values(econ, P, pi_f, hh.log_pa, hh.x[:, 0], hh.x[:, 1:])
        F = (Vbar @ econ.mu0) @ econ.context_probs
        (grad,) = torch.autograd.grad(F.sum(), th)
    return F.detach(), grad, sol
