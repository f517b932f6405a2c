"""Household trajectories sampled from the exact soft-optimal policies (``docs/theory.md`` §6).

Each run ``r`` simulates ``N`` episodes of ``T`` steps (200 in the paper); episode ``n`` is played
by household type ``contexts[r, n]``. A step draws the flow group ``f ~ pi(f | s)``, the action
inside it ``a ~ pi(a | f)`` (together exactly ``a ~ pi*(a|s)``, see :mod:`solver`), and the next
asset bin ``s' ~ K_tau[s, f, :]`` of equation (K) in :mod:`kernel`. Initial bins are drawn from
``mu0``.

All draws are made by a numba kernel (:func:`_simulate`) from a SplitMix64 stream seeded from
the caller's torch generator, with Walker's alias method (one uniform and one comparison per
draw; tables built per call by :func:`_alias_rows`, Vose's construction, packed in
:class:`HouseholdLaws`). The next-bin law uses the kernel's shift
structure: away from the clip, ``K[s, f, s + d] = D[f, d] / Z[s, f]`` over the band of offsets
``d``, i.e. the law ``D[f, :] / sum_d D[f, d]`` conditioned on ``s + d`` staying inside the grid
(the in-grid mass is ``Z[s, f]``), so the draw samples an offset from ``D[f, :]`` and redraws
until it lands inside (acceptance ``>= 1/2``: the pre-noise mean lies inside the range); rows
whose mean is clipped use the fixed laws at ``lo`` / ``hi``. Two calls with the same seed use the
same stream of uniforms (*common random numbers*, :func:`sampled_returns`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from numba import njit
from torch import Tensor

from tabular_reference.common.alias import vose
from tabular_reference.common.kernel_tuples import kernel_tuple
from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.kernel import KernelParts
from tabular_reference.tax_design.solver import FollowerSolution

__all__ = [
    "Trajectories",
    "balanced_contexts",
    "draw_seed",
    "rollout",
    "sampled_returns",
]


@dataclass(frozen=True)
class Trajectories:
    """``states[R, N, T+1]`` (bins, including the state after the last step), ``flows[R, N, T]``,
    ``actions[R, N, T]``, ``contexts[R, N]`` (household type of each episode)."""

    states: Tensor
    flows: Tensor
    actions: Tensor
    contexts: Tensor


def balanced_contexts(econ: Economy, n_runs: int, n_episodes: int) -> Tensor:
    """Context of each episode, ``[R, N]``: with uniform ``P(xi)`` and ``N`` a multiple of the
    number of types, an equal share per type (stratified sampling, unbiased for ``E_xi``)."""
    C = econ.n_contexts
    probs = econ.context_probs
    if n_episodes < 1:
        raise ValueError(f"episodes per iteration must be >= 1, got {n_episodes}")
    if not torch.allclose(probs, torch.full_like(probs, 1.0 / C)) or n_episodes % C:
        raise ValueError(
            f"stratified contexts need uniform context_probs and episodes a multiple of {C}; "
            f"got probs {probs.tolist()} and {n_episodes} episodes"
        )
    return (torch.arange(n_episodes) % C).expand(n_runs, n_episodes).clone()


def draw_seed(generator: torch.Generator) -> int:
    """A 62-bit seed for the numba sampler, drawn from ``generator``."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


# ---------------------------------------------------------------------------------- kernels
@njit(cache=True, nogil=True)
def _alias_rows(p, count, prob, alias):
    """Walker alias tables of every row ``p[i, :count[i]]`` (unnormalised weights >= 0) by Vose's
    construction: a draw ``k = floor(u K)``, then ``k`` if ``frac(u K) < prob[i, k]`` else
    ``alias[i, k]``, has law ``p[i, :K] / sum p[i, :K]`` (``K = count[i]``)."""
    n_rows = p.shape[0]
    width = p.shape[1]
    small = np.empty(width, dtype=np.int64)
    large = np.empty(width, dtype=np.int64)
    scaled = np.empty(width)
    for i in range(n_rows):
        K = count[i]
        total = 0.0
        for k in range(K):
            total += p[i, k]
        for k in range(K):
            scaled[k] = p[i, k] * K / total
        vose(scaled, K, alias[i], small, large)
        for k in range(K):
            prob[i, k] = scaled[k]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True)
def _uniform(state):
    """SplitMix64 step on ``state[0]`` -> a uniform double in ``[0, 1)`` (53 random bits)."""
    state[0] += _GOLDEN
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@kernel_tuple
class AliasLaw(NamedTuple):
    """Walker alias tables of the rows of a law: ``prob[i, k]``, ``alias[i, k]``
    (:func:`_alias_rows`)."""

    prob: np.ndarray
    alias: np.ndarray


@kernel_tuple
class HouseholdLaws(NamedTuple):
    """What :func:`_simulate` draws from, for a batch of ``R`` runs: the flow group ``f`` in bin
    ``s`` (``flow``, rows ``(r, c, s)``), the action inside the group (``in_group``, rows
    ``(r, c, f)``, ``group_count[f]`` members, the ``g``-th being action ``group_index[f, g]``),
    the initial bin (``initial``, row 0), the bin offset ``d - d_lo`` of an unclipped move
    (``offset``, rows ``(r, f)``) and, for rows whose mean is clipped (``clip_hi`` /
    ``clip_lo[R, S, F]``), the fixed laws at the range ends (``edge``, rows 0 = top,
    1 = bottom)."""

    flow: AliasLaw
    in_group: AliasLaw
    group_index: np.ndarray
    group_count: np.ndarray
    initial: AliasLaw
    offset: AliasLaw
    d_lo: int
    clip_hi: np.ndarray
    clip_lo: np.ndarray
    edge: AliasLaw


@kernel_tuple
class Paths(NamedTuple):
    """Stored trajectories: ``states[R, N, T+1]``, ``flows[R, N, T]``, ``actions[R, N, T]``."""

    states: np.ndarray
    flows: np.ndarray
    actions: np.ndarray


@kernel_tuple
class Welfare(NamedTuple):
    """Discounted welfare of unstored episodes: ``returns[r, n] = sum_t gamma^t
    (w_state[s_t] + w_action[r, a_t])``."""

    w_state: np.ndarray
    w_action: np.ndarray
    gamma: float
    returns: np.ndarray


@njit(cache=True, nogil=True)
def _draw(state, prob, alias, row, K):
    """A draw from row ``row`` (``K`` entries) of the alias tables ``prob``, ``alias``."""
    u = _uniform(state) * K
    k = int(u)
    if k >= K:
        k = K - 1
    return k if u - k < prob[row, k] else alias[row, k]


@njit(cache=True, nogil=True)
def _simulate(seed, laws, contexts, n_steps, store, paths, welfare):
    """Simulate ``contexts.shape[1]`` episodes per run from the alias tables ``laws``
    (:class:`HouseholdLaws`) and the SplitMix64 stream of ``seed``. ``store``: write
    :class:`Paths`; otherwise only the discounted :class:`Welfare` ``returns``."""
    # the tables as locals: read out of the tuples once, not at every draw
    f_prob, f_alias = laws.flow
    g_prob, g_alias = laws.in_group
    mu_prob, mu_alias = laws.initial
    d_prob, d_alias = laws.offset
    edge_prob, edge_alias = laws.edge
    group_index, group_count, d_lo = laws.group_index, laws.group_count, laws.d_lo
    clip_hi, clip_lo = laws.clip_hi, laws.clip_lo
    states, flows, actions = paths
    w_state, w_action, gamma, returns = welfare
    state = np.empty(1, dtype=np.uint64)
    state[0] = np.uint64(seed)
    R, N = contexts.shape
    S, F, L = mu_prob.shape[1], f_prob.shape[1], d_prob.shape[1]
    C = f_prob.shape[0] // (R * S)
    for r in range(R):
        for n in range(N):
            c = contexts[r, n]
            s = _draw(state, mu_prob, mu_alias, 0, S)
            if store:
                states[r, n, 0] = s
            disc = 1.0
            ret = 0.0
            for t in range(n_steps):
                f = _draw(state, f_prob, f_alias, (r * C + c) * S + s, F)
                g = _draw(state, g_prob, g_alias, (r * C + c) * F + f, group_count[f])
                a = group_index[f, g]
                if clip_hi[r, s, f]:
                    s_next = _draw(state, edge_prob, edge_alias, 0, S)
                elif clip_lo[r, s, f]:
                    s_next = _draw(state, edge_prob, edge_alias, 1, S)
                else:
                    s_next = -1
                    while s_next < 0 or s_next >= S:
                        s_next = s + d_lo + _draw(state, d_prob, d_alias, r * F + f, L)
                if store:
                    flows[r, n, t] = f
                    actions[r, n, t] = a
                    states[r, n, t + 1] = s_next
                else:
                    ret += disc * (w_state[s] + w_action[r, a])
                    disc *= gamma
                s = s_next
            if not store:
                returns[r, n] = ret


def _alias(p: np.ndarray, count: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    p = np.ascontiguousarray(p.reshape(-1, p.shape[-1]))
    if count is None:
        count = np.full(p.shape[0], p.shape[1], dtype=np.int64)
    prob = np.ones(p.shape)
    alias = np.zeros(p.shape, dtype=np.int64)
    _alias_rows(p, count, prob, alias)
    return prob, alias


def _laws(econ: Economy, follower: FollowerSolution, parts: KernelParts) -> HouseholdLaws:
    """The alias tables of :func:`_simulate` for the policy ``follower`` and the kernel
    ``parts``."""
    R = follower.pi_f.shape[0]
    with torch.no_grad():
        pi_f = follower.pi_f.detach().numpy()  # [R, C, S, F]
        pa = (follower.log_pa.detach().exp()[..., econ.group_index] * econ.group_mask).numpy()
        count = econ.group_mask.sum(-1).numpy()  # [F]
        edges = torch.stack([parts.top, parts.bottom]).detach().numpy()
        D = parts.D.detach().numpy()
    return HouseholdLaws(
        flow=AliasLaw(*_alias(pi_f)),
        in_group=AliasLaw(*_alias(pa, np.tile(count, R * pa.shape[1]))),
        group_index=econ.group_index.numpy(),
        group_count=count,
        initial=AliasLaw(*_alias(econ.mu0.numpy()[None])),
        offset=AliasLaw(*_alias(D)),
        d_lo=int(parts.d_lo),
        clip_hi=parts.clip_hi.contiguous().numpy(),
        clip_lo=parts.clip_lo.contiguous().numpy(),
        edge=AliasLaw(*_alias(edges)),
    )


def _check(follower: FollowerSolution, contexts: Tensor, n_steps: int, econ: Economy) -> None:
    R = contexts.shape[0]
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if follower.pi_f.shape[0] != R or follower.parts.D.shape[0] != R:
        raise ValueError(
            f"runs disagree: contexts {tuple(contexts.shape)}, policy "
            f"{tuple(follower.pi_f.shape)}, kernel {tuple(follower.parts.D.shape)}"
        )
    if contexts.numel() and (int(contexts.min()) < 0 or int(contexts.max()) >= econ.n_contexts):
        raise ValueError(f"contexts must lie in [0, {econ.n_contexts - 1}]")


def rollout(
    econ: Economy,
    follower: FollowerSolution,
    tau: Tensor,
    contexts: Tensor,
    n_steps: int,
    generator: torch.Generator,
) -> Trajectories:
    """Simulate ``contexts.shape[1]`` episodes of ``n_steps`` steps per run under ``pi*`` in the
    kernel ``follower.parts`` (built for the income taxes ``tau[R]`` by the solver)."""
    R, N = contexts.shape
    _check(follower, contexts, n_steps, econ)
    if tau.shape != (R,):
        raise ValueError(f"runs disagree: contexts {tuple(contexts.shape)}, tau {tuple(tau.shape)}")
    states = np.empty((R, N, n_steps + 1), dtype=np.int64)
    flows = np.empty((R, N, n_steps), dtype=np.int64)
    actions = np.empty((R, N, n_steps), dtype=np.int64)
    ctx = contexts.to(torch.int64).contiguous().numpy()
    dummy = np.zeros((1, 1))
    seed = draw_seed(generator)
    laws = _laws(econ, follower, follower.parts)
    paths = Paths(states, flows, actions)
    _simulate(seed, laws, ctx, n_steps, True, paths, Welfare(np.zeros(1), dummy, 0.0, dummy))
    return Trajectories(
        states=torch.from_numpy(states),
        flows=torch.from_numpy(flows),
        actions=torch.from_numpy(actions),
        contexts=contexts,
    )


def sampled_returns(
    econ: Economy,
    follower: FollowerSolution,
    w_state: Tensor,
    w_action: Tensor,
    contexts: Tensor,
    n_steps: int,
    seed: int,
) -> Tensor:
    """Discounted returns ``sum_{t<n_steps} gamma^t (w_state[s_t] + w_action[r, a_t])`` of
    ``contexts.shape[1]`` sampled episodes per run, ``[R, N]``, without storing the trajectories.
    Two calls with the same ``seed`` use the same uniforms (common random numbers)."""
    R, N = contexts.shape
    _check(follower, contexts, n_steps, econ)
    if w_state.shape != (econ.n_states,) or w_action.shape != (R, econ.n_actions):
        raise ValueError(
            f"welfare tables must have shapes {(econ.n_states,)} and {(R, econ.n_actions)}, got "
            f"{tuple(w_state.shape)} and {tuple(w_action.shape)}"
        )
    out = np.zeros((R, N))
    empty = np.empty((1, 1, 1), dtype=np.int64)
    welfare = Welfare(
        w_state.detach().to(torch.float64).contiguous().numpy(),
        w_action.detach().to(torch.float64).contiguous().numpy(),
        float(econ.gamma),
        out,
    )
    _simulate(
        int(seed),
        _laws(econ, follower, follower.parts),
        contexts.to(torch.int64).contiguous().numpy(),
        n_steps,
        False,
        Paths(empty, empty, empty),
        welfare,
    )
    return torch.from_numpy(out)
