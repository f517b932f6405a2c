"""Dense finite-MDP reference (the slow-but-obviously-right oracle), torch float64.

Implements, for a generic finite MDP with transition tensor ``P[s, a, s']`` and reward
``r[s, a]``, the objects of ``docs/theory.md``:

* §1, the entropy-regularised (optionally KL-to-a-prior) soft-optimal follower
  ``Q*(s,a) = r(s,a) + gamma * sum_s' P(s'|s,a) V*(s')``,
  ``V*(s) = beta * log sum_a prior(a|s) exp(Q*(s,a)/beta)``, ``pi* = prior * exp((Q* - V*)/beta)``,
  solved exactly by soft policy iteration (= Newton's method on the soft Bellman equation,
  each step one dense linear solve) to a stated sup-norm residual;
* §1, the leader's value ``f = mu0^T Vbar`` of the follower's policy;
* §2, the exact hypergradient ``dF/dx``, both in closed form (:func:`exact_hypergradient`,
  the adjoint of the implicit function ``V* = T_x(V*)``) and as an autograd-differentiable
  function (:func:`soft_value`, an implicit-function layer), so ``F(x)`` written in torch can
  simply be ``.backward()``-ed.

Conventions
-----------
* ``prior=None`` means the *uniform-without-normalisation* entropy convention used by the
  Four-Rooms experiment, ``V = beta * logsumexp(Q / beta)`` (no ``-beta log|A|`` term). Passing
  ``prior`` (rows summing to 1) gives the KL-regularised follower ``pi* ∝ prior exp(Q/beta)``.
* ``terminal_mask[s] = True`` makes ``s`` terminal: the episode ends there, its value is its
  (action-independent) reward, ``V(s) = mean_a r(s, a)`` with no entropy bonus and no
  continuation; the same holds for the leader, ``Vbar(s) = mean_a rbar(s, a)``. Rows of ``P``
  at terminal states are ignored; the policy reported there is the prior (or uniform).
* All functions accept float tensors and compute in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "InputJacobians",
    "SoftMDP",
    "SoftSolution",
    "discounted_occupancy",
    "exact_hypergradient",
    "leader_value",
    "policy_evaluation",
    "soft_bellman_operator",
    "soft_policy",
    "soft_solve",
    "soft_value",
]

_DT = torch.float64


@dataclass(frozen=True, eq=False)
class SoftMDP:
    """The follower's problem, one object for every function of the soft oracle.

    Transition ``P[s, a, s']`` and reward ``r[s, a]`` (any float dtype; the functions compute
    in float64), discount ``gamma`` in ``[0, 1)``, follower temperature ``beta > 0``, optional
    ``terminal_mask[S]`` and KL ``prior[S, A]`` (module docstring, *Conventions*) and ``tol``,
    the sup-norm soft Bellman residual ``max_s |T(V)(s) - V(s)|`` at which the solve stops.
    Only what varies per call (a value ``V``, the leader's ``rbar``/``mu0``, Jacobians, a warm
    start) is passed beside it. ``eq=False``: tensors have no single truth value."""

    P: Tensor
    r: Tensor
    gamma: float
    beta: float
    terminal_mask: Tensor | None = None
    prior: Tensor | None = None
    tol: float = 1e-12


class InputJacobians(NamedTuple):
    """How the leader's parameters ``x[K]`` move the bilevel problem's inputs:
    ``dr[S, A, K] = d r / d x``, ``drbar[S, A, K] = d rbar / d x`` and
    ``dP[S, A, S, K] = d P / d x``; any may be ``None`` (= zero), not all."""

    dr: Tensor | None = None
    drbar: Tensor | None = None
    dP: Tensor | None = None


@dataclass(frozen=True)
class SoftSolution:
    """Soft-optimal follower: ``Q[S, A]``, ``V[S]``, ``pi[S, A]``, the final sup-norm soft
    Bellman residual ``max_s |T(V)(s) - V(s)|`` and the number of Newton iterations."""

    Q: Tensor
    V: Tensor
    pi: Tensor
    residual: float
    iters: int


def _check(P: Tensor, r: Tensor, gamma: float, beta: float) -> None:
    if P.dim() != 3 or P.shape[0] != P.shape[2]:
        raise ValueError(f"P must have shape [S, A, S], got {tuple(P.shape)}")
    if r.shape != P.shape[:2]:
        raise ValueError(f"r must have shape [S, A] = {tuple(P.shape[:2])}, got {tuple(r.shape)}")
    if not 0.0 <= float(gamma) < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    if not float(beta) > 0.0:
        raise ValueError(f"beta (follower temperature) must be > 0, got {beta}")


def _terminal(terminal_mask: Tensor | None, S: int, device: torch.device) -> Tensor:
    if terminal_mask is None:
        return torch.zeros(S, dtype=torch.bool, device=device)
    m = torch.as_tensor(terminal_mask, dtype=torch.bool, device=device)
    if m.shape != (S,):
        raise ValueError(f"terminal_mask must have shape [{S}], got {tuple(m.shape)}")
    return m


def _log_prior(prior: Tensor | None, like: Tensor) -> Tensor | None:
    if prior is None:
        return None
    prior = prior.to(_DT)
    if prior.shape != like.shape:
        raise ValueError(f"prior must have shape {tuple(like.shape)}, got {tuple(prior.shape)}")
    return torch.log(prior)


def soft_policy(
    Q: Tensor, beta: float, prior: Tensor | None = None, terminal_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``docs/theory.md`` §1: ``V(s) = beta log sum_a prior(a|s) exp(Q(s,a)/beta)`` and
    ``pi(a|s) = prior(a|s) exp((Q(s,a) - V(s))/beta)``; terminal states get ``V = mean_a Q``
    and the prior (uniform) policy. Returns ``(V[S], pi[S, A])``."""
    logits = Q / beta
    lp = _log_prior(prior, Q)
    if lp is not None:
        logits = logits + lp
    V = beta * torch.logsumexp(logits, dim=-1)
    pi = torch.softmax(logits, dim=-1)
    if terminal_mask is not None and bool(terminal_mask.any()):
        A = Q.shape[1]
        default = prior.to(_DT) if prior is not None else torch.full_like(Q, 1.0 / A)
        V = torch.where(terminal_mask, Q.mean(-1), V)
        pi = torch.where(terminal_mask[:, None], default, pi)
    return V, pi


def soft_bellman_operator(problem: SoftMDP, V: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One application of the soft Bellman operator (``docs/theory.md`` §1) of ``problem``
    (its ``tol`` is not used).

    Returns ``(T(V)[S], Q[S, A], pi[S, A])`` with ``Q = r + gamma P V`` (``Q = r`` at terminal
    states, whose continuation is ignored)."""
    P = problem.P
    term = _terminal(problem.terminal_mask, P.shape[0], P.device)
    Q = _lookahead(P, problem.r, V, problem.gamma, term)
    TV, pi = soft_policy(Q, problem.beta, problem.prior, term)
    return TV, Q, pi


def _lookahead(P: Tensor, r: Tensor, V: Tensor, gamma: float, term: Tensor) -> Tensor:
    """``Q = r + gamma P V`` (``Q = r`` at terminal states)."""
    Q = r + gamma * torch.einsum("sat,t->sa", P, V)
    return torch.where(term[:, None], r, Q)


def _policy_matrix(P: Tensor, pi: Tensor, term: Tensor) -> Tensor:
    """``P_pi[s, s'] = sum_a pi(a|s) P(s'|s,a)``, with zero rows at terminal states."""
    Ppi = torch.einsum("sa,sat->st", pi, P)
    return torch.where(term[:, None], torch.zeros_like(Ppi), Ppi)


def _evaluation_matrix(P: Tensor, pi: Tensor, gamma: float, term: Tensor) -> Tensor:
    """``I - gamma P_pi`` (float64)."""
    S = P.shape[0]
    return torch.eye(S, dtype=_DT, device=P.device) - gamma * _policy_matrix(P.to(_DT), pi, term)


def policy_evaluation(
    P: Tensor,
    pi: Tensor,
    reward: Tensor,
    gamma: float,
    terminal_mask: Tensor | None = None,
) -> Tensor:
    """Exact value of policy ``pi`` for the state reward ``reward[S]`` (already averaged over
    actions under ``pi``): ``V = (I - gamma P_pi)^{-1} reward`` with terminal rows
    ``V(s) = reward(s)``. Differentiable by autograd."""
    term = _terminal(terminal_mask, P.shape[0], P.device)
    return torch.linalg.solve(_evaluation_matrix(P, pi, gamma, term), reward.to(_DT))


def soft_solve(problem: SoftMDP, V0: Tensor | None = None, max_iters: int = 500) -> SoftSolution:
    """Exact soft-optimal follower (``docs/theory.md`` §1) of ``problem`` by soft policy
    iteration, from ``V0`` (zeros if ``None``).

    Each iteration is a Newton step on the soft Bellman equation ``V = T(V)``: with
    ``pi = softmax`` of the current ``Q``, solve the entropy-regularised evaluation
    ``V <- (I - gamma P_pi)^{-1} sum_a pi (r - beta log(pi/prior))``. Stops when the sup-norm
    residual ``max_s |T(V) - V|`` is ``<= problem.tol`` (raises ``RuntimeError`` if
    ``max_iters`` is exhausted). No gradients are tracked; use :func:`soft_value` for autograd."""
    P, r, gamma, beta, tol = problem.P, problem.r, problem.gamma, problem.beta, problem.tol
    _check(P, r, gamma, beta)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    with torch.no_grad():
        P = P.to(_DT)
        r = r.to(_DT)
        S = r.shape[0]
        term = _terminal(problem.terminal_mask, S, P.device)
        lp = _log_prior(problem.prior, r)
        # the float64 problem with its mask resolved once, for every sweep below
        dense = replace(problem, P=P, r=r, terminal_mask=term)
        V = torch.zeros(S, dtype=_DT) if V0 is None else V0.to(_DT).clone()
        for it in range(max_iters + 1):
            TV, Q, pi = soft_bellman_operator(dense, V)
            res = float((TV - V).abs().max())
            if res <= tol:
                return SoftSolution(Q=Q, V=TV, pi=pi, residual=res, iters=it)
            if it == max_iters:
                break
            logratio = torch.log(pi.clamp_min(1e-300))
            if lp is not None:
                logratio = logratio - lp
            # pi log pi -> 0 where pi == 0
            ent = torch.where(pi > 0, pi * logratio, torch.zeros_like(pi)).sum(-1)
            rhs = (pi * r).sum(-1) - beta * ent
            rhs = torch.where(term, r.mean(-1), rhs)
            V = torch.linalg.solve(_evaluation_matrix(P, pi, gamma, term), rhs)
        raise RuntimeError(
            f"soft_solve did not reach tol={tol} in max_iters={max_iters} (residual {res:.3e}); "
            "increase max_iters or tol"
        )


def discounted_occupancy(
    P: Tensor, pi: Tensor, mu0: Tensor, gamma: float, terminal_mask: Tensor | None = None
) -> Tensor:
    """Discounted state occupancy ``mu = (I - gamma P_pi)^{-T} mu0`` (terminal states count
    the discounted probability of being reached; they have no successors)."""
    term = _terminal(terminal_mask, P.shape[0], P.device)
    return torch.linalg.solve(_evaluation_matrix(P, pi, gamma, term).T, mu0.to(_DT))


def leader_value(
    P: Tensor,
    pi: Tensor,
    rbar: Tensor,
    gamma: float,
    mu0: Tensor,
    terminal_mask: Tensor | None = None,
) -> Tensor:
    """Leader's objective ``f = mu0^T Vbar`` (``docs/theory.md`` §1) for the follower policy ``pi``:
    ``Vbar = (I - gamma P_pi)^{-1} sum_a pi rbar`` (``Vbar(s) = mean_a rbar(s,a)`` at terminal
    states). Differentiable by autograd in ``P, pi, rbar``."""
    S = P.shape[0]
    term = _terminal(terminal_mask, S, P.device)
    rb = torch.where(term, rbar.to(_DT).mean(-1), (pi * rbar.to(_DT)).sum(-1))
    return mu0.to(_DT) @ policy_evaluation(P, pi, rb, gamma, term)


class _SoftValueFn(torch.autograd.Function):
    """Implicit-function layer ``(P, r) -> V*`` with the adjoint backward of ``docs/theory.md`` §2:
    ``dV* = (I - gamma P_pi)^{-1} sum_a pi (dr + gamma dP V*)`` (the entropy term is stationary
    at the optimum), so ``grad_r = pi * w``, ``grad_P = gamma pi w V*^T`` with
    ``w = (I - gamma P_pi)^{-T} grad_V``."""

    @staticmethod
    def forward(ctx, P, r, gamma, beta, prior, term, tol, V0):  # type: ignore[override]
        # P and r are arguments of their own (not inside a SoftMDP) so that autograd sees them
        sol = soft_solve(SoftMDP(P.detach(), r.detach(), gamma, beta, term, prior, tol), V0)
        ctx.save_for_backward(P.detach().to(_DT), sol.pi, sol.V, term)
        ctx.gamma = gamma
        return sol.V

    @staticmethod
    def backward(ctx, gV):  # type: ignore[override]
        P, pi, V, term = ctx.saved_tensors
        A = pi.shape[1]
        gamma = ctx.gamma
        w = torch.linalg.solve(_evaluation_matrix(P, pi, gamma, term).T, gV.to(_DT))
        act = torch.where(term[:, None], torch.full_like(pi, 1.0 / A), pi)
        g_r = act * w[:, None]
        g_P = gamma * (pi * w[:, None] * (~term)[:, None])[:, :, None] * V[None, None, :]
        return g_P, g_r, None, None, None, None, None, None


def soft_value(problem: SoftMDP, V0: Tensor | None = None) -> Tensor:
    """Differentiable soft-optimal value ``V*(P, r)`` of ``problem`` (implicit-function layer;
    gradients flow to ``problem.P`` and ``problem.r``), solved from ``V0``.

    Combine with ``Q = r + gamma P V`` and :func:`soft_policy` to get a differentiable
    ``pi*``; e.g. the leader objective ``F(x) = leader_value(P, pi*(x), rbar(x), ...)`` then
    backpropagates the exact hypergradient of ``docs/theory.md`` §2."""
    P, r, gamma, beta = problem.P, problem.r, problem.gamma, problem.beta
    _check(P, r, gamma, beta)
    S = P.shape[0]
    term = _terminal(problem.terminal_mask, S, P.device)
    return _SoftValueFn.apply(
        P.to(_DT), r.to(_DT), gamma, beta, problem.prior, term, problem.tol, V0
    )


def soft_best_response(problem: SoftMDP) -> Tensor:
    """Differentiable ``pi*(P, r)`` (``docs/theory.md`` §1) of ``problem``, built on
    :func:`soft_value`: ``pi* = prior exp((Q* - V*)/beta)`` with ``Q* = r + gamma P V*``."""
    P, r, gamma = problem.P, problem.r, problem.gamma
    term = _terminal(problem.terminal_mask, P.shape[0], P.device)
    V = soft_value(replace(problem, terminal_mask=term))
    Q = _lookahead(P.to(_DT), r.to(_DT), V, gamma, term)
    return soft_policy(Q, problem.beta, problem.prior, term)[1]


def exact_hypergradient(
    problem: SoftMDP, rbar: Tensor, mu0: Tensor, jac: InputJacobians
) -> tuple[Tensor, Tensor]:
    """Closed-form exact hypergradient (``docs/theory.md`` §2) of the leader's reward
    ``rbar[S, A]`` from the initial distribution ``mu0[S]``, with the follower ``problem``,
    by the adjoint method.

    Given the Jacobians ``jac`` (``dr``, ``drbar``, ``dP``; ``K`` = number of leader
    parameters), returns ``(F, dF/dx[K])`` for ``F = mu0^T Vbar`` with

    ``dF = sum_{s,a} mu(s) pi(a|s) [ drbar(s,a) + (1/beta) (dQ*(s,a) - dV*(s)) Abar(s,a)
    + gamma sum_s' dP(s'|s,a) Vbar(s') ]``,

    ``mu`` the discounted occupancy from ``mu0``, ``Abar = Qbar - Vbar`` the leader's
    advantage under ``pi*`` and ``dQ*, dV*`` the follower's value derivatives
    (``dV* = (I - gamma P_pi)^{-1} sum_a pi (dr + gamma dP V*)``,
    ``dQ* = dr + gamma (dP V* + P dV*)``).
    Terminal states contribute ``mu(s) mean_a drbar(s, a)``."""
    sol = soft_solve(problem)
    P, r, gamma, beta = problem.P.to(_DT), problem.r, problem.gamma, problem.beta
    S, A = r.shape
    term = _terminal(problem.terminal_mask, S, P.device)
    pi, V = sol.pi, sol.V
    dr, drbar, dP = jac
    ks = [t.shape[-1] for t in (dr, drbar, dP) if t is not None]
    if not ks:
        raise ValueError("give at least one of dr, drbar, dP")
    K = ks[0]
    z = torch.zeros(S, A, K, dtype=_DT)
    dr = z if dr is None else dr.to(_DT)
    drbar = z if drbar is None else drbar.to(_DT)
    dPV = z if dP is None else torch.einsum("satk,t->sak", dP.to(_DT), V)
    nt = (~term).to(_DT)
    # leader values
    rb = torch.where(term, rbar.to(_DT).mean(-1), (pi * rbar.to(_DT)).sum(-1))
    Vbar = policy_evaluation(P, pi, rb, gamma, term)
    Qbar = rbar.to(_DT) + gamma * torch.einsum("sat,t->sa", P, Vbar)
    Abar = (Qbar - Vbar[:, None]) * nt[:, None]
    mu = discounted_occupancy(P, pi, mu0, gamma, term)
    F = mu0.to(_DT) @ Vbar
    # follower value derivatives
    drhs = torch.einsum("sa,sak->sk", pi, dr + gamma * dPV) * nt[:, None]
    drhs = drhs + term.to(_DT)[:, None] * dr.mean(1)
    dV = torch.linalg.solve(_evaluation_matrix(P, pi, gamma, term), drhs)  # [S, K]
    dQ = dr + gamma * (dPV + torch.einsum("sat,tk->sak", P, dV))
    dA = (dQ - dV[:, None, :]) * nt[:, None, None]
    w = mu[:, None] * pi * nt[:, None]  # visitation of non-terminal (s, a)
    g = torch.einsum("sa,sak->k", w, drbar + dA * Abar[:, :, None] / beta)
    g = g + gamma * torch.einsum(
        "sa,sak->k",
        w,
        torch.zeros_like(dr) if dP is None else torch.einsum("satk,t->sak", dP.to(_DT), Vbar),
    )
    g = g + torch.einsum("s,sk->k", mu * term.to(_DT), drbar.mean(1))
    return F, g
