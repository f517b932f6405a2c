"""Numba kernels for Four-Rooms (``docs/theory.md`` §5): exact soft follower by banded
Newton (soft policy iteration), exact leader value, exact hypergradient by the adjoint, and the
trajectory sampler. All loops are over a batch of independent runs ``R``.

Conventions (see ``docs/four_rooms.md``): state-based rewards. In a non-goal cell ``s`` the
follower collects ``pen(s)`` and the leader ``1[s == target]``; the goal is terminal with
follower value 1 and leader value ``vgoal`` (= ``-budget_cost * budget``). Let
``M = I - gamma P_pi`` over all 104 cells with the goal row replaced by the identity row.

Dynamics are arguments, not constants: the planning model enters as ``p_oth`` and
``p_diff = p_intended - p_oth`` (``P(d | a) = p_oth + p_diff [d == a]``), the sampling model of the
samplers as ``p_int, p_oth`` (``tabular_reference.four_rooms.dynamics``).

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

from tabular_reference.four_rooms.env import FOUR_ROOMS

# the map's bandwidth, a compile-time constant of the fast LU path (any other ``b`` takes the
# generic loop)
BAND = int(FOUR_ROOMS.bandwidth)


@njit(cache=True, nogil=True)
def band_lu(AB, n, b):
    """In-place LU (no pivoting; ``M`` is strictly diagonally dominant) of the band matrix
    stored as ``AB[i, j - i + b] = M[i, j]``; L's multipliers (column entry times the
    pivot's reciprocal) overwrite the lower band.

    For the map's own bandwidth (:data:`BAND`) the row updates run with a compile-time trip
    count (unrolled and vectorised by LLVM) after the step's multipliers are computed together:
    the same operations on the same operands in the same order per entry, so the factors are
    bit-identical to the generic loop, ~25-40% faster (``bench/four_rooms_speed.py``)."""
    if b == BAND:
        _band_lu_fixed(AB, n)
        return
    for k in range(n):
        inv = 1.0 / AB[k, b]
        hi = min(n, k + b + 1)
        for i in range(k + 1, hi):
            l = AB[i, k - i + b] * inv
            if l != 0.0:
                AB[i, k - i + b] = l
                for j in range(k + 1, hi):
                    AB[i, j - i + b] -= l * AB[k, j - k + b]


@njit(cache=True, nogil=True)
def _band_lu_fixed(AB, n):
    """:func:`band_lu` for ``b = BAND`` (a compile-time constant)."""
    ls = np.empty(BAND)
    for k in range(n):
        rk = AB[k]
        inv = 1.0 / rk[BAND]
        nr = min(n, k + BAND + 1) - k - 1
        for r in range(nr):
            ls[r] = AB[k + 1 + r, BAND - 1 - r] * inv
        if nr == BAND:
            for r in range(BAND):
                _row_update(AB[k + 1 + r], rk, ls[r], BAND - 1 - r, BAND)
        else:
            for r in range(nr):
                _row_update(AB[k + 1 + r], rk, ls[r], BAND - 1 - r, nr)


@njit(cache=True, nogil=True, inline="always")
def _row_update(ri, rk, l, off, m):
    """Row ``i`` of step ``k``: store the multiplier, subtract ``l`` x (U row ``k``)."""
    if l != 0.0:
        ri[off] = l
        for j in range(1, m + 1):
            ri[off + j] -= l * rk[BAND + j]


@njit(cache=True, nogil=True)
def band_solve(AB, n, b, x):
    """Solve ``M x = rhs`` in place with the factors of :func:`band_lu` (for ``b = BAND`` the
    interior rows run a compile-time trip count; same operations in the same order)."""
    if b == BAND and n > 2 * BAND:
        _band_solve_fixed(AB, n, x)
        return
    for i in range(n):
        s = x[i]
        for k in range(max(0, i - b), i):
            s -= AB[i, k - i + b] * x[k]
        x[i] = s
    for i in range(n - 1, -1, -1):
        s = x[i]
        for j in range(i + 1, min(n, i + b + 1)):
            s -= AB[i, j - i + b] * x[j]
        x[i] = s / AB[i, b]


@njit(cache=True, nogil=True)
def _band_solve_fixed(AB, n, x):
    """:func:`band_solve` for ``b = BAND``."""
    for i in range(BAND):
        s = x[i]
        for k in range(i):
            s -= AB[i, k - i + BAND] * x[k]
        x[i] = s
    for i in range(BAND, n):
        s = x[i]
        ri = AB[i]
        for m in range(BAND):
            s -= ri[m] * x[i - BAND + m]
        x[i] = s
    for i in range(n - 1, n - 1 - BAND, -1):
        s = x[i]
        for j in range(i + 1, n):
            s -= AB[i, j - i + BAND] * x[j]
        x[i] = s / AB[i, BAND]
    for i in range(n - 1 - BAND, -1, -1):
        s = x[i]
        ri = AB[i]
        for m in range(1, BAND + 1):
            s -= ri[BAND + m] * x[i + m]
        x[i] = s / ri[BAND]


@njit(cache=True, nogil=True)
def band_solve_t(AB, n, b, x):
    """Solve ``M^T x = rhs`` in place with the factors of :func:`band_lu`."""
    for i in range(n):  # U^T z = rhs
        s = x[i]
        for k in range(max(0, i - b), i):
            s -= AB[k, i - k + b] * x[k]
        x[i] = s / AB[i, b]
    for i in range(n - 1, -1, -1):  # L^T w = z
        s = x[i]
        for k in range(i + 1, min(n, i + b + 1)):
            s -= AB[k, i - k + b] * x[k]
        x[i] = s


@njit(cache=True, nogil=True, inline="always")
def continuation(s, V, nbr, gamma, p_oth, p_diff, c):
    """``c[a] = gamma sum_d P(d|a) V(nbr(s, d))`` for the four actions; returns the first
    ``argmax_a c[a]``."""
    tot = 0.0
    for d in range(4):
        tot += V[nbr[s, d]]
    m = -1e300
    am = 0
    for a in range(4):
        c[a] = gamma * (p_oth * tot + p_diff * V[nbr[s, a]])
        if c[a] > m:
            m = c[a]
            am = a
    return am


@njit(cache=True, nogil=True, inline="always")
def soft_q(pen, s, V, nbr, gamma, p_oth, p_diff, q):
    """``q[a] = Q(s, a) = pen(s) + gamma sum_d P(d|a) V(nbr(s, d))`` for the four actions;
    returns ``max_a q[a]``."""
    continuation(s, V, nbr, gamma, p_oth, p_diff, q)
    m = -1e300
    for a in range(4):
        q[a] = pen[s] + q[a]
        m = max(m, q[a])
    return m


@njit(cache=True, nogil=True)
def soft_q_policy(pen, goal, V, nbr, gamma, beta, p_oth, p_diff, pi, ent):
    """One soft Bellman application: fills ``pi`` and ``ent[s] = sum_a pi log pi`` and returns
    ``max_s |T(V)(s) - V(s)|``.

    ``pen(s)`` is common to the four actions of ``s`` and cancels in the softmax, so ``pi`` is
    formed from the continuation values ``c_a = gamma sum_d P(d|a) V(nbr(s, d))`` alone and
    depends on ``V`` only (not on the leader's rewards): ``pi_a = e^{y_a} / z`` with
    ``y_a = (c_a - max c) / beta``, ``T(V)(s) = pen(s) + max c + beta log z`` and
    ``sum_a pi log pi = sum_a pi y_a - log z`` (no logarithm per action)."""
    n = V.shape[0]
    res = 0.0
    c = np.empty(4)
    for s in range(n):
        if s == goal:
            pi[s, :] = 0.25
            ent[s] = 0.0
            res = max(res, abs(1.0 - V[s]))
            continue
        am = continuation(s, V, nbr, gamma, p_oth, p_diff, c)
        m = c[am]
        z = 0.0
        w = 0.0
        for a in range(4):
            if a == am:  # y = 0: e^0 = 1 exactly, and it adds nothing to w
                pi[s, a] = 1.0
                z += 1.0
                continue
            y = (c[a] - m) / beta
            e = math.exp(y)
            pi[s, a] = e
            z += e
            w += e * y
        inv = 1.0 / z
        for a in range(4):
            pi[s, a] *= inv
        lz = math.log(z)
        ent[s] = w * inv - lz
        tv = pen[s] + m + beta * lz
        res = max(res, abs(tv - V[s]))
    return res


@njit(cache=True, nogil=True)
def build_m(pi, goal, nbr, gamma, p_oth, p_diff, b, AB):
    """Band storage of ``M = I - gamma P_pi`` (identity row at the goal), factorised."""
    n = pi.shape[0]
    AB[:, :] = 0.0
    for s in range(n):
        AB[s, b] = 1.0
        if s == goal:
            continue
        for d in range(4):
            j = nbr[s, d]
            AB[s, j - s + b] -= gamma * (p_oth + p_diff * pi[s, d])
    band_lu(AB, n, b)


@njit(cache=True, nogil=True, inline="always")
def _newton_rhs(pen, goal, beta, ent, rhs):
    """Right-hand side of a Newton step: ``pen - beta sum_a pi log pi`` (1 at the goal)."""
    for s in range(pen.shape[0]):
        rhs[s] = 1.0 if s == goal else pen[s] - beta * ent[s]


@njit(cache=True, nogil=True)
def soft_newton(
    pen, goal, V, nbr, gamma, beta, p_oth, p_diff, tol, max_iter, b, pi, AB, rhs, ent, AB0, ent0,
    cached,
):  # fmt: skip
    """Soft-optimal follower for one context, warm-started from ``V`` (updated in place).

    Returns ``(iterations, residual)``; ``pi`` holds the soft-optimal policy of the returned
    ``V``, ``ent`` its ``sum_a pi log pi`` and ``AB`` the factorised ``M(pi)``.
    ``iterations = -1`` means not converged.

    ``cached``: ``AB0`` / ``ent0`` are the factorised ``M(pi(V))`` and the entropies of the
    policy of the warm start ``V`` itself (kept from the solve that produced it). The policy of
    ``V`` does not depend on ``pen`` (:func:`soft_q_policy`), so the first Newton step at the
    new ``pen`` is one solve with those factors: no Bellman pass and no factorisation."""
    n = V.shape[0]
    it = 0
    if cached and max_iter > 0:
        _newton_rhs(pen, goal, beta, ent0, rhs)
        band_solve(AB0, n, b, rhs)
        V[:] = rhs
        it = 1
    while True:
        res = soft_q_policy(pen, goal, V, nbr, gamma, beta, p_oth, p_diff, pi, ent)
        if res <= tol:
            break
        if it >= max_iter:
            it = -1
            break
        build_m(pi, goal, nbr, gamma, p_oth, p_diff, b, AB)
        _newton_rhs(pen, goal, beta, ent, rhs)
        band_solve(AB, n, b, rhs)
        V[:] = rhs
        it += 1
    build_m(pi, goal, nbr, gamma, p_oth, p_diff, b, AB)
    return it, res


@njit(cache=True, nogil=True)
def leader_and_grad(
    pi, goal, vgoal, start, target, nbr, gamma, beta, p_diff, b, AB, want_grad, gpen
):
    """Exact leader value ``F_xi = Vbar(start)`` and (if ``want_grad``) ``gpen = dF/dpen`` in
    place; returns ``(F, mu_goal)`` (``mu_goal = dF/dvgoal``). ``AB`` = factorised ``M(pi)``."""
    n = pi.shape[0]
    vbar = np.zeros(n)
    vbar[target] = 1.0
    vbar[goal] = vgoal
    if target == goal:
        vbar[goal] = vgoal
    band_solve(AB, n, b, vbar)
    F = vbar[start]
    if not want_grad:
        return F, 0.0
    mu = np.zeros(n)
    mu[start] = 1.0
    band_solve_t(AB, n, b, mu)
    mug = mu[goal]
    nu = np.zeros(n)
    for s in range(n):
        if s == goal:
            continue
        w = 0.0
        for a in range(4):
            w += pi[s, a] * vbar[nbr[s, a]]
        for a in range(4):
            abar = gamma * p_diff * (vbar[nbr[s, a]] - w)
            nu[nbr[s, a]] += mu[s] * p_diff * pi[s, a] * abar
    nu[goal] = 0.0
    band_solve_t(AB, n, b, nu)
    for s in range(n):
        gpen[s] = 0.0 if s == goal else gamma / beta * nu[s]
    return F, mug


@njit(cache=True, nogil=True)
def solve_batch(
    pen, goal, vgoal, V, nbr, start, target, gamma, beta, p_oth, p_diff, tol, max_iter, b,
    want_grad, F, mug, gpen, pi, iters, resid,
):  # fmt: skip
    """Batched follower solve + leader value (+ exact gradient) over runs ``r``:
    ``pen[R, S]``, ``goal[R]`` (cell index), ``vgoal[R]``, warm starts ``V[R, S]`` (in/out).
    Outputs ``F[R]``, ``mug[R]``, ``gpen[R, S]``, ``pi[R, S, 4]``, ``iters[R]``, ``resid[R]``.
    (:func:`solve_batch_cached` with one never-valid slot that is only read: no factors kept.)"""
    R, n = pen.shape
    solve_batch_cached(
        pen, goal, vgoal, V, nbr, start, target, gamma, beta, p_oth, p_diff, tol, max_iter, b,
        want_grad, F, mug, gpen, pi, iters, resid, np.zeros(R, dtype=np.int64),
        np.empty((1, n, 2 * b + 1)), np.empty((1, n)), np.zeros(1, dtype=np.bool_), False,
    )  # fmt: skip


@njit(cache=True, nogil=True)
def solve_batch_cached(
    pen, goal, vgoal, V, nbr, start, target, gamma, beta, p_oth, p_diff, tol, max_iter, b,
    want_grad, F, mug, gpen, pi, iters, resid, slot, cache_AB, cache_ent, cache_ok, store,
):  # fmt: skip
    """:func:`solve_batch` with a factorisation cache per warm start: row ``r`` warm-starts
    from ``V[r]``, the stored values of slot ``slot[r]``, whose factorised ``M(pi)``
    ``cache_AB[slot]`` and entropies ``cache_ent[slot]`` are valid when ``cache_ok[slot]``
    (:func:`soft_newton` ``cached``). With ``store`` the slot is refactored in place and holds
    the returned ``V[r]``'s factors afterwards (the caller stores ``V[r]``); without it the
    slot is only read (a solve from a stored warm start that must not replace it)."""
    R, n = pen.shape
    AB = np.empty((n, 2 * b + 1))
    rhs = np.empty(n)
    ent = np.empty(n)
    for r in range(R):
        k = slot[r]
        ok = cache_ok[k]
        ABr = cache_AB[k] if store else AB
        entr = cache_ent[k] if store else ent
        # with store, the cached factors are read by the first step before anything overwrites
        # them (the first factorisation comes after it)
        iters[r], resid[r] = soft_newton(
            pen[r], goal[r], V[r], nbr, gamma, beta, p_oth, p_diff, tol, max_iter, b, pi[r], ABr,
            rhs, entr, cache_AB[k], cache_ent[k], ok,
        )  # fmt: skip
        if store:
            cache_ok[k] = iters[r] >= 0
        F[r], mug[r] = leader_and_grad(
            pi[r], goal[r], vgoal[r], start, target, nbr, gamma, beta, p_diff, b, ABr, want_grad,
            gpen[r],
        )  # fmt: skip


@njit(cache=True, nogil=True)
def seed_rng(seed):
    """Seed numba's (per-thread) generator used by :func:`sample_with_actions`."""
    np.random.seed(seed)


@njit(cache=True, nogil=True)
def sample_with_actions(
    pi, goal, vgoal, start, target, nbr, p_int, p_oth, n_envs, steps, max_len, states,
    actions, lrew, ep_start,
):  # fmt: skip
    """Roll out ``n_envs`` environments for ``steps`` steps each per run (auto-reset at the
    goal or after ``max_len`` steps), concatenated along time: ``states[R, n_envs*steps]``
    (cell index; the goal appears as the last state of a successful episode), ``actions``,
    ``lrew`` the leader reward of each state (1 at the target, ``vgoal`` at the goal) and
    ``ep_start`` marking the first state of every episode (each env starts a new one). A step
    draws the action ``a ~ pi(.|s)`` and then the slip (intended direction w.p. ``p_int``, each
    other w.p. ``p_oth``).

    One uniform ``u`` per step serves both draws: ``a`` is the bin of ``u`` in the cumulative
    ``pi(.|s)`` and, given ``a``, ``(u - lo_a) / pi(a|s)`` is again uniform on [0, 1) and picks
    the slip (tested against the exact frequencies)."""
    R = pi.shape[0]
    for r in range(R):
        t = 0
        g = goal[r]
        vg = vgoal[r]
        for _e in range(n_envs):
            s = start
            k = 0
            for _i in range(steps):
                states[r, t] = s
                ep_start[r, t] = k == 0
                lrew[r, t] = vg if s == g else (1.0 if s == target else 0.0)
                u = np.random.random()
                lo = 0.0
                a = 3
                for b in range(3):
                    p = pi[r, s, b]
                    if u < lo + p:
                        a = b
                        break
                    lo += p
                actions[r, t] = a
                t += 1
                k += 1
                if s == g or k >= max_len:
                    s = start
                    k = 0
                    continue
                p = pi[r, s, a]
                v = (u - lo) / p if p > 0.0 else 0.0
                if v < p_int:
                    d = a
                else:
                    j = min(int((v - p_int) / p_oth), 2)  # the j-th of the other three
                    d = j if j < a else j + 1
                s = nbr[s, d]


@njit(cache=True, nogil=True)
def published_q_iteration(pen, goal, nbr, gamma, beta, p_oth, p_diff, n_improve, n_sweeps, pi, Q):
    """The published code's follower solve: from ``Q = 0``, ``n_improve`` policy improvements
    ``pi = softmax(Q / beta)``, each followed by ``n_sweeps`` synchronous sweeps of
    ``Q(s,a) = pen(s) + beta H(pi(.|s)) + gamma sum_d P(d|a) sum_a' pi(a'|nbr(s,d)) Q(nbr(s,d),a')``;
    the goal is terminal, ``Q(goal, a) = 1 + beta H(pi(.|goal))``. Returns the final
    ``pi = softmax(Q / beta)`` in ``pi``; not the exact soft-optimal policy (a residual of order
    ``gamma^(n_improve n_sweeps)`` of the values, amplified by ``1 / beta`` in the softmax)."""
    n = pen.shape[0]
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
                tot = W[nbr[s, 0]] + W[nbr[s, 1]] + W[nbr[s, 2]] + W[nbr[s, 3]]
                base = pen[s] + beta * H[s] + gamma * p_oth * tot
                for a in range(4):
                    Qn[s, a] = base + gamma * p_diff * W[nbr[s, a]]
            Q[:, :] = Qn


@njit(cache=True, nogil=True)
def solve_batch_published(
    pen, goal, vgoal, nbr, start, target, gamma, beta, p_oth, p_diff, n_improve, n_sweeps, b,
    want_grad, F, mug, gpen, pi,
):  # fmt: skip
    """Like :func:`solve_batch` with the published follower solve
    (:func:`published_q_iteration`) instead of the exact Newton solve; the leader value (and,
    if ``want_grad``, the adjoint gradient formula) are then evaluated at that policy."""
    R, n = pen.shape
    AB = np.empty((n, 2 * b + 1))
    Q = np.empty((n, 4))
    for r in range(R):
        published_q_iteration(
            pen[r], goal[r], nbr, gamma, beta, p_oth, p_diff, n_improve, n_sweeps, pi[r], Q
        )
        build_m(pi[r], goal[r], nbr, gamma, p_oth, p_diff, b, AB)
        F[r], mug[r] = leader_and_grad(
            pi[r], goal[r], vgoal[r], start, target, nbr, gamma, beta, p_diff, b, AB, want_grad,
            gpen[r],
        )  # fmt: skip
