"""HPGD for the tax design from sampled household trajectories only (reference notes, section 2).

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

import torch
from torch import Tensor

from align_cbrl.estimators.trajectory import (
    HPGDWeights,
    hpgd_weights,
)
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.kernel import expected_next, kernel_parts, log_kernel
from tabular_reference.tax_design.rewards import asset_welfare, rates, welfare_action
from tabular_reference.tax_design.sampling import Trajectories
from tabular_reference.tax_design.solver import FollowerSolution

__all__ = [
    "FOLLOWER_TRANSITION",
    "FORMS",
    "LEADER_Q",
    "flat_batch",
    "hpgd_gradient",
    "leader_q_table",
    "leader_rewards",
]

FORMS = ("mc", "covariance", "naive")
LEADER_Q = ("table", "crossfit", "trajectory")
FOLLOWER_TRANSITION = ("score", "expected")


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
    ``theta``; the asset term does not depend on it)."""
    x = rates(theta)
    a = b["action"]
    act = welfare_action(econ, x[:, 0], x[:, 1:], hours=econ.hours_a[a], cons=econ.cons_a[a])
    return asset_welfare(econ)[b["state"]] + act


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
    ``Vbar(s)`` when ``advantage`` (the notes, section 2: since ``E_a[dA] = 0``, ``Qbar`` may be
    replaced by ``Abar``; with per-state centring this removes a large term whose mean is zero
    only up to the truncation of ``Dhat`` at the episode end)."""
    R, C, S = critic.shape
    x = rates(theta.detach())
    with torch.no_grad():
        cont = expected_next(follower.parts, critic)[..., econ.flow_a]  # [R, C, S, A]
        act = welfare_action(econ, x[:, 0], x[:, 1:])  # [R, A]
        q = asset_welfare(econ)[None, None, :, None] + act[:, None, None, :] + econ.gamma * cont
        if advantage:
            q = q - critic[..., None]
    return q.reshape(R, C * S, econ.n_actions)


def hpgd_gradient(
    econ: Economy,
    theta: Tensor,
    lam: Tensor,
    follower: FollowerSolution,
    traj: Trajectories,
    *,
    form: str = "mc",
    leader_q: str = "table",
    critic: Tensor | None = None,
    follower_transition: str = "expected",
) -> tuple[Tensor, HPGDWeights]:
    """HPGD estimate of ``dF/dtheta`` ``[R, 4]`` from ``traj`` (see module docstring).

    ``form`` and ``leader_q`` are the core estimator's (``leader_q`` is ignored by
    ``"naive"``). ``critic[R, C, S]`` is a leader value table ``Vbar(type, bin)``: required by
    ``leader_q="table"`` (it gives ``q_table`` via :func:`leader_q_table` and ``v_table``), and
    used as the baseline of ``form="covariance"`` with ``leader_q="trajectory"`` (zeros if
    omitted).
    ``follower_transition``: ``"score"`` puts ``gamma log P(s_{t+1}|s_t,a_t) (V*(s_{t+1}) -
    E[V*(s')|s_t,a_t])`` in the follower's pseudo-reward; ``"expected"`` its conditional
    expectation given ``(s_t, a_t)``, ``gamma (K_tau stopgrad(V*))[s_t, f_t]``, whose gradient is the
    exact ``gamma sum_s' dP(s'|s_t,a_t) V*(s')`` of section 2 (Rao-Blackwellised: same mean, no
    next-state noise; uses the transition law the planner already needs for ``d log P``).
    """
    if follower_transition not in FOLLOWER_TRANSITION:
        raise ValueError(
            f"unknown follower_transition {follower_transition!r}; choose one of "
            f"{', '.join(FOLLOWER_TRANSITION)}"
        )
    if form not in FORMS:
        raise ValueError(f"unknown HPGD form {form!r}; choose one of {', '.join(FORMS)}")
    if leader_q not in LEADER_Q:
        raise ValueError(f"unknown leader_q {leader_q!r}; choose one of {', '.join(LEADER_Q)}")
    b = flat_batch(econ, traj)
    R, C, S = theta.shape[0], econ.n_contexts, econ.n_states
    if critic is not None and critic.shape != (R, C, S):
        raise ValueError(f"critic must have shape {(R, C, S)}, got {tuple(critic.shape)}")
    with torch.no_grad():
        rbar_obs = leader_rewards(econ, theta.detach(), b)
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
    w = hpgd_weights(
        b["joint_state"],
        rbar_obs,
        b["episode_start"],
        econ.gamma,
        lam,
        form=form,  # type: ignore[arg-type]
        n_states=C * S,
        actions=b["action"],
        n_actions=econ.n_actions,
        leader_q=leader_q,  # type: ignore[arg-type]
        q_table=q_table,
        v_table=v_table,
    )
    rows = torch.arange(R)[:, None]
    with torch.no_grad():
        # V*(s') - E[V*(s') | s, f]: same expectation (E[d log P | s, a] = 0), far less variance.
        expected = expected_next(follower.parts, follower.V)  # [R, C, S, F]
        v_next = (
            follower.V[rows, b["context"], b["next_state"]]
            - expected[rows, b["context"], b["state"], b["flow"]]
        )
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        x = rates(th)
        tau, vat = x[:, 0], x[:, 1:]
        shrink = torch.exp(-(econ.alphas[b["context"]] * torch.log1p(vat)[:, None, :]).sum(-1))
        cobb_douglas = econ.cd_base[b["context"], b["action"]] * shrink
        log_p = log_kernel(econ, tau[:, None], b["state"], b["flow"], b["next_state"])
        if follower_transition == "score":
            rtilde = cobb_douglas + econ.gamma * log_p * v_next
        else:
            kv = expected_next(kernel_parts(econ, tau), follower.V.detach())
            rtilde = cobb_douglas + econ.gamma * kv[rows, b["context"], b["state"], b["flow"]]
        rbar = leader_rewards(econ, th, b)
        surrogate = (w.follower * rtilde + w.leader * rbar + w.transition * log_p).sum()
        (grad,) = torch.autograd.grad(surrogate, th)
    return grad, w
