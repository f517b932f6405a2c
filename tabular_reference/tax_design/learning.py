"""Tax-design households that *learn* instead of being solved (``docs/accelerated.md``).

:class:`LearningHouseholds` keeps one soft value table ``V[S]`` per run and household type
(``[R, C, S]``) and trains it by **soft value-iteration sweeps** (synchronous, Jacobi): one
follower update is the soft Bellman operator (B) of :mod:`solver` under the planner's current
taxes ``theta`` (``docs/theory.md`` §1, §6), in its exact flow-group form

    V(s) <- beta log sum_f exp(Q_V(s, f) / beta),   Q_V(s, f) = u(a_s) + rho_f + gamma (K_tau V)[s, f]

(``rho_f`` the within-group soft maximum (G), closed-form: only the state values are learned).
The households act with the softmax policy of their table, ``pi(f|s) = softmax_f(Q_V(s, f) /
beta)`` times the exact ``pi(a|f)``. The sweep is a ``gamma``-contraction (``gamma = 0.9``) with
the soft-optimal ``V*`` as its fixed point, so ``n`` sweeps from ``V_0`` leave an error of at most
``gamma^n ||V_0 - V*||_inf``. Sweeps (rather than sampled soft Q-learning) keep the learned
follower deterministic given its start, so the bias of HPGD at budget ``n`` is measured without
a second source of noise; the same choice as Four-Rooms (:mod:`tabular_reference.four_rooms.learning`).

``advance(theta, n)`` continues the training by ``n`` sweeps from the stored tables (**warm
start**: the tables carry over from one call, and one outer iteration, to the next); with
``warm_start=False`` every call restarts from ``V = 0``, so the households cannot continue a run
(the multilevel estimator of ``docs/theory.md`` §9 needs them to). ``n = None`` is the ``n = inf``
case: the exact solver (:func:`solver.soft_policy_iteration`, warm-started Newton), whose values
become the stored table.

Both return a :class:`solver.FollowerSolution` of the *learned* policy (``V`` the learned table,
the households' own critic), which :func:`sampling.rollout` and
:func:`hypergradient.hypergradient` use unchanged. :func:`policy_hypergradient` evaluates exactly
(no sampling) what HPGD estimates from such a solution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.kernel import expected_next, kernel_parts, mix_kernel
from tabular_reference.tax_design.rewards import household_action_reward, rates
from tabular_reference.tax_design.solver import (
    FollowerSolution,
    check_temperature,
    check_theta,
    household_problem,
    leader_values,
    soft_policy_iteration,
    soft_q,
)

__all__ = ["LearningHouseholds", "learned_solution", "policy_hypergradient", "soft_vi_sweeps"]

_DT = torch.float64


def soft_vi_sweeps(econ: Economy, theta: Tensor, beta: Tensor, V: Tensor, n: int) -> Tensor:
    """``n`` synchronous soft value-iteration sweeps ``V <- T_theta(V)`` of ``V[R, C, S]``."""
    with torch.no_grad():
        hh = household_problem(econ, theta.detach().to(_DT), beta)
        beta3 = beta[:, None, None]
        for _ in range(n):
            V = beta3 * torch.logsumexp(soft_q(econ, hh, V) / beta3[..., None], dim=-1)
    return V


def learned_solution(
    econ: Economy, theta: Tensor, beta: Tensor | float, V: Tensor, iters: int = 0
) -> FollowerSolution:
    """The :class:`FollowerSolution` of the softmax policy of the table ``V[R, C, S]``:
    ``pi(f|s) = softmax(Q_V / beta)``, its ``P_pi``, ``V`` itself as the households' critic and
    the residual ``max|T(V) - V|`` per run; ``iters`` is recorded as the sweeps trained."""
    check_theta(theta)
    beta_t = check_temperature(beta, theta.shape[0])
    with torch.no_grad():
        hh = household_problem(econ, theta.detach().to(_DT), beta_t)
        beta4 = beta_t[:, None, None, None]
        Q = soft_q(econ, hh, V)
        TV = beta4[..., 0] * torch.logsumexp(Q / beta4, dim=-1)
        residual = (TV - V).abs().amax(dim=(1, 2))
        pi = torch.softmax(Q / beta4, dim=-1)
        P = mix_kernel(hh.parts, pi)
        return FollowerSolution(V, pi, hh.log_pa, P, hh.parts, residual, iters)


class LearningHouseholds:
    """Soft value-iteration households for ``n_runs`` runs and every household type.

    Args:
        econ: the economy; beta: household temperatures (scalar or ``[R]``).
        warm_start: keep the tables between calls (the default); ``False`` restarts every
            :meth:`advance` from ``V = 0``.

    ``V[R, C, S]`` is the stored table; ``updates`` counts the sweeps trained (all types at
    once: one sweep updates every (run, type) table)."""

    def __init__(
        self, econ: Economy, n_runs: int, beta: Tensor | float, warm_start: bool = True
    ) -> None:
        self.econ = econ
        self.beta = check_temperature(beta, n_runs)
        self.warm_start = bool(warm_start)
        self.V = self.initial_table(n_runs)
        self.updates = 0

    def initial_table(self, n_runs: int) -> Tensor:
        """The cold-start table ``V = 0``, ``[R, C, S]``."""
        return torch.zeros(n_runs, self.econ.n_contexts, self.econ.n_states, dtype=_DT)

    def set_table(self, V: Tensor) -> None:
        """Replace the stored table (e.g. by exact values at a nearby ``theta``)."""
        if V.shape != self.V.shape:
            raise ValueError(f"V must have shape {tuple(self.V.shape)}, got {tuple(V.shape)}")
        self.V = V.detach().to(_DT).clone()

    def advance(self, theta: Tensor, n: int | None, *, tol: float = 1e-11) -> FollowerSolution:
        """Train ``n >= 1`` sweeps at ``theta[R, 4]`` (``None``: solve exactly, tolerance
        ``tol``) and return the learned households' :class:`FollowerSolution`."""
        check_theta(theta)
        if theta.shape[0] != self.V.shape[0]:
            raise ValueError(f"theta has {theta.shape[0]} runs, the households {self.V.shape[0]}")
        V0 = self.V if self.warm_start else self.initial_table(self.V.shape[0])
        if n is None:
            sol = soft_policy_iteration(self.econ, theta, self.beta, V0=V0, tol=tol)
            self.V = sol.V
            return sol
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"follower sweeps n must be an integer >= 1 (or None), got {n!r}")
        econ = self.econ
        self.V = soft_vi_sweeps(econ, theta, self.beta, V0, n)
        self.updates += n
        return learned_solution(econ, theta, self.beta, self.V, n)


def policy_hypergradient(
    econ: Economy, theta: Tensor, beta: Tensor | float, follower: FollowerSolution
) -> Tensor:
    """What HPGD estimates from ``follower`` (policy ``pi``, critic ``V``), exactly: ``dF/dtheta``
    ``[R, 4]`` of the welfare of the policy ``pi_theta ∝ pi exp((Qt_theta - Qt_theta0) / beta)``,
    where ``Qt_theta`` evaluates under ``pi`` (transitions at ``theta0``) the follower's
    pseudo-reward ``R_a(theta) + gamma (K_theta V)[s, f(a)]`` (``docs/theory.md`` §2, §6). With
    the exact households (``V = V*``) it is the exact hypergradient (envelope theorem)."""
    beta_t = check_temperature(beta, theta.shape[0])
    b3 = beta_t[:, None, None]
    pi0, P0, V = follower.pi_f.detach(), follower.P.detach(), follower.V.detach()
    with torch.enable_grad():
        th = theta.detach().to(_DT).requires_grad_(True)
        x = rates(th)
        k = kernel_parts(econ, x[:, 0])
        ra = household_action_reward(econ, x[:, 1:])  # [R, C, A]
        d_ra = (ra - ra.detach()) / b3
        grouped = (follower.log_pa + d_ra)[..., econ.group_index]
        Lf = torch.logsumexp(grouped.masked_fill(~econ.group_mask, float("-inf")), dim=-1)
        log_pa = follower.log_pa + d_ra - Lf[..., econ.flow_a]  # [R, C, A]
        ra_f = torch.zeros(*ra.shape[:2], econ.n_flows, dtype=_DT).index_add(
            2, econ.flow_a, follower.log_pa.exp() * ra
        )  # sum_{a in f} pi(a|f) R_a
        c = ra_f[:, :, None, :] + econ.gamma * expected_next(k, V)  # [R, C, S, F]
        eye = torch.eye(P0.shape[-1], dtype=_DT)
        W = torch.linalg.solve(eye - econ.gamma * P0, (pi0 * c).sum(-1)[..., None])[..., 0]
        q = econ.gamma * (expected_next(k, V) + expected_next(follower.parts, W))  # R_a: in Lf
        logits = torch.log(pi0) + (q - q.detach()) / b3[..., None] + Lf[:, :, None, :]
        pi_f = torch.softmax(logits, dim=-1)
        P = mix_kernel(k, pi_f)
        Vbar = leader_values(econ, P, pi_f, log_pa, x[:, 0], x[:, 1:])
        F = (Vbar @ econ.mu0) @ econ.context_probs
        (grad,) = torch.autograd.grad(F.sum(), th)
    return grad
