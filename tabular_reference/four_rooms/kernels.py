"""Numba kernels for Four-Rooms (``docs/theory.md`` §5): exact soft follower by banded
Newton (soft policy iteration), exact leader value, exact hypergradient by the adjoint, and the
trajectory sampler. All loops are over a batch of independent runs ``R``.

Conventions (see ``docs/four_rooms.md``): state-based rewards. In a non-goal cell ``s`` the
follower collects ``pen(s)`` and the leader ``1[s == target]``; the goal is terminal with
follower value 1 and leader value ``vgoal`` (= ``-budget_cost * budget``). Let
``M = I - gamma P_pi`` over all 104 cells with the goal row replaced by the identity row.

Dynamics are arguments, not constants: the planning model enters as ``p_other`` and
``p_diff = p_intended - p_other`` (``P(d | a) = p_other + p_diff [d == a]``) of a
:class:`~.kernel_args.FollowerModel`, the sampling model of the samplers as
``p_intended, p_other`` of a :class:`~.kernel_args.SamplerModel`
(``tabular_reference.four_rooms.dynamics``). The banded LU is :mod:`.banded`.

* Follower (``docs/theory.md`` §1): ``Q(s,a) = pen(s) + gamma sum_d P(d|a) V(nbr(s,d))``,
  ``V(s) = beta logsumexp_a(Q(s,a)/beta)``, solved by Newton steps
  ``V <- M(pi)^{-1} (pen - beta sum_a pi log pi)`` until ``max|T(V) - V| <= tol``.
* Leader (§1): ``Vbar = M^{-1} rbar``, ``F_xi = Vbar(start)``.
* Hypergradient (§2, state-based rewards): ``mu = M^{-T} e_start`` (discounted occupancy;
  ``mu(goal)`` = discounted probability of reaching the goal), ``Abar(s,a) = gamma p_diff
  (Vbar(nbr(s,a)) - sum_a' pi(a'|s) Vbar(nbr(s,a')))``, ``nu(s') = sum_{s,a} mu(s) pi(a|s)
  Abar(s,a) P(s'|s,a)``, ``rho = M^{-T} nu`` (``nu(goal) = 0``). Then
  ``dF_xi/dpen(s) = (gamma/beta) rho(s)`` (non-goal ``s``) and ``dF_xi/dvgoal = mu(goal)``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tabular_reference.four_rooms.banded import band_lu, band_solve, band_solve_t
from tabular_reference.four_rooms.kernel_args import FactorCache, NewtonWork, WarmStart


@njit(cache=True, nogil=True, inline="always")
def continuation(model, s, V, c):
    """``c[a] = gamma sum_d P(d|a) V(nbr(s, d))`` for the four actions; returns the first
    ``argmax_a c[a]``."""
    n0, n1, n2, n3 = model.neighbours[s]
    tot = 0.0
    for j in (n0, n1, n2, n3):
        tot += V[j]
    m = -1e300
    best = 0
    for a, j in enumerate((n0, n1, n2, n3)):
        c[a] = model.gamma * (model.p_other * tot + model.p_diff * V[j])
        if c[a] > m:
            m = c[a]
            best = a
    return best


@njit(cache=True, nogil=True, inline="always")
def soft_q(model, penalty, s, V, q):
    """``q[a] = Q(s, a) = pen(s) + gamma sum_d P(d|a) V(nbr(s, d))`` for the four actions;
    returns ``max_a q[a]``."""
    continuation(model, s, V, q)
    m = -1e300
    for a in range(4):
        q[a] = penalty[s] + q[a]
        m = max(m, q[a])
    return m


@njit(cache=True, nogil=True)
def soft_q_policy(model, penalty, goal, V, policy, neg_entropy):
    """One soft Bellman application: fills ``policy`` and ``neg_entropy[s] = sum_a pi log pi``
    and returns ``max_s |T(V)(s) - V(s)|``.

    ``pen(s)`` is common to the four actions of ``s`` and cancels in the softmax, so ``pi`` is
    formed from the continuation values ``c_a = gamma sum_d P(d|a) V(nbr(s, d))`` alone and
    depends on ``V`` only (not on the leader's rewards): ``pi_a = e^{y_a} / z`` with
    ``y_a = (c_a - max c) / beta``, ``T(V)(s) = pen(s) + max c + beta log z`` and
    ``sum_a pi log pi = sum_a pi y_a - log z`` (no logarithm per action)."""
    beta = model.temperature
    res = 0.0
    c = np.empty(4)
    for s in range(V.shape[0]):
        if s == goal:
            policy[s, :] = 0.25
            neg_entropy[s] = 0.0
            res = max(res, abs(1.0 - V[s]))
            continue
        best = continuation(model, s, V, c)
        m = c[best]
        z = 0.0
        w = 0.0
        for a in range(4):
            if a == best:  # y = 0: e^0 = 1 exactly, and it adds nothing to w
                policy[s, a] = 1.0
                z += 1.0
                continue
            y = (c[a] - m) / beta
            e = math.exp(y)
            policy[s, a] = e
            z += e
            w += e * y
        inv = 1.0 / z
        for a in range(4):
            policy[s, a] *= inv
        log_z = math.log(z)
        neg_entropy[s] = w * inv - log_z
        backup = penalty[s] + m + beta * log_z
        res = max(res, abs(backup - V[s]))
    return res


@njit(cache=True, nogil=True)
def build_m(model, policy, goal, factors):
    """Band storage of ``M = I - gamma P_pi`` (identity row at the goal), factorised in place
    into ``factors``."""
    n = policy.shape[0]
    b, neighbours = model.bandwidth, model.neighbours
    gamma, p_other, p_diff = model.gamma, model.p_other, model.p_diff
    factors[:, :] = 0.0
    for s in range(n):
        factors[s, b] = 1.0
        if s == goal:
            continue
        for d in range(4):
            j = neighbours[s, d]
            factors[s, j - s + b] -= gamma * (p_other + p_diff * policy[s, d])
    band_lu(factors, n, b)


@njit(cache=True, nogil=True, inline="always")
def _newton_rhs(penalty, goal, temperature, neg_entropy, rhs):
    """Right-hand side of a Newton step: ``pen - beta sum_a pi log pi`` (1 at the goal)."""
    for s in range(penalty.shape[0]):
        rhs[s] = 1.0 if s == goal else penalty[s] - temperature * neg_entropy[s]


@njit(cache=True, nogil=True)
def soft_newton(model, newton, penalty, goal, V, work, warm):
    """Soft-optimal follower for one context, warm-started from ``V`` (updated in place).

    Returns ``(steps, residual)``; ``work.policy`` holds the soft-optimal policy of the
    returned ``V``, ``work.neg_entropy`` its ``sum_a pi log pi`` and ``work.factors`` the
    factorised ``M(pi)`` (:class:`~.kernel_args.NewtonWork`). ``steps = -1`` means not
    converged within ``newton.max_steps``.

    ``warm`` (:class:`~.kernel_args.WarmStart`): when ``warm.valid``, its factors and
    entropies are those of the policy of the warm start ``V`` itself (kept from the solve that
    produced it). The policy of ``V`` does not depend on ``pen`` (:func:`soft_q_policy`), so
    the first Newton step at the new ``pen`` is one solve with those factors: no Bellman pass
    and no factorisation."""
    n = V.shape[0]
    steps = 0
    if warm.valid and newton.max_steps > 0:
        _newton_rhs(penalty, goal, model.temperature, warm.neg_entropy, work.rhs)
        band_solve(warm.factors, n, model.bandwidth, work.rhs)
        V[:] = work.rhs
        steps = 1
    while True:
        res = soft_q_policy(model, penalty, goal, V, work.policy, work.neg_entropy)
        if res <= newton.tol:
            break
        if steps >= newton.max_steps:
            steps = -1
            break
        build_m(model, work.policy, goal, work.factors)
        _newton_rhs(penalty, goal, model.temperature, work.neg_entropy, work.rhs)
        band_solve(work.factors, n, model.bandwidth, work.rhs)
        V[:] = work.rhs
        steps += 1
    build_m(model, work.policy, goal, work.factors)
    return steps, res


@njit(cache=True, nogil=True)
def leader_and_grad(model, policy, goal, goal_value, factors, want_grad, grad_penalty):
    """Exact leader value ``F_xi = Vbar(start)`` and (if ``want_grad``)
    ``grad_penalty = dF/dpen`` in place; returns ``(F, mu(goal))`` (``mu(goal) = dF/dvgoal``).
    ``factors`` = factorised ``M(pi)``."""
    n = policy.shape[0]
    b = model.bandwidth
    neighbours = model.neighbours
    vbar = np.zeros(n)
    vbar[model.target] = 1.0
    vbar[goal] = goal_value
    band_solve(factors, n, b, vbar)
    F = vbar[model.start]
    if not want_grad:
        return F, 0.0
    mu = np.zeros(n)
    mu[model.start] = 1.0
    band_solve_t(factors, n, b, mu)
    mu_goal = mu[goal]
    nu = np.zeros(n)
    for s in range(n):
        if s == goal:
            continue
        w = 0.0
        for a in range(4):
            w += policy[s, a] * vbar[neighbours[s, a]]
        for a in range(4):
            abar = model.gamma * model.p_diff * (vbar[neighbours[s, a]] - w)
            nu[neighbours[s, a]] += mu[s] * model.p_diff * policy[s, a] * abar
    nu[goal] = 0.0
    band_solve_t(factors, n, b, nu)
    for s in range(n):
        grad_penalty[s] = 0.0 if s == goal else model.gamma / model.temperature * nu[s]
    return F, mu_goal


@njit(cache=True, nogil=True)
def write_leader_values(model, contexts, r, factors, want_grad, out):
    """Run ``r``'s leader value ``out.value[r]`` and, with ``want_grad``, its gradients
    ``out.grad_penalty[r]``, ``out.grad_goal_value[r]`` at its policy ``out.policy[r]``
    (:func:`leader_and_grad`; ``factors`` = that policy's factorised ``M(pi)``)."""
    out.value[r], out.grad_goal_value[r] = leader_and_grad(
        model,
        out.policy[r],
        contexts.goal[r],
        contexts.goal_value[r],
        factors,
        want_grad,
        out.grad_penalty[r],
    )


@njit(cache=True, nogil=True)
def solve_batch(model, newton, contexts, V, want_grad, out):
    """Batched follower solve + leader value (+ exact gradient) over runs ``r`` of
    ``contexts`` (:class:`~.kernel_args.Contexts`), warm-started from ``V[R, S]`` (in/out);
    fills ``out`` (:class:`~.kernel_args.SolveOutputs`). (:func:`solve_batch_cached` with one
    never-valid slot that is only read: no factors kept.)"""
    R, n = contexts.penalty.shape
    unused = FactorCache(
        np.zeros(R, dtype=np.int64),
        np.empty((1, n, 2 * model.bandwidth + 1)),
        np.empty((1, n)),
        np.zeros(1, dtype=np.bool_),
    )
    solve_batch_cached(model, newton, contexts, V, want_grad, out, unused, False)


@njit(cache=True, nogil=True)
def solve_batch_cached(model, newton, contexts, V, want_grad, out, cache, store):
    """:func:`solve_batch` with a factorisation cache per warm start
    (:class:`~.kernel_args.FactorCache`): row ``r`` warm-starts from ``V[r]``, the stored values
    of slot ``cache.slot[r]``, whose factors are valid when ``cache.valid[slot]``
    (:func:`soft_newton` ``warm``). With ``store`` the slot is refactored in place and holds
    the returned ``V[r]``'s factors afterwards (the caller stores ``V[r]``); without it the
    slot is only read (a solve from a stored warm start that must not replace it)."""
    R, n = contexts.penalty.shape
    factors = np.empty((n, 2 * model.bandwidth + 1))
    rhs = np.empty(n)
    neg_entropy = np.empty(n)
    for r in range(R):
        k = cache.slot[r]
        # with store, the cached factors are read by the first step before anything overwrites
        # them (the first factorisation comes after it)
        work = NewtonWork(
            out.policy[r],
            cache.factors[k] if store else factors,
            cache.neg_entropy[k] if store else neg_entropy,
            rhs,
        )
        warm = WarmStart(cache.factors[k], cache.neg_entropy[k], cache.valid[k])
        goal = contexts.goal[r]
        out.newton_steps[r], out.residual[r] = soft_newton(
            model, newton, contexts.penalty[r], goal, V[r], work, warm
        )
        if store:
            cache.valid[k] = out.newton_steps[r] >= 0
        write_leader_values(model, contexts, r, work.factors, want_grad, out)


@njit(cache=True, nogil=True)
def seed_rng(seed):
    """Seed numba's (per-thread) generator used by :func:`sample_with_actions`."""
    np.random.seed(seed)


@njit(cache=True, nogil=True)
def sample_with_actions(sampler, followers, out):
    """Roll out ``sampler.n_envs`` environments for ``sampler.steps`` steps each per run of
    ``followers`` (auto-reset at the goal or after ``max_len`` steps), concatenated along time,
    into ``out`` (:class:`~.kernel_args.LibrarySamples`): ``states[R, n_envs*steps]`` (cell
    index; the goal appears as the last state of a successful episode), ``actions``,
    ``leader_rewards`` of each state (1 at the target, ``goal_value`` at the goal) and
    ``episode_start`` marking the first state of every episode (each env starts a new one). A
    step draws the action ``a ~ pi(.|s)`` and then the slip (intended direction w.p.
    ``p_intended``, each other w.p. ``p_other``).

    One uniform ``u`` per step serves both draws: ``a`` is the bin of ``u`` in the cumulative
    ``pi(.|s)`` and, given ``a``, ``(u - lo_a) / pi(a|s)`` is again uniform on [0, 1) and picks
    the slip (tested against the exact frequencies)."""
    # read the arrays out of the tuples once, not at every step
    policy, goals, goal_values = followers
    states, actions, leader_rewards, episode_start = out
    neighbours, start, target = sampler.neighbours, sampler.start, sampler.target
    p_intended, p_other, max_len = sampler.p_intended, sampler.p_other, sampler.max_len
    for r in range(policy.shape[0]):
        t = 0
        goal = goals[r]
        goal_value = goal_values[r]
        for _e in range(sampler.n_envs):
            s = start
            k = 0
            for _i in range(sampler.steps):
                states[r, t] = s
                episode_start[r, t] = k == 0
                leader_rewards[r, t] = goal_value if s == goal else (1.0 if s == target else 0.0)
                u = np.random.random()
                lo = 0.0
                a = 3
                for b in range(3):
                    p = policy[r, s, b]
                    if u < lo + p:
                        a = b
                        break
                    lo += p
                actions[r, t] = a
                t += 1
                k += 1
                if s == goal or k >= max_len:
                    s = start
                    k = 0
                    continue
                p = policy[r, s, a]
                v = (u - lo) / p if p > 0.0 else 0.0
                if v < p_intended:
                    d = a
                else:
                    j = min(int((v - p_intended) / p_other), 2)  # the j-th of the other three
                    d = j if j < a else j + 1
                s = neighbours[s, d]


@njit(cache=True, nogil=True)
def published_q_iteration(model, penalty, goal, n_improve, n_sweeps, policy, Q):
    """The published code's follower solve: from ``Q = 0``, ``n_improve`` policy improvements
    ``pi = softmax(Q / beta)``, each followed by ``n_sweeps`` synchronous sweeps of
    ``Q(s,a) = pen(s) + beta H(pi(.|s)) + gamma sum_d P(d|a) sum_a' pi(a'|nbr(s,d)) Q(nbr(s,d),a')``;
    the goal is terminal, ``Q(goal, a) = 1 + beta H(pi(.|goal))``. Returns the final
    ``pi = softmax(Q / beta)`` in ``policy``; not the exact soft-optimal policy (a residual of
    order ``gamma^(n_improve n_sweeps)`` of the values, amplified by ``1 / beta`` in the
    softmax)."""
    n = penalty.shape[0]
    beta, gamma, neighbours = model.temperature, model.gamma, model.neighbours
    pi = policy
    Q[:, :] = 0.0
    H = np.empty(n)
    W = np.empty(n)
    Qn = np.empty((n, 4))
    for _it in range(n_improve + 1):
        for s in range(n):
            m = max(max(Q[s, 0], Q[s, 1]), max(Q[s, 2], Q[s, 3]))
            z = 0.0
            for a in range(4):
                e = math.exp((Q[s, a] - m) / beta)
                pi[s, a] = e
                z += e
            h = 0.0
            for a in range(4):
                p = pi[s, a] / z
                pi[s, a] = p
                if p > 0.0:
                    h -= p * math.log(p)
            H[s] = h
        if _it == n_improve:
            break
        for _sw in range(n_sweeps):
            for s in range(n):
                W[s] = (
                    pi[s, 0] * Q[s, 0]
                    + pi[s, 1] * Q[s, 1]
                    + pi[s, 2] * Q[s, 2]
                    + pi[s, 3] * Q[s, 3]
                )
            for s in range(n):
                if s == goal:
                    for a in range(4):
                        Qn[s, a] = 1.0 + beta * H[s]
                    continue
                nb = neighbours[s]
                tot = W[nb[0]] + W[nb[1]] + W[nb[2]] + W[nb[3]]
                base = penalty[s] + beta * H[s] + gamma * model.p_other * tot
                for a in range(4):
                    Qn[s, a] = base + gamma * model.p_diff * W[nb[a]]
            Q[:, :] = Qn


@njit(cache=True, nogil=True)
def solve_batch_published(model, contexts, n_improve, n_sweeps, want_grad, out):
    """Like :func:`solve_batch` with the published follower solve
    (:func:`published_q_iteration`) instead of the exact Newton solve; the leader value (and,
    if ``want_grad``, the adjoint gradient formula) are then evaluated at that policy
    (``out.newton_steps`` and ``out.residual`` are not written)."""
    R, n = contexts.penalty.shape
    factors = np.empty((n, 2 * model.bandwidth + 1))
    Q = np.empty((n, 4))
    for r in range(R):
        goal = contexts.goal[r]
        policy = out.policy[r]
        published_q_iteration(model, contexts.penalty[r], goal, n_improve, n_sweeps, policy, Q)
        build_m(model, policy, goal, factors)
        write_leader_values(model, contexts, r, factors, want_grad, out)
