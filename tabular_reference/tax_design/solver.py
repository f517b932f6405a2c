"""Exact soft-optimal households and exact social welfare (``docs/theory.md`` §1, §2, §6).

Flow-group reduction. Actions in one flow group ``f`` share the transition row ``K[s, f, :]`` and
the state part ``u(a_s)`` of the reward, so the soft Bellman equation over 1,250 actions reduces
exactly to one over the ``F = 130`` groups with the group's soft value as reward:

    rho_f = beta log sum_{a in f} exp(R_a / beta),    pi(a | f) = exp((R_a - rho_f) / beta)      (G)
    Q(s, f) = u(a_s) + rho_f + gamma (K V)[s, f],   V(s) = beta log sum_f exp(Q(s, f) / beta)    (B)
    pi*(a | s) = pi(f(a) | s) pi(a | f(a)),          pi(f | s) = exp((Q(s, f) - V(s)) / beta)

(``V = beta logsumexp(Q / beta)`` over all 1,250 actions, the uniform-without-normalisation entropy
convention of ``docs/theory.md`` §1.) Households are solved by soft policy iteration -- Newton's method on
(B): ``V <- (I - gamma P_pi)^{-1} sum_f pi(f|s) (u + rho_f - beta log pi(f|s))`` -- with warm starts
and a stated sup-norm tolerance on the soft Bellman residual ``max_s |T(V)(s) - V(s)|``.

The leader's value of ``pi*`` is ``Vbar = (I - gamma P_pi)^{-1} rbar_pi`` and the social welfare is

    F(theta) = sum_xi P(xi) mu0^T Vbar_xi                                                        (F)

The pieces (:func:`household_problem`, :func:`soft_q`, :func:`newton_step`,
:func:`leader_values`) are public so that the exact hypergradient
(:func:`tabular_reference.tax_design.hypergradient.exact_hypergradient`) can differentiate one
Newton step through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from align_cbrl.estimators.temperature import check_beta
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
    "Household",
    "Welfare",
    "check_temperature",
    "check_theta",
    "group_average",
    "group_soft_max",
    "household_problem",
    "leader_values",
    "newton_step",
    "soft_policy_iteration",
    "soft_q",
    "welfare",
]

_DT = torch.float64


def check_theta(theta: Tensor) -> None:
    if theta.dim() != 2 or theta.shape[1] != 4:
        raise ValueError(
            f"theta must have shape [R, 4] (logits of tau, v_1, v_2, v_3), got {tuple(theta.shape)}"
        )
    if not bool(torch.isfinite(theta).all()):
        raise ValueError("theta contains NaN/inf; lower the learning rate or check the inputs")


HOUSEHOLD_TEMPERATURE_HELP = (
    "household temperature beta must be > 0; beta = 0 has no differentiable best response"
)


def check_temperature(beta: Tensor | float, n_runs: int) -> Tensor:
    """Household temperatures as ``[R]`` float64; must be finite and > 0."""
    return check_beta(beta, n_runs, per="run", help=HOUSEHOLD_TEMPERATURE_HELP)


def group_soft_max(econ: Economy, action_reward: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """(G): ``rho[R, C, F]`` and ``log pi(a | f(a))`` ``[R, C, A]`` for ``action_reward[R, C, A]``."""
    lam4 = beta[:, None, None, None]
    grouped = action_reward[..., econ.group_index] / lam4  # [R, C, F, G]
    grouped = grouped.masked_fill(~econ.group_mask, float("-inf"))
    rho = beta[:, None, None] * torch.logsumexp(grouped, dim=-1)
    log_pa = (action_reward - rho[..., econ.flow_a]) / beta[:, None, None]
    return rho, log_pa


@dataclass(frozen=True)
class Household:
    """The households' problem at the rates ``x = rates(theta)``: the kernel ``parts`` of the
    income tax ``x[:, 0]``, the state utility ``u[S]`` and (G) of the VAT ``x[:, 1:]``:
    ``rho[R, C, F]`` and ``log_pa[R, C, A]``."""

    x: Tensor
    parts: KernelParts
    u: Tensor
    rho: Tensor
    log_pa: Tensor


def household_problem(econ: Economy, theta: Tensor, beta: Tensor) -> Household:
    """:class:`Household` of the logits ``theta[R, 4]`` (differentiable when ``theta`` is)."""
    x = rates(theta)
    parts = kernel_parts(econ, x[:, 0])
    rho, log_pa = group_soft_max(econ, household_action_reward(econ, x[:, 1:]), beta)
    return Household(x, parts, asset_utility(econ), rho, log_pa)


def soft_q(econ: Economy, hh: Household, V: Tensor) -> Tensor:
    """(B): ``Q[R, C, S, F]``."""
    return (
        hh.u[None, None, :, None] + hh.rho[:, :, None, :] + econ.gamma * expected_next(hh.parts, V)
    )


def _solve(P: Tensor, b: Tensor, gamma: float) -> Tensor:
    eye = torch.eye(P.shape[-1], dtype=P.dtype)
    return torch.linalg.solve(eye - gamma * P, b[..., None])[..., 0]


def newton_step(
    econ: Economy, hh: Household, beta: Tensor, Q: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Policy ``pi(f|s)`` from ``Q``, its transition matrix, and its exact soft value."""
    beta4 = beta[:, None, None, None]
    log_pi = torch.log_softmax(Q / beta4, dim=-1)
    pi = log_pi.exp()
    reward = hh.u[None, None, :, None] + hh.rho[:, :, None, :] - beta4 * log_pi
    r_pi = (pi * reward).sum(-1)
    P = mix_kernel(hh.parts, pi)
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
    beta: Tensor | float,
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
    beta_t = check_temperature(beta, R)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    with torch.no_grad():
        hh = household_problem(econ, theta.detach().to(_DT), beta_t)
        C, S = econ.n_contexts, econ.n_states
        if V0 is None:
            V = torch.zeros(R, C, S, dtype=_DT)
        else:
            if V0.shape != (R, C, S):
                raise ValueError(f"V0 must have shape {(R, C, S)}, got {tuple(V0.shape)}")
            V = V0.to(_DT)
        beta4 = beta_t[:, None, None, None]
        for it in range(max_iters + 1):
            Q = soft_q(econ, hh, V)
            TV = beta4[..., 0] * torch.logsumexp(Q / beta4, dim=-1)
            residual = (TV - V).abs().amax(dim=(1, 2))
            scale = V.abs().amax(dim=(1, 2)).clamp_min(1.0)
            if bool((residual <= tol * scale).all()):
                log_pi = torch.log_softmax(Q / beta4, dim=-1)
                pi = log_pi.exp()
                P = mix_kernel(hh.parts, pi)
                return FollowerSolution(V, pi, hh.log_pa, P, hh.parts, residual, it)
            if it == max_iters:
                break
            V, _, _ = newton_step(econ, hh, beta_t, Q)
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


def welfare(econ: Economy, theta: Tensor, beta: Tensor | float, **solve: Any) -> Welfare:
    """Exact social welfare (F) (no gradient); ``solve``: options of
    :func:`soft_policy_iteration` (``V0``, ``tol``, ``max_iters``)."""
    sol = soft_policy_iteration(econ, theta, beta, **solve)
    with torch.no_grad():
        x = rates(theta.detach().to(_DT))
        Vbar = leader_values(econ, sol.P, sol.pi_f, sol.log_pa, x[:, 0], x[:, 1:])
        F_ctx = Vbar @ econ.mu0
        return Welfare(F_ctx @ econ.context_probs, F_ctx, Vbar, sol)
