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

from tabular_reference.four_rooms import hpgd_kernels
from tabular_reference.four_rooms.env import FOUR_ROOMS
from tabular_reference.four_rooms.kernel_args import (
    Followers,
    Gradients,
    Samples,
    estimator_model,
    sampler_model,
)
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
def sample_run_coupled(sampler, table, walk, seed):
    """As ``hpgd_kernels.sample_run`` with one uniform stream per episode (``seed``'s)."""
    t = 0
    n_episodes = 0
    state = np.empty(4, dtype=np.uint64)
    for _e in range(sampler.n_envs):
        s = sampler.start
        k = 0
        n_episodes += 1
        _episode_state(seed, n_episodes, state)
        s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
        for _i in range(sampler.steps):
            bits, s0, s1, s2, s3 = hpgd_kernels.xoshiro_bits(s0, s1, s2, s3)
            s, k, new = hpgd_kernels.step(sampler, table, walk, s, k, bits, t)
            t += 1
            if new:
                n_episodes += 1
                _episode_state(seed, n_episodes, state)
                s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
        if k == 0:
            n_episodes -= 1
    return n_episodes


@njit(cache=True, nogil=True)
def sample_and_estimate_coupled(sampler, estimator, followers, seeds, samples, out):
    """``hpgd_kernels.sample_and_estimate`` with episode-synchronised uniforms: run ``r``'s
    batch is determined by ``seeds[r]`` (``uint64``) and its policy."""
    policy = followers.policy
    R, S = policy.shape[0], policy.shape[1]
    discounts = hpgd_kernels.gamma_powers(estimator.gamma, estimator.max_len)
    table = hpgd_kernels.alias_buffers(S)
    for r in range(R):
        hpgd_kernels.build_alias(policy[r], sampler, table)
        walk = hpgd_kernels.walk_of(followers, samples, r)
        n_episodes = sample_run_coupled(sampler, table, walk, seeds[r])
        out.grad_goal_value[r] = hpgd_kernels.estimate_run(
            estimator, discounts, walk, n_episodes, followers.goal_value[r], out.grad_penalty[r]
        )


def coupled_hypergradient(sol: FollowerSolution, cfg, code: int, seeds: np.ndarray) -> np.ndarray:
    """The HPGD estimate ``dF_xi/dx[R, 105]`` of the fused estimator ``code``
    (``hpgd_kernels.FORM_*``) from episode-synchronised batches of ``cfg.steps_per_iter`` steps
    (``seeds[R]`` ``uint64``), in ``cfg``'s sampling slip model."""
    R, T = sol.pi.shape[0], cfg.steps_per_iter
    samples = Samples(
        np.empty((R, T), np.int64), np.empty((R, T), np.int64), np.empty((R, T), np.int64)
    )
    out = Gradients(np.empty((R, FOUR_ROOMS.n_cells)), np.empty(R))
    sample_and_estimate_coupled(
        sampler_model(cfg.model.sample, cfg.n_envs, T // cfg.n_envs),
        estimator_model(code, cfg.beta),
        Followers(sol.pi, sol.goal, sol.goal_value),
        np.asarray(seeds, dtype=np.uint64),
        samples,
        out,
    )
    if np.isnan(out.grad_goal_value).any():
        raise RuntimeError("hpgd-published: a run had no finished episode; raise steps_per_iter")
    return logits_gradient(
        sol.sigma,
        out.grad_penalty,
        out.grad_goal_value,
        cfg.budget_cost,
        sol.goal,
        cfg.budget_mode,
    )
