"""Fused Four-Rooms HPGD: sample a run's trajectories and reduce them to the per-state sums of
the HPGD weights in one numba pass per run, without ``[R, T]`` temporaries.

It computes exactly what :func:`align_cbrl.estimators.trajectory.hpgd_weights` (``form="mc"``,
``leader_q="crossfit"``; ``form="naive"``) and
:func:`align_cbrl.estimators.published.published_hpgd_weights` compute from the same sampled
batch, followed by ``per_state_sum`` (tested against them to 1e-10 in
``tests/test_four_rooms_dynamics.py``); the library functions stay the reference. Outputs per run
``r``: ``gpen[r, s] = sum_{k: s_k = s} follower_k`` (the goal's entry zeroed: the goal's follower
reward does not depend on ``x``) and ``mug[r] = sum_{k: s_k = goal} leader_k``, which the
softmax chain rule turns into the logit gradient.

Sampling (the ``sample`` slip model ``p_int, p_oth``): per run, each state gets a Walker/Vose
alias table over its 16 joint outcomes (action ``a``, move direction ``d``) with probabilities
``pi(a|s) P(d|a)``; a step then costs one uniform, one integer comparison and one 32-byte table
record, without a branch (:func:`draw_code`). Uniforms come from xoshiro256+ (Blackman and Vigna;
53-bit doubles) whose 4-word state is passed in and updated in place (:func:`seed_state`), ~2 ns
per draw against ~17 ns for numba's global Mersenne Twister here, and checkpointable. The
episode layout is that of :func:`tabular_reference.four_rooms.kernels.sample_with_actions`:
``n_envs`` environments of ``steps`` steps each, concatenated, auto-reset at the goal (which
appears as the last state of its episode) or after ``max_len`` steps.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tabular_reference.common.alias import vose

FORM_CROSSFIT = 0  # hpgd: form "mc", leader_q "crossfit"
FORM_PUBLISHED = 1  # hpgd-published: every-visit tables from the same batch
FORM_NAIVE = 2  # naive: direct term only
FORMS = {"crossfit": FORM_CROSSFIT, "published": FORM_PUBLISHED, "naive": FORM_NAIVE}

_MASK64 = (1 << 64) - 1
_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U45 = np.uint64(45)
_U19 = np.uint64(19)  # 64 - 45
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53


def seed_state(seed: int) -> np.ndarray:
    """xoshiro256+ state (``uint64[4]``) from an integer seed via splitmix64."""
    x = int(seed) & _MASK64
    out = []
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    if not any(out):
        out[0] = 1
    return np.array(out, dtype=np.uint64)


@njit(cache=True, nogil=True, inline="always")
def _xoshiro_bits(s0, s1, s2, s3):
    """One xoshiro256+ step on the state words held in registers: returns the top 53 bits of
    the output as an integer ``v`` (the uniform is ``v * 2^-53``) and the new state."""
    res = s0 + s3
    t = s1 << _U17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << _U45) | (s3 >> _U19)
    return res >> _U11, s0, s1, s2, s3


@njit(cache=True, nogil=True, inline="always")
def _xoshiro_next(s0, s1, s2, s3):
    """One xoshiro256+ step: returns the uniform on [0, 1) (53-bit) and the new state
    ``(s0, s1, s2, s3)``."""
    v, s0, s1, s2, s3 = _xoshiro_bits(s0, s1, s2, s3)
    return v * _TO_UNIT, s0, s1, s2, s3


@njit(cache=True, nogil=True)
def uniforms(rng, n):
    """``n`` uniforms on [0, 1) from the xoshiro256+ state ``rng`` (advanced in place); the
    generator the sampler uses, exposed for tests."""
    out = np.empty(n)
    s0, s1, s2, s3 = rng[0], rng[1], rng[2], rng[3]
    for i in range(n):
        out[i], s0, s1, s2, s3 = _xoshiro_next(s0, s1, s2, s3)
    rng[0], rng[1], rng[2], rng[3] = s0, s1, s2, s3
    return out


# a draw's 53 uniform bits v: bin j = v >> 49 (the top 4 bits) and the within-bin fraction
# f = v & (2^49 - 1), so that 16 u - j = f * 2^-49 exactly
_U49 = np.uint64(49)
_FRAC_MASK = np.uint64((1 << 49) - 1)
_FRAC_ONE = float(1 << 49)


@njit(cache=True, nogil=True)
def build_alias(pi_r, nbr, p_int, p_oth, tab):
    """Vose alias tables of the 16 outcomes ``o = 4 a + d`` of every state, as 4-word records
    ``tab[4 (16 s + j) : + 4] = (threshold, kept, alias, 0)``: bin ``j`` keeps its outcome when
    ``16 u - j < thr`` and takes its alias otherwise, outcomes encoded as
    ``4 * next_state + action``. The threshold is stored as the integer ``ceil(thr 2^49)``:
    for the within-bin fraction ``f = (16 u - j) 2^49`` (an integer, see :func:`draw_code`)
    ``f < ceil(thr 2^49)`` exactly when ``16 u - j < thr``, so the draws equal those of the
    floating-point rule bit for bit."""
    S = pi_r.shape[0]
    p = np.empty(16)
    small = np.empty(16, dtype=np.int64)
    large = np.empty(16, dtype=np.int64)
    alias = np.empty(16, dtype=np.int64)
    for s in range(S):
        for a in range(4):
            for d in range(4):
                pd = p_int if d == a else p_oth
                p[4 * a + d] = pi_r[s, a] * pd * 16.0
        vose(p, 16, alias, small, large)
        for j in range(16):
            i = 4 * (16 * s + j)
            # thr * 2^49 is exact; thresholds lie in [0, 1] (clamped against round-off)
            tab[i] = np.int64(math.ceil(min(max(p[j], 0.0), 1.0) * _FRAC_ONE))
            o = j
            tab[i + 1] = 4 * nbr[s, o & 3] + (o >> 2)
            o = alias[j]
            tab[i + 2] = 4 * nbr[s, o & 3] + (o >> 2)
            tab[i + 3] = 0


@njit(cache=True, nogil=True, inline="always")
def draw_code(tab, s, v):
    """One step's outcome in state ``s`` from the 53 uniform bits ``v`` (:func:`_xoshiro_bits`)
    and the records of :func:`build_alias`: bin ``j = floor(16 u) = v >> 49`` keeps its outcome
    when the fraction ``v & (2^49 - 1)`` is below the bin's integer threshold and takes its
    alias otherwise (selected arithmetically: no branch to mispredict); returns
    ``4 * next_state + action``."""
    i = (16 * s + np.int64(v >> _U49)) << 2
    keep = np.int64(np.int64(v & _FRAC_MASK) < tab[i])
    alt = tab[i + 2]
    return alt + (tab[i + 1] - alt) * keep


@njit(cache=True, nogil=True, inline="always")
def _step(tab, goal, start, max_len, s, k, v, t, states, actions, taus):
    """One sampled step of a run in state ``s``, ``k`` steps into its episode, from the uniform
    bits ``v``: records ``(s, action, k)`` at position ``t`` and returns the next ``(s, k)`` and
    1 when that starts a new episode (the goal was reached or ``max_len`` steps were taken)."""
    code = draw_code(tab, s, v)
    states[t] = s
    actions[t] = code & 3
    taus[t] = k
    k += 1
    if s == goal or k >= max_len:
        return start, 0, 1
    return code >> 2, k, 0


@njit(cache=True, nogil=True)
def _sample_run(tab, goal, start, n_envs, steps, max_len, rng, states, actions, taus):
    """Sample one run's ``n_envs x steps`` steps; returns the number of episodes."""
    t = 0
    n_ep = 0
    s0, s1, s2, s3 = rng[0], rng[1], rng[2], rng[3]
    for _e in range(n_envs):
        s, k = start, 0
        n_ep += 1
        for _i in range(steps):
            v, s0, s1, s2, s3 = _xoshiro_bits(s0, s1, s2, s3)
            s, k, new = _step(tab, goal, start, max_len, s, k, v, t, states, actions, taus)
            n_ep += new
            t += 1
        if k == 0:
            n_ep -= 1  # the reset after the env's last step starts no episode
    rng[0], rng[1], rng[2], rng[3] = s0, s1, s2, s3
    return n_ep


@njit(cache=True, nogil=True)
def _sample_two_runs(tab_a, tab_b, goal_a, goal_b, start, n_envs, steps, max_len, rng_a, rng_b,
                     st_a, ac_a, ta_a, st_b, ac_b, ta_b):  # fmt: skip
    """:func:`_sample_run` for two runs advanced in the same loop: each step's dependency chain
    (uniform -> table record -> next state) is latency-bound, and the two runs' chains are
    independent, so the core overlaps them (~1.3x per run). Each run's draws, states and episode
    count are exactly those of :func:`_sample_run`; returns both episode counts."""
    t = 0
    n_a = n_b = 0
    a0, a1, a2, a3 = rng_a[0], rng_a[1], rng_a[2], rng_a[3]
    b0, b1, b2, b3 = rng_b[0], rng_b[1], rng_b[2], rng_b[3]
    for _e in range(n_envs):
        s_a, k_a, s_b, k_b = start, 0, start, 0
        n_a += 1
        n_b += 1
        for _i in range(steps):
            v_a, a0, a1, a2, a3 = _xoshiro_bits(a0, a1, a2, a3)
            v_b, b0, b1, b2, b3 = _xoshiro_bits(b0, b1, b2, b3)
            s_a, k_a, new_a = _step(tab_a, goal_a, start, max_len, s_a, k_a, v_a, t, st_a, ac_a,
                                    ta_a)  # fmt: skip
            s_b, k_b, new_b = _step(tab_b, goal_b, start, max_len, s_b, k_b, v_b, t, st_b, ac_b,
                                    ta_b)  # fmt: skip
            n_a += new_a
            n_b += new_b
            t += 1
        if k_a == 0:
            n_a -= 1
        if k_b == 0:
            n_b -= 1
    rng_a[0], rng_a[1], rng_a[2], rng_a[3] = a0, a1, a2, a3
    rng_b[0], rng_b[1], rng_b[2], rng_b[3] = b0, b1, b2, b3
    return n_a, n_b


@njit(cache=True, nogil=True)
def _estimate_naive(states, taus, n_ep, goal, gpow):
    """``mug`` of form naive: the discounted visits of the goal per episode."""
    mug = 0.0
    for t in range(states.shape[0]):
        if states[t] == goal:
            mug += gpow[taus[t]]
    return mug / n_ep


@njit(cache=True, nogil=True)
def _estimate_crossfit(
    states, actions, taus, n_ep, goal, target, vgoal, gpow, gamma, beta, S, gpen
):
    """Form crossfit (``hpgd_weights(form="mc", leader_q="crossfit")``): adds the per-state
    follower-weight sums to ``gpen`` and returns ``mug``.

    Two passes. The reverse pass sums, per (fold, state, action), the leader returns ``G_t``,
    the visits and the visits' discounts ``gamma^tau``. The centring term of (fold ``f``,
    state ``s``), the mean over its visits of ``gamma^tau Qhat_{1-f}(s, a_t)``, then follows per
    (state, action) from those sums, ``sum_a Qhat_{1-f}(s, a) W_f(s, a) / n_f(s)``, without a
    pass over the steps; the forward pass accumulates the weights."""
    T = states.shape[0]
    SA = 4 * S
    # reverse pass: per (fold, state, action) sums of leader returns, visits and gamma^tau
    qsum = np.zeros(2 * SA)
    qcnt = np.zeros(2 * SA)
    wsum = np.zeros(2 * SA)
    e = n_ep - 1
    nxt = 0.0
    for t in range(T - 1, -1, -1):
        s = states[t]
        r = vgoal if s == goal else (1.0 if s == target else 0.0)
        nxt = r if t == T - 1 or taus[t + 1] == 0 else r + gamma * nxt
        i = (e & 1) * SA + 4 * s + actions[t]
        qsum[i] += nxt
        qcnt[i] += 1.0
        wsum[i] += gpow[taus[t]]
        if taus[t] == 0:
            e -= 1
    # Qhat_f(s, a): the mean leader return per (fold, state, action)
    for i in range(2 * SA):
        qsum[i] = qsum[i] / qcnt[i] if qcnt[i] > 0.0 else 0.0
    # centring per (fold, state): mean over fold f's visits of gamma^tau Qhat_{1-f}(s, a_t)
    csum = np.zeros(2 * S)
    for f in range(2):
        for s in range(S):
            c = 0.0
            n = 0.0
            for a in range(4):
                i = f * SA + 4 * s + a
                c += wsum[i] * qsum[(1 - f) * SA + 4 * s + a]
                n += qcnt[i]
            csum[f * S + s] = c / n if n > 0.0 else 0.0
    # forward pass: prefix sums of the other fold's Qhat and the discounted centring
    mug, prefix, cent, e = 0.0, 0.0, 0.0, -1
    scale = 1.0 / (n_ep * beta)
    for t in range(T):
        tau = taus[t]
        if tau == 0:
            e += 1
            prefix = 0.0
            cent = 0.0
        s = states[t]
        f = e & 1
        prefix += qsum[(1 - f) * SA + 4 * s + actions[t]]
        cent = csum[f * S + s] + gamma * cent
        g = gpow[tau]
        gpen[s] += (g * prefix - cent) * scale
        if s == goal:
            mug += g
    return mug / n_ep


@njit(cache=True, nogil=True)
def _estimate_published(
    states, actions, taus, n_ep, goal, target, vgoal, gpow, gamma, beta, max_len, S, gpen
):
    """Form published (``published_hpgd_weights``): adds the per-state follower-weight sums to
    ``gpen`` and returns ``mug`` (NaN when no episode finished).

    Two passes, as :func:`_estimate_crossfit`: the per-state mean of ``gamma^tau`` times the
    every-visit advantage ``Ghat(s, a_t) - Ghat(s)`` follows from the per-(state, action) sums
    of the reverse pass."""
    T = states.shape[0]
    SA = 4 * S
    gsa = np.zeros(SA)
    nsa = np.zeros(SA)
    wsa = np.zeros(SA)
    gs = np.zeros(S)
    ns = np.zeros(S)
    starts = np.zeros(S)
    n_done = 0
    nxt = 0.0
    for t in range(T - 1, -1, -1):
        s = states[t]
        r = vgoal if s == goal else (1.0 if s == target else 0.0)
        nxt = r if t == T - 1 or taus[t + 1] == 0 else r + gamma * nxt
        i = 4 * s + actions[t]
        gsa[i] += nxt
        nsa[i] += 1.0
        wsa[i] += gpow[taus[t]]
        gs[s] += nxt
        ns[s] += 1.0
        if taus[t] == 0:
            starts[s] += 1.0
        if s == goal or taus[t] == max_len - 1:
            n_done += 1
    if n_done == 0:
        return np.nan
    for s in range(S):
        if ns[s] > 0.0:
            gs[s] /= ns[s]
            starts[s] /= n_ep * ns[s]
    # per state: cs = mean over visits of gamma^tau (Ghat(s, a_t) - Ghat(s)); then wsa becomes
    # the mean gamma^tau per (state, action) and gsa - gs the every-visit advantage
    cs = np.zeros(S)
    for s in range(S):
        if ns[s] == 0.0:
            continue
        c = 0.0
        for a in range(4):
            i = 4 * s + a
            if nsa[i] > 0.0:
                gsa[i] = gsa[i] / nsa[i] - gs[s]
                c += wsa[i] * gsa[i]
                wsa[i] /= nsa[i]
        cs[s] = c / ns[s]
    h = 0.0
    hl = 0.0
    mug = 0.0
    scale = 1.0 / (n_done * beta)
    for t in range(T):
        s = states[t]
        i = 4 * s + actions[t]
        ct = gsa[i] * wsa[i] - cs[s]
        cl = starts[s]
        if taus[t] == 0:
            h = ct
            hl = cl
        else:
            h = ct + gamma * h
            hl = cl + gamma * hl
        gpen[s] += h * scale
        if s == goal:
            mug += hl
    return mug


@njit(cache=True, nogil=True)
def _estimate_run(
    states, actions, taus, n_ep, goal, target, vgoal, gpow, gamma, beta, max_len, S, form, gpen
):
    """Per-state sums of the follower weights (``gpen``, goal zeroed) and ``mug`` of one run
    with ``n_ep`` episodes."""
    for s in range(S):
        gpen[s] = 0.0
    if form == FORM_NAIVE:
        return _estimate_naive(states, taus, n_ep, goal, gpow)
    if form == FORM_CROSSFIT:
        mug = _estimate_crossfit(
            states, actions, taus, n_ep, goal, target, vgoal, gpow, gamma, beta, S, gpen
        )
    else:
        mug = _estimate_published(
            states, actions, taus, n_ep, goal, target, vgoal, gpow, gamma, beta, max_len, S, gpen
        )
        if np.isnan(mug):
            return mug
    gpen[goal] = 0.0
    return mug


@njit(cache=True, nogil=True)
def gamma_powers(gamma, max_len):
    """``gamma^k`` for ``k < max_len`` by repeated multiplication (the estimators' discounts)."""
    gpow = np.empty(max_len)
    g = 1.0
    for k in range(max_len):
        gpow[k] = g
        g *= gamma
    return gpow


@njit(cache=True, nogil=True)
def alias_buffers(S):
    """Scratch table of :func:`build_alias` for ``S`` states (``int64[64 S]``)."""
    return np.empty(64 * S, dtype=np.int64)


@njit(cache=True, nogil=True)
def sample_and_estimate(
    pi, goal, vgoal, start, target, nbr, p_int, p_oth, n_envs, steps, max_len,
    gamma, beta, form, rng, states, actions, taus, gpen, mug,
):  # fmt: skip
    """For every run ``r`` (``rng[r]`` its xoshiro256+ state, advanced in place): sample
    ``n_envs x steps`` steps of ``pi[r]`` (context ``goal[r]``, leader's goal reward
    ``vgoal[r]``) into ``states/actions/taus[r]`` and write the per-state
    follower-weight sums ``gpen[r]`` and ``mug[r]`` of the estimator ``form`` (``FORM_*``).
    ``mug[r]`` is NaN when ``form`` is published and no episode finished."""
    R, S = pi.shape[0], pi.shape[1]
    gpow = gamma_powers(gamma, max_len)
    tab, tab_b = alias_buffers(S), alias_buffers(S)
    n_ep = np.empty(R, dtype=np.int64)
    for r in range(0, R, 2):  # runs in pairs (_sample_two_runs), an odd last one alone
        build_alias(pi[r], nbr, p_int, p_oth, tab)
        if r + 1 < R:
            build_alias(pi[r + 1], nbr, p_int, p_oth, tab_b)
            n_ep[r], n_ep[r + 1] = _sample_two_runs(
                tab, tab_b, goal[r], goal[r + 1], start, n_envs, steps, max_len, rng[r],
                rng[r + 1], states[r], actions[r], taus[r], states[r + 1], actions[r + 1],
                taus[r + 1],
            )  # fmt: skip
        else:
            n_ep[r] = _sample_run(
                tab, goal[r], start, n_envs, steps, max_len, rng[r], states[r], actions[r],
                taus[r],
            )  # fmt: skip
        for j in range(r, min(r + 2, R)):  # estimate while the batches are in cache
            mug[j] = _estimate_run(
                states[j], actions[j], taus[j], n_ep[j], goal[j], target, vgoal[j], gpow, gamma,
                beta, max_len, S, form, gpen[j],
            )  # fmt: skip
