"""Household reward and social welfare of the tax-design economy (``docs/theory.md`` §6).

Household (follower) reward, split into a state part and an action part:

    r_v(s, a) = u(a_s) + [ -0.1 h^2 + prod_j (c_j / (p_j (1 + v_j)))^alpha_j ]              (R)
    u(a) = log(a / 20 + 1) if a > 0 else a

The Cobb-Douglas term is written as ``prod_j (c_j/p_j)^alpha_j * exp(-sum_j alpha_j log(1+v_j))``,
which is exactly 0 when some ``c_j = 0`` and smooth in the VAT rates ``v``.

Planner (leader) welfare per step, split the same way:

    rbar_{tau,v}(s, a) = a_s * [a_s <= 0]
                         + 15 * mean_j(c_j / (1 + v_j)) / 5
                         + 5 * log(1 + sum_j v_j c_j / (1 + v_j) + tau w h)                  (W)

Leader parameters ``theta[R, 4]`` map to rates ``(tau, v_1, v_2, v_3) = 2 * sigmoid(theta)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tabular_reference.tax_design.economy import Economy

__all__ = [
    "INITIAL_RATE",
    "asset_utility",
    "asset_welfare",
    "consumption_utility",
    "household_action_reward",
    "initial_theta",
    "rates",
    "welfare_action",
]

INITIAL_RATE = 0.3


def rates(theta: Tensor) -> Tensor:
    """``2 * sigmoid(theta)``: ``theta[..., 4]`` -> ``(tau, v_1, v_2, v_3)`` in ``(0, 2)``."""
    return 2.0 * torch.sigmoid(theta)


def initial_theta(n_runs: int, rate: float = INITIAL_RATE) -> Tensor:
    """``theta`` with every rate at ``rate`` (0.3 in the paper): ``logit(rate / 2)``, ``[R, 4]``."""
    if not 0.0 < rate < 2.0:
        raise ValueError(f"initial tax rate must lie in (0, 2), got {rate}")
    p = rate / 2.0
    return torch.full((n_runs, 4), math.log(p / (1.0 - p)), dtype=torch.float64)


def asset_utility(econ: Economy) -> Tensor:
    """``u(a_s)`` of (R) at every bin centre, ``[S]``."""
    a = econ.centres
    return torch.where(a > 0, torch.log1p(a.clamp_min(0.0) / 20.0), a)


def asset_welfare(econ: Economy) -> Tensor:
    """Asset term of (W), ``a_s`` when ``a_s <= 0`` else 0, ``[S]``."""
    a = econ.centres
    return torch.where(a <= 0, a, torch.zeros_like(a))


def consumption_utility(econ: Economy, vat: Tensor) -> Tensor:
    """Cobb-Douglas term of (R) for every household type and action, ``[R, C, A]`` for
    ``vat[R, 3]``."""
    shrink = torch.exp(-(econ.alphas[None, :, :] * torch.log1p(vat)[:, None, :]).sum(-1))
    return econ.cd_base[None] * shrink[..., None]


def household_action_reward(econ: Economy, vat: Tensor) -> Tensor:
    """Action part of (R), ``-0.1 h^2 + Cobb-Douglas``, ``[R, C, A]``."""
    hours_cost = -econ.config.hours_cost * econ.hours_a**2
    return hours_cost + consumption_utility(econ, vat)


def welfare_action(
    econ: Economy,
    tau: Tensor,
    vat: Tensor,
    hours: Tensor | None = None,
    cons: Tensor | None = None,
) -> Tensor:
    """Action part of (W). With ``hours``/``cons`` omitted: every action, ``[R, A]`` for
    ``tau[R]``, ``vat[R, 3]``. Otherwise ``hours[R, T]``, ``cons[R, T, 3]`` -> ``[R, T]``."""
    if hours is None or cons is None:
        hours, cons = econ.hours_a[None, :], econ.cons_a[None, :, :]
    net = cons / (1.0 + vat[:, None, :])  # [R, *, 3]
    consumption_term = 15.0 * net.mean(-1) / 5.0
    revenue = (vat[:, None, :] * net).sum(-1) + tau[:, None] * econ.config.wage * hours
    return consumption_term + 5.0 * torch.log1p(revenue)
