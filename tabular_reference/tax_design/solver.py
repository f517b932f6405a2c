"""Exact soft-optimal households and exact social welfare (reference notes, sections 1, 2, 4).

Flow-group reduction. Actions in one flow group ``f`` share the transition row ``K[s, f, :]`` and
the state part ``u(a_s)`` of the reward, so the soft Bellman equation over 1,250 actions reduces
exactly to one over the ``F = 130`` groups with the group's soft value as reward:

    rho_f = lam log sum_{a in f} exp(R_a / lam),    pi(a | f) = exp((R_a - rho_f) / lam)      (G)
    Q(s, f) = u(a_s) + rho_f + gamma (K V)[s, f],   V(s) = lam log sum_f exp(Q(s, f) / lam)    (B)
    pi*(a | s) = pi(f(a) | s) pi(a | f(a)),          pi(f | s) = exp((Q(s, f) - V(s)) / lam)

(``V = lam logsumexp(Q / lam)`` over all 1,250 actions, the uniform-without-normalisation entropy
convention of section 1.) Households are solved by soft policy iteration -- Newton's method on
(B): ``V <- (I - gamma P_pi)^{-1} sum_f pi(f|s) (u + rho_f - lam log pi(f|s))`` -- with warm starts
and a stated sup-norm tolerance on the soft Bellman residual ``max_s |T(V)(s) - V(s)|``.

The leader's value of ``pi*`` is ``Vbar = (I - gamma P_pi)^{-1} rbar_pi`` and the social welfare is

    F(theta) = sum_xi P(xi) mu0^T Vbar_xi                                                        (F)

Exact hypergradient (implicit-function layer). One soft-policy-iteration step
``V1 = N_theta(V*)`` taken *with* autograd from the converged, detached ``V*`` has
``dV1/dtheta = dV*/dtheta`` exactly: at the fixed point the Newton map's Jacobian in ``V``
vanishes (``pi*`` maximises the soft value, so the policy-evaluation step is stationary in the
policy). Building ``pi*`` and ``Vbar`` from ``V1`` and back-propagating ``F`` therefore gives the
exact ``dF/dtheta`` of section 2, including the ``d log P`` (income tax) term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.kernel import (
    KernelParts,
    expected_next,
    kernel_parts,
    mix_kernel,
)
from tabular_reference.tax_design.rewards import (
    asset_utility,
    asset_welfare,
    household_action_reward,
    rates,
    welfare_action,
)

__all__ = [
    "FollowerSolution",
    "Welfare",
    "check_lam",
    "check_theta",
    "group_soft_max",
    "leader_values",
    "soft_policy_iteration",
    "welfare",
    "welfare_and_grad",
]

_DT = torch.float64


def check_theta(theta: Tensor) -> None:
    if theta.dim() != 2 or theta.shape[1] != 4:
        raise ValueError(
            f"theta must have shape [R, 4] (logits of tau, v_1, v_2, v_3), got {tuple(theta.shape)}"
        )
    if not bool(torch.isfinite(theta).all()):
        raise ValueError("theta contains NaN/inf; lower the learning rate or check the inputs")


def check_lam(lam: Tensor | float, n_runs: int) -> Tensor:
    """Temperatures as ``[R]`` float64; must be finite and > 0."""
    lam_t = torch.as_tensor(lam, dtype=_DT)
    if lam_t.dim() == 0:
        lam_t = lam_t.expand(n_runs).clone()
    if lam_t.shape != (n_runs,):
        raise ValueError(f"lam must be a float or have shape [{n_runs}], got {tuple(lam_t.shape)}")
    if not bool(torch.isfinite(lam_t).all()) or bool((lam_t <= 0).any()):
        raise ValueError(
            f"household temperature lam must be > 0 (got {lam_t.tolist()}); lam = 0 has no "
            "differentiable best response"
        )
    return lam_t


def group_soft_max(econ: Economy, action_reward: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(G): ``rho[R, C, F]`` and ``log pi(a | f(a))`` ``[R, C, A]`` for ``action_reward[R, C, A]``."""
    lam4 = lam[:, None, None, None]
    grouped = action_reward[..., econ.group_index] / lam4  # [R, C, F, G]
    grouped = grouped.masked_fill(~econ.group_mask, float("-inf"))
    rho = lam[:, None, None] * torch.logsumexp(grouped, dim=-1)
    log_pa = (action_reward - rho[..., econ.flow_a]) / lam[:, None, None]
    return rho, log_pa


def _soft_q(econ: Economy, parts: KernelParts, u: Tensor, rho: Tensor, V: Tensor) -> Tensor:
    """(B): ``Q[R, C, S, F]``."""
    return u[None, None, :, None] + rho[:, :, None, :] + econ.gamma * expected_next(parts, V)


def _solve(P: Tensor, b: Tensor, gamma: float) -> Tensor:
    eye = torch.eye(P.shape[-1], dtype=P.dtype)
    return torch.linalg.solve(eye - gamma * P, b[..., None])[..., 0]


def _newton_step(
    econ: Economy, parts: KernelParts, u: Tensor, rho: Tensor, lam: Tensor, Q: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Policy ``pi(f|s)`` from ``Q``, its transition matrix, and its exact soft value."""
    lam4 = lam[:, None, None, None]
    log_pi = torch.log_softmax(Q / lam4, dim=-1)
    pi = log_pi.exp()
    reward = u[None, None, :, None] + rho[:, :, None, :] - lam4 * log_pi
    r_pi = (pi * reward).sum(-1)
    P = mix_kernel(parts, pi)
    return _solve(P, r_pi, econ.gamma), pi, P


@dataclass(frozen=True)
class FollowerSolution:
    """Soft-optimal households for ``R`` runs x ``C`` types: ``V[R, C, S]``, ``pi_f[R, C, S, F]``
    (``pi(f|s)``), ``log_pa[R, C, A]`` (``log pi(a|f(a))``), ``P[R, C, S, S]`` (``P_pi``), the
    final residual ``max |T(V) - V|`` per run and the number of Newton steps."""

    V: Tensor
    pi_f: Tensor
    log_pa: Tensor
    P: Tensor
    parts: KernelParts
    residual: Tensor
    iters: int


def soft_policy_iteration(
    econ: Economy,
    theta: Tensor,
    lam: Tensor | float,
    *,
    V0: Tensor | None = None,
    tol: float = 1e-10,
    max_iters: int = 100,
) -> FollowerSolution:
    """Solve (B) for every run and household type by Newton / soft policy iteration.

    Stops when the sup-norm soft Bellman residual of every run is ``<= tol * max(1, max|V|)``
    (relative to the value scale; float64 round-off floors it near 1e-15 relative); raises
    ``RuntimeError`` if ``max_iters`` is reached first.
    """
    check_theta(theta)
    R = theta.shape[0]
    lam_t = check_lam(lam, R)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    with torch.no_grad():
        x = rates(theta.detach().to(_DT))
        parts = kernel_parts(econ, x[:, 0])
        rho, log_pa = group_soft_max(econ, household_action_reward(econ, x[:, 1:]), lam_t)
        u = asset_utility(econ)
        C, S = econ.n_contexts, econ.n_states
        if V0 is None:
            V = torch.zeros(R, C, S, dtype=_DT)
        else:
            if V0.shape != (R, C, S):
                raise ValueError(f"V0 must have shape {(R, C, S)}, got {tuple(V0.shape)}")
            V = V0.to(_DT)
        lam4 = lam_t[:, None, None, None]
        for it in range(max_iters + 1):
            Q = _soft_q(econ, parts, u, rho, V)
            TV = lam4[..., 0] * torch.logsumexp(Q / lam4, dim=-1)
            residual = (TV - V).abs().amax(dim=(1, 2))
            scale = V.abs().amax(dim=(1, 2)).clamp_min(1.0)
            if bool((residual <= tol * scale).all()):
                log_pi = torch.log_softmax(Q / lam4, dim=-1)
                pi = log_pi.exp()
                P = mix_kernel(parts, pi)
                return FollowerSolution(V, pi, log_pa, P, parts, residual, it)
            if it == max_iters:
                break
            V, _, _ = _newton_step(econ, parts, u, rho, lam_t, Q)
    raise RuntimeError(
        f"soft policy iteration did not reach tol={tol} in {max_iters} Newton steps "
        f"(residuals {residual.tolist()})"
    )


def group_average(econ: Economy, log_pa: Tensor, values: Tensor) -> Tensor:
    """``sum_{a in f} pi(a|f) values[a]`` for ``log_pa[R, C, A]``, ``values[R, A]``: ``[R, C, F]``."""
    weighted = log_pa.exp() * values[:, None, :]
    out = torch.zeros(*weighted.shape[:2], econ.n_flows, dtype=weighted.dtype)
    return out.index_add(2, econ.flow_a, weighted)


def leader_values(
    econ: Economy, P: Tensor, pi_f: Tensor, log_pa: Tensor, tau: Tensor, vat: Tensor
) -> Tensor:
    """``Vbar = (I - gamma P_pi)^{-1} rbar_pi`` of (W) under ``pi*``, ``[R, C, S]``."""
    wbar = group_average(econ, log_pa, welfare_action(econ, tau, vat))  # [R, C, F]
    r_pi = asset_welfare(econ)[None, None, :] + (pi_f * wbar[:, :, None, :]).sum(-1)
    return _solve(P, r_pi, econ.gamma)


@dataclass(frozen=True)
class Welfare:
    """Exact social welfare ``F[R]`` of (F), per household type ``F_ctx[R, C]``, the leader's
    values ``Vbar[R, C, S]`` and the follower solution."""

    F: Tensor
    F_ctx: Tensor
    Vbar: Tensor
    follower: FollowerSolution


def welfare(
    econ: Economy,
    theta: Tensor,
    lam: Tensor | float,
    *,
    V0: Tensor | None = None,
    tol: float = 1e-10,
) -> Welfare:
    """Exact social welfare (F) (no gradient)."""
    sol = soft_policy_iteration(econ, theta, lam, V0=V0, tol=tol)
    with torch.no_grad():
        x = rates(theta.detach().to(_DT))
        Vbar = leader_values(econ, sol.P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
        F_ctx = Vbar @ econ.mu0
        return Welfare(F_ctx @ econ.context_probs, F_ctx, Vbar, sol)


def welfare_and_grad(
    econ: Economy,
    theta: Tensor,
    lam: Tensor | float,
    *,
    V0: Tensor | None = None,
    tol: float = 1e-12,
) -> tuple[Tensor, Tensor, FollowerSolution]:
    """Exact ``F(theta)[R]`` and the exact hypergradient ``dF/dtheta[R, 4]`` (section 2) by the
    implicit-function layer described in the module docstring."""
    sol = soft_policy_iteration(econ, theta, lam, V0=V0, tol=tol)
    lam_t = check_lam(lam, theta.shape[0])
    with torch.enable_grad():
        th = theta.detach().to(_DT).requires_grad_(True)
        x = rates(th)
        tau, vat = x[:, 0], x[:, 1:]
        parts = kernel_parts(econ, tau)
        rho, log_pa = group_soft_max(econ, household_action_reward(econ, vat), lam_t)
        u = asset_utility(econ)
        Q0 = _soft_q(econ, parts, u, rho, sol.V)
        V1, _, _ = _newton_step(econ, parts, u, rho, lam_t, Q0)  # carries dV*/dtheta
        Q1 = _soft_q(econ, parts, u, rho, V1)
        pi_f = torch.softmax(Q1 / lam_t[:, None, None, None], dim=-1)
        P = mix_kernel(parts, pi_f)
        Vbar = leader_values(econ, P, pi_f, log_pa, tau, vat)
        F = (Vbar @ econ.mu0) @ econ.context_probs
        (grad,) = torch.autograd.grad(F.sum(), th)
    return F.detach(), grad, sol
