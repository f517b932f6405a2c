"""Fused Four-Rooms HPGD: sample a run's trajectories and reduce them to the per-state sums of
the HPGD weights in one numba pass per run, without ``[R, T]`` temporaries.

It computes exactly what :func:`align_cbrl.estimators.trajectory.hpgd_weights` (``form="mc"``,
``leader_q="crossfit"``; ``form="naive"``) and
:func:`align_cbrl.estimators.published.published_hpgd_weights` compute from the same sampled
batch, followed by ``per_state_sum`` (tested against them to 1e-10 in
``tests/test_four_rooms_dynamics.py``); the library functions stay the reference. Outputs per run
``r`` (:class:`~.kernel_args.Gradients`): ``grad_penalty[r, s] = sum_{k: s_k = s} follower_k``
(the goal's entry zeroed: the goal's follower reward does not depend on ``x``) and
``grad_goal_value[r] = sum_{k: s_k = goal} leader_k``, which the softmax chain rule turns into
the logit gradient.

Sampling (the ``sample`` slip model ``p_intended, p_other`` of a
:class:`~.kernel_args.SamplerModel`): per run, each state gets a Walker/Vose
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
from tabular_reference.four_rooms.kernel_args import Walk

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
def xoshiro_bits(s0, s1, s2, s3):
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
    v, s0, s1, s2, s3 = xoshiro_bits(s0, s1, s2, s3)
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
def build_alias(policy, sampler, table):
    """Vose alias tables of the 16 outcomes ``o = 4 a + d`` of every state of ``policy[S, 4]``
    in the slip model of ``sampler``, as 4-word records
    ``table[4 (16 s + j) : + 4] = (threshold, kept, alias, 0)``: bin ``j`` keeps its outcome
    when ``16 u - j < thr`` and takes its alias otherwise, outcomes encoded as
    ``4 * next_state + action``. The threshold is stored as the integer ``ceil(thr 2^49)``:
    for the within-bin fraction ``f = (16 u - j) 2^49`` (an integer, see :func:`draw_code`)
    ``f < ceil(thr 2^49)`` exactly when ``16 u - j < thr``, so the draws equal those of the
    floating-point rule bit for bit."""
    neighbours, p_intended, p_other = sampler.neighbours, sampler.p_intended, sampler.p_other
    p = np.empty(16)
    small = np.empty(16, dtype=np.int64)
    large = np.empty(16, dtype=np.int64)
    alias = np.empty(16, dtype=np.int64)
    for s in range(policy.shape[0]):
        for a in range(4):
            for d in range(4):
                p_move = p_intended if d == a else p_other
                p[4 * a + d] = policy[s, a] * p_move * 16.0
        vose(p, 16, alias, small, large)
        for j in range(16):
            i = 4 * (16 * s + j)
            # thr * 2^49 is exact; thresholds lie in [0, 1] (clamped against round-off)
            table[i] = np.int64(math.ceil(min(max(p[j], 0.0), 1.0) * _FRAC_ONE))
            o = j
            table[i + 1] = 4 * neighbours[s, o & 3] + (o >> 2)
            o = alias[j]
            table[i + 2] = 4 * neighbours[s, o & 3] + (o >> 2)
            table[i + 3] = 0


@njit(cache=True, nogil=True, inline="always")
def draw_code(table, s, bits):
    """One step's outcome in state ``s`` from the 53 uniform bits ``bits``
    (:func:`xoshiro_bits`) and the records of :func:`build_alias`: bin
    ``j = floor(16 u) = bits >> 49`` keeps its outcome when the fraction ``bits & (2^49 - 1)``
    is below the bin's integer threshold and takes its alias otherwise (selected
    arithmetically: no branch to mispredict); returns ``4 * next_state + action``."""
    i = (16 * s + np.int64(bits >> _U49)) << 2
    keep = np.int64(np.int64(bits & _FRAC_MASK) < table[i])
    alt = table[i + 2]
    return alt + (table[i + 1] - alt) * keep


@njit(cache=True, nogil=True, inline="always")
def walk_of(followers, samples, r):
    """Run ``r``'s :class:`~.kernel_args.Walk`: its goal and its rows of ``samples``."""
    return Walk(
        followers.goal[r], samples.states[r], samples.actions[r], samples.time_in_episode[r]
    )


@njit(cache=True, nogil=True, inline="always")
def step(sampler, table, walk, s, k, bits, t):
    """One sampled step of a run in state ``s``, ``k`` steps into its episode, from the uniform
    bits ``bits``: records ``(s, action, k)`` at position ``t`` of ``walk`` and returns the next
    ``(s, k)`` and 1 when that starts a new episode (the goal was reached or ``max_len`` steps
    were taken)."""
    code = draw_code(table, s, bits)
    walk.states[t] = s
    walk.actions[t] = code & 3
    walk.time_in_episode[t] = k
    k += 1
    if s == walk.goal or k >= sampler.max_len:
        return sampler.start, 0, 1
    return code >> 2, k, 0


@njit(cache=True, nogil=True)
def sample_run(sampler, table, walk, rng):
    """Sample one run's ``n_envs x steps`` steps into ``walk`` from the xoshiro256+ state
    ``rng`` (advanced in place); returns the number of episodes."""
    t = 0
    n_episodes = 0
    s0, s1, s2, s3 = rng[0], rng[1], rng[2], rng[3]
    for _e in range(sampler.n_envs):
        s, k = sampler.start, 0
        n_episodes += 1
        for _i in range(sampler.steps):
            bits, s0, s1, s2, s3 = xoshiro_bits(s0, s1, s2, s3)
            s, k, new = step(sampler, table, walk, s, k, bits, t)
            n_episodes += new
            t += 1
        if k == 0:
            n_episodes -= 1  # the reset after the env's last step starts no episode
    rng[0], rng[1], rng[2], rng[3] = s0, s1, s2, s3
    return n_episodes


@njit(cache=True, nogil=True)
def _sample_two_runs(sampler, table_a, table_b, walk_a, walk_b, rng_a, rng_b):
    """:func:`sample_run` for two runs advanced in the same loop: each step's dependency chain
    (uniform -> table record -> next state) is latency-bound, and the two runs' chains are
    independent, so the core overlaps them (~1.3x per run). Each run's draws, states and episode
    count are exactly those of :func:`sample_run`; returns both episode counts."""
    t = 0
    n_a = n_b = 0
    a0, a1, a2, a3 = rng_a[0], rng_a[1], rng_a[2], rng_a[3]
    b0, b1, b2, b3 = rng_b[0], rng_b[1], rng_b[2], rng_b[3]
    for _e in range(sampler.n_envs):
        s_a, k_a, s_b, k_b = sampler.start, 0, sampler.start, 0
        n_a += 1
        n_b += 1
        for _i in range(sampler.steps):
            bits_a, a0, a1, a2, a3 = xoshiro_bits(a0, a1, a2, a3)
            bits_b, b0, b1, b2, b3 = xoshiro_bits(b0, b1, b2, b3)
            s_a, k_a, new_a = step(sampler, table_a, walk_a, s_a, k_a, bits_a, t)
            s_b, k_b, new_b = step(sampler, table_b, walk_b, s_b, k_b, bits_b, t)
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
def _estimate_naive(walk, n_episodes, discounts):
    """``grad_goal_value`` of form naive: the discounted visits of the goal per episode."""
    visits = 0.0
    for t in range(walk.states.shape[0]):
        if walk.states[t] == walk.goal:
            visits += discounts[walk.time_in_episode[t]]
    return visits / n_episodes


@njit(cache=True, nogil=True)
def _estimate_crossfit(estimator, discounts, walk, n_episodes, goal_value, grad_penalty):
    """Form crossfit (``hpgd_weights(form="mc", leader_q="crossfit")``): adds the per-state
    follower-weight sums to ``grad_penalty`` and returns ``grad_goal_value``.

    Two passes. The reverse pass sums, per (fold, state, action), the leader returns ``G_t``,
    the visits and the visits' discounts ``gamma^tau``. The centring term of (fold ``f``,
    state ``s``), the mean over its visits of ``gamma^tau Qhat_{1-f}(s, a_t)``, then follows per
    (state, action) from those sums, ``sum_a Qhat_{1-f}(s, a) W_f(s, a) / n_f(s)``, without a
    pass over the steps; the forward pass accumulates the weights."""
    states, actions, taus = walk.states, walk.actions, walk.time_in_episode
    goal, target, gamma = walk.goal, estimator.target, estimator.gamma
    T = states.shape[0]
    S = grad_penalty.shape[0]
    SA = 4 * S
    # reverse pass: per (fold, state, action) sums of leader returns, visits and gamma^tau
    qsum = np.zeros(2 * SA)
    qcnt = np.zeros(2 * SA)
    wsum = np.zeros(2 * SA)
    e = n_episodes - 1
    nxt = 0.0
    for t in range(T - 1, -1, -1):
        s = states[t]
        r = goal_value if s == goal else (1.0 if s == target else 0.0)
        nxt = r if t == T - 1 or taus[t + 1] == 0 else r + gamma * nxt
        i = (e & 1) * SA + 4 * s + actions[t]
        qsum[i] += nxt
        qcnt[i] += 1.0
        wsum[i] += discounts[taus[t]]
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
    visits, prefix, cent, e = 0.0, 0.0, 0.0, -1
    scale = 1.0 / (n_episodes * estimator.temperature)
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
        g = discounts[tau]
        grad_penalty[s] += (g * prefix - cent) * scale
        if s == goal:
            visits += g
    return visits / n_episodes


@njit(cache=True, nogil=True)
def _estimate_published(estimator, discounts, walk, n_episodes, goal_value, grad_penalty):
    """Form published (``published_hpgd_weights``): adds the per-state follower-weight sums to
    ``grad_penalty`` and returns ``grad_goal_value`` (NaN when no episode finished).

    Two passes, as :func:`_estimate_crossfit`: the per-state mean of ``gamma^tau`` times the
    every-visit advantage ``Ghat(s, a_t) - Ghat(s)`` follows from the per-(state, action) sums
    of the reverse pass."""
    states, actions, taus = walk.states, walk.actions, walk.time_in_episode
    goal, target, gamma = walk.goal, estimator.target, estimator.gamma
    T = states.shape[0]
    S = grad_penalty.shape[0]
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
        r = goal_value if s == goal else (1.0 if s == target else 0.0)
        nxt = r if t == T - 1 or taus[t + 1] == 0 else r + gamma * nxt
        i = 4 * s + actions[t]
        gsa[i] += nxt
        nsa[i] += 1.0
        wsa[i] += discounts[taus[t]]
        gs[s] += nxt
        ns[s] += 1.0
        if taus[t] == 0:
            starts[s] += 1.0
        if s == goal or taus[t] == estimator.max_len - 1:
            n_done += 1
    if n_done == 0:
        return np.nan
    for s in range(S):
        if ns[s] > 0.0:
            gs[s] /= ns[s]
            starts[s] /= n_episodes * ns[s]
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
    visits = 0.0
    scale = 1.0 / (n_done * estimator.temperature)
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
        grad_penalty[s] += h * scale
        if s == goal:
            visits += hl
    return visits


@njit(cache=True, nogil=True)
def estimate_run(estimator, discounts, walk, n_episodes, goal_value, grad_penalty):
    """Per-state sums of the follower weights (``grad_penalty``, goal zeroed) and the returned
    ``grad_goal_value`` of one run with ``n_episodes`` episodes, by ``estimator.form``;
    ``discounts[k] = gamma^k`` (:func:`gamma_powers`)."""
    grad_penalty[:] = 0.0
    if estimator.form == FORM_NAIVE:
        return _estimate_naive(walk, n_episodes, discounts)
    if estimator.form == FORM_CROSSFIT:
        grad_goal_value = _estimate_crossfit(
            estimator, discounts, walk, n_episodes, goal_value, grad_penalty
        )
    else:
        grad_goal_value = _estimate_published(
            estimator, discounts, walk, n_episodes, goal_value, grad_penalty
        )
        if np.isnan(grad_goal_value):
            return grad_goal_value
    grad_penalty[walk.goal] = 0.0
    return grad_goal_value


@njit(cache=True, nogil=True)
def gamma_powers(gamma, max_len):
    """``gamma^k`` for ``k < max_len`` by repeated multiplication (the estimators' discounts)."""
    powers = np.empty(max_len)
    g = 1.0
    for k in range(max_len):
        powers[k] = g
        g *= gamma
    return powers


@njit(cache=True, nogil=True)
def alias_buffers(S):
    """Scratch table of :func:`build_alias` for ``S`` states (``int64[64 S]``)."""
    return np.empty(64 * S, dtype=np.int64)


@njit(cache=True, nogil=True)
def sample_and_estimate(sampler, estimator, followers, rng, samples, out):
    """For every run ``r`` of ``followers`` (``rng[r]`` its xoshiro256+ state, advanced in
    place): sample ``n_envs x steps`` steps of ``policy[r]`` (context ``goal[r]``, leader's goal
    reward ``goal_value[r]``) into row ``r`` of ``samples`` and write the per-state
    follower-weight sums ``out.grad_penalty[r]`` and ``out.grad_goal_value[r]`` of the
    estimator ``estimator.form`` (``FORM_*``). ``out.grad_goal_value[r]`` is NaN when the form
    is published and no episode finished."""
    policy = followers.policy
    R, S = policy.shape[0], policy.shape[1]
    discounts = gamma_powers(estimator.gamma, estimator.max_len)
    table_a, table_b = alias_buffers(S), alias_buffers(S)
    n_episodes = np.empty(R, dtype=np.int64)
    for r in range(0, R, 2):  # runs in pairs (_sample_two_runs), an odd last one alone
        build_alias(policy[r], sampler, table_a)
        walk_a = walk_of(followers, samples, r)
        if r + 1 < R:
            build_alias(policy[r + 1], sampler, table_b)
            walk_b = walk_of(followers, samples, r + 1)
            n_episodes[r], n_episodes[r + 1] = _sample_two_runs(
                sampler, table_a, table_b, walk_a, walk_b, rng[r], rng[r + 1]
            )
        else:
            n_episodes[r] = sample_run(sampler, table_a, walk_a, rng[r])
        for j in range(r, min(r + 2, R)):  # estimate while the batches are in cache
            out.grad_goal_value[j] = estimate_run(
                estimator,
                discounts,
                walk_of(followers, samples, j),
                n_episodes[j],
                followers.goal_value[j],
                out.grad_penalty[j],
            )
