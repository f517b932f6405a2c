"""Household trajectories sampled from the exact soft-optimal policies (reference notes, section 4).

Each run ``r`` simulates ``N`` episodes of ``T`` steps (200 in the paper) in parallel; episode
``n`` is played by household type ``contexts[r, n]``. A step draws the flow group
``f ~ pi(f | s)``, the action inside it ``a ~ pi(a | f)`` (together exactly ``a ~ pi*(a|s)``, see
:mod:`solver`), and the next asset bin ``s' ~ K_tau[s, f, :]`` (:func:`kernel.sample_next_state`).
Initial bins are drawn from ``mu0``. All draws use inverse-CDF sampling with one generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tabular_reference.tax_design.economy import Economy
from tabular_reference.tax_design.kernel import next_state_sampler, sample_next_state
from tabular_reference.tax_design.solver import FollowerSolution

__all__ = ["Trajectories", "balanced_contexts", "rollout"]


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


def _draw(cdf: Tensor, generator: torch.Generator, upper: Tensor | int) -> Tensor:
    u = torch.rand((*cdf.shape[:-1], 1), generator=generator, dtype=cdf.dtype)
    u = u * cdf[..., -1:]  # rows sum to 1 up to round-off: sample within the row's total
    idx = torch.searchsorted(cdf, u, right=True)[..., 0]
    return torch.minimum(idx, torch.as_tensor(upper) - 1)


def rollout(
    econ: Economy,
    follower: FollowerSolution,
    tau: Tensor,
    contexts: Tensor,
    n_steps: int,
    generator: torch.Generator,
) -> Trajectories:
    """Simulate ``contexts.shape[1]`` episodes of ``n_steps`` steps per run under ``pi*``."""
    R, N = contexts.shape
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if follower.pi_f.shape[0] != R or tau.shape != (R,):
        raise ValueError(
            f"runs disagree: contexts {tuple(contexts.shape)}, tau {tuple(tau.shape)}, "
            f"policy {tuple(follower.pi_f.shape)}"
        )
    with torch.no_grad():
        cdf_f = torch.cumsum(follower.pi_f, dim=-1)  # [R, C, S, F]
        pa = follower.log_pa.exp()[..., econ.group_index] * econ.group_mask  # [R, C, F, G]
        cdf_g = torch.cumsum(pa, dim=-1)
        group_count = econ.group_mask.sum(-1)
        rows = torch.arange(R)[:, None].expand(R, N)
        mu_cdf = torch.cumsum(econ.mu0, 0).expand(R, N, -1).contiguous()
        s = _draw(mu_cdf, generator, econ.n_states)
        states = torch.empty(R, N, n_steps + 1, dtype=torch.long)
        flows = torch.empty(R, N, n_steps, dtype=torch.long)
        actions = torch.empty(R, N, n_steps, dtype=torch.long)
        states[:, :, 0] = s
        table = next_state_sampler(econ, tau)
        for t in range(n_steps):
            f = _draw(cdf_f[rows, contexts, s], generator, econ.n_flows)
            g = _draw(cdf_g[rows, contexts, f], generator, group_count[f])
            a = econ.group_index[f, g]
            s = sample_next_state(econ, table, rows, s, f, generator)
            flows[:, :, t] = f
            actions[:, :, t] = a
            states[:, :, t + 1] = s
    return Trajectories(states=states, flows=flows, actions=actions, contexts=contexts)
