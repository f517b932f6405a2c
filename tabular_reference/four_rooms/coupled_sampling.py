"""Episode-synchronised sampling for coupled multilevel estimates (``docs/accelerated.md``).

The fused sampler (:mod:`tabular_reference.four_rooms.hpgd_kernels`) draws one uniform per
step from a single stream per run. Replaying that stream for two nearby policies (common random
numbers) couples them only until their first differing step: from then on every later episode
reads other uniforms, so two level estimates of one multilevel draw decouple almost entirely.

Here episode ``e`` of a batch draws its uniforms from its own xoshiro256+ stream, seeded by
splitmix64 from ``(seed, e)``: two policies sampled with the same ``seed`` share the uniforms of
every episode, whatever happened in the episodes before, so each episode stays coupled unless
its own path differs. Each batch is distributed exactly as the fused sampler's (the alias tables
and the step rule are the same; only the source of the uniforms changes), so the estimator
built on it is unchanged in distribution.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tabular_reference.four_rooms import hpgd_kernels as HK
from tabular_reference.four_rooms.env import FOUR_ROOMS, GAMMA, MAX_EPISODE_STEPS
from tabular_reference.four_rooms.leader import logits_gradient
from tabular_reference.four_rooms.solver import FollowerSolution

__all__ = ["coupled_hypergradient", "sample_and_estimate_coupled"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True)
def _splitmix(x):
    """One splitmix64 output and the advanced counter."""
    x = x + _GOLDEN
    z = x
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31)), x


@njit(cache=True, nogil=True)
def _episode_state(seed, e, out):
    """The xoshiro256+ state of episode ``e`` of the batch ``seed`` (never all zero)."""
    x = seed * np.uint64(0x100000001B3) + np.uint64(e)
    for i in range(4):
        out[i], x = _splitmix(x)
    if out[0] == 0 and out[1] == 0 and out[2] == 0 and out[3] == 0:
        out[0] = np.uint64(1)


@njit(cache=True, nogil=True)
def _sample_run_coupled(tab, goal, start, n_envs, steps, max_len, seed, states,
                        actions, taus):  # fmt: skip
    """As ``hpgd_kernels._sample_run`` with one uniform stream per episode."""
    t = 0
    n_ep = 0
    st = np.empty(4, dtype=np.uint64)
    for _e in range(n_envs):
        s = start
        k = 0
        n_ep += 1
        _episode_state(seed, n_ep, st)
        s0, s1, s2, s3 = st[0], st[1], st[2], st[3]
        for _i in range(steps):
            v, s0, s1, s2, s3 = HK._xoshiro_bits(s0, s1, s2, s3)
            s, k, new = HK._step(tab, goal, start, max_len, s, k, v, t, states, actions, taus)
            t += 1
            if new:
                n_ep += 1
                _episode_state(seed, n_ep, st)
                s0, s1, s2, s3 = st[0], st[1], st[2], st[3]
        if k == 0:
            n_ep -= 1
    return n_ep


@njit(cache=True, nogil=True)
def sample_and_estimate_coupled(
    pi, goal, vgoal, start, target, nbr, p_int, p_oth, n_envs, steps, max_len, gamma, beta, form,
    seeds, states, actions, taus, gpen, mug,
):  # fmt: skip
    """``hpgd_kernels.sample_and_estimate`` with episode-synchronised uniforms: run ``r``'s
    batch is determined by ``seeds[r]`` (``uint64``) and its policy."""
    R, S = pi.shape[0], pi.shape[1]
    gpow = HK.gamma_powers(gamma, max_len)
    tab = HK.alias_buffers(S)
    for r in range(R):
        HK.build_alias(pi[r], nbr, p_int, p_oth, tab)
        n_ep = _sample_run_coupled(
            tab, goal[r], start, n_envs, steps, max_len, seeds[r], states[r],
            actions[r], taus[r],
        )  # fmt: skip
        mug[r] = HK._estimate_run(
            states[r], actions[r], taus[r], n_ep, goal[r], target, vgoal[r], gpow, gamma, beta,
            max_len, S, form, gpen[r],
        )  # fmt: skip


def coupled_hypergradient(sol: FollowerSolution, cfg, code: int, seeds: np.ndarray) -> np.ndarray:
    """The HPGD estimate ``dF_xi/dx[R, 105]`` of the fused estimator ``code``
    (``hpgd_kernels.FORM_*``) from episode-synchronised batches of ``cfg.steps_per_iter`` steps
    (``seeds[R]`` ``uint64``), in ``cfg``'s sampling slip model."""
    env, sample = FOUR_ROOMS, cfg.model.sample
    R, T = sol.pi.shape[0], cfg.steps_per_iter
    states, actions = np.empty((R, T), np.int64), np.empty((R, T), np.int64)
    taus = np.empty((R, T), np.int64)
    gpen, mug = np.empty((R, env.n_cells)), np.empty(R)
    sample_and_estimate_coupled(
        sol.pi, sol.goal, sol.vgoal, env.start, env.target, env.nbr, sample.p_intended,
        sample.p_other, cfg.n_envs, T // cfg.n_envs, MAX_EPISODE_STEPS, GAMMA, cfg.beta, code,
        np.asarray(seeds, dtype=np.uint64), states, actions, taus, gpen, mug,
    )  # fmt: skip
    if np.isnan(mug).any():
        raise RuntimeError("hpgd-published: a run had no finished episode; raise steps_per_iter")
    return logits_gradient(sol.sigma, gpen, mug, cfg.budget_cost, sol.goal, cfg.budget_mode)
