"""Four-Rooms samples as the estimator interface's ``Batch`` and ``Model``
(:mod:`tabular_reference.common.estimator_api`, ``docs/validate.md``).

The rewards are state-based (``docs/theory.md`` §5), so every per-step gradient is a row of a
per-state table:

* follower: ``r_x(s) = pen(s) = -0.2 sigma_s`` off the goal (1 at the goal, fixed), so
  ``d r(s)/dx_j = -0.2 sigma_s ([j = s] - sigma_j)``, the goal's row zero;
* leader: ``rbar(s) = 1[s = target]`` off the goal and ``vgoal = -budget_cost * budget`` at the
  goal, so only the goal's row is non-zero (``d vgoal / dx``, :func:`leader.logits_gradient`);
* no transition term (``x`` does not move the dynamics).

Weights returned by an estimator are contracted the way the HPGD path always did
(:func:`weights_to_state_sums`: per-state sums ``gpen = dF/dpen``, ``mug = dF/dvgoal``, then the
softmax chain rule), so the built-in forms give the same numbers as before the interface.

Handles (``Model.handles``): ``config`` (the run configuration: constants such as
``budget_cost``, ``baseline_ema``), ``goals`` (the context -> goal cell map); ``solution``
(the :class:`solver.FollowerSolution` of the rows' runs) is an *oracle*: its ``F``, ``gpen``,
``mug`` and ``V`` are exact-model quantities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from align_cbrl.estimators.episodes import per_state_sum
from align_cbrl.estimators.trajectory import HPGDWeights
from tabular_reference.common.estimator_api import Batch, Model, StepGradients
from tabular_reference.four_rooms import kernels
from tabular_reference.four_rooms.env import (
    BUDGET,
    FOUR_ROOMS,
    GAMMA,
    GOALS,
    MAX_EPISODE_STEPS,
    N_ACTIONS,
)
from tabular_reference.four_rooms.kernel_args import (
    Followers,
    LibrarySamples,
    SamplerModel,
    sampler_model,
)
from tabular_reference.four_rooms.leader import logits_gradient, penalties
from tabular_reference.four_rooms.solver import FollowerSolution, SolverSettings

__all__ = [
    "Buffers",
    "EstimatorSettings",
    "make_batch",
    "make_model",
    "sample_buffers",
    "sample_library",
    "sampler_args",
    "weights_to_state_sums",
]


class EstimatorSettings(SolverSettings, Protocol):
    """What the estimate reads from a run configuration (``algorithms.RunConfig``), besides
    what the solver reads."""

    steps_per_iter: int
    n_envs: int
    estimator_backend: str


@dataclass(frozen=True)
class Buffers:
    """Preallocated ``[R, T]`` sample arrays (the fused path fills ``states``, ``actions`` and
    ``taus``; the library path ``states``, ``actions``, ``leader_rewards``, ``episode_start``)."""

    states: np.ndarray
    actions: np.ndarray
    leader_rewards: np.ndarray
    episode_start: np.ndarray
    taus: np.ndarray


def sample_buffers(n_runs: int, n_steps: int) -> Buffers:
    """Empty :class:`Buffers` for ``n_runs`` runs of ``n_steps`` steps."""
    return Buffers(
        np.empty((n_runs, n_steps), dtype=np.int64),
        np.empty((n_runs, n_steps), dtype=np.int64),
        np.empty((n_runs, n_steps)),
        np.empty((n_runs, n_steps), dtype=np.bool_),
        np.empty((n_runs, n_steps), dtype=np.int64),
    )


def sampler_args(sol: FollowerSolution, cfg: EstimatorSettings) -> tuple[SamplerModel, Followers]:
    """Arguments shared by both samplers: the sampling model and layout, and the followers."""
    steps = cfg.steps_per_iter // cfg.n_envs
    sampler = sampler_model(cfg.model.sample, cfg.n_envs, steps)
    return sampler, Followers(sol.pi, sol.goal, sol.goal_value)


def sample_library(sol: FollowerSolution, cfg: EstimatorSettings, buffers: Buffers) -> None:
    """``cfg.steps_per_iter`` steps per run of ``sol.pi`` in the sampling model into ``buffers``
    (:func:`kernels.sample_with_actions`, numba's global generator: :func:`kernels.seed_rng`)."""
    b = buffers
    kernels.sample_with_actions(
        *sampler_args(sol, cfg),
        LibrarySamples(b.states, b.actions, b.leader_rewards, b.episode_start),
    )


def _follower_table(sigma: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """``J[r, s, j] = d pen(s) / dx_j = -0.2 sigma_s ([j = s] - sigma_j)``, goal rows zero."""
    R, P = sigma.shape
    S = P - 1
    J = -BUDGET * sigma[:, :S, None] * (np.eye(S, P)[None] - sigma[:, None, :])
    J[np.arange(R), goal] = 0.0
    return J


def _leader_table(sigma: np.ndarray, goal: np.ndarray, cfg: EstimatorSettings) -> np.ndarray:
    """Only the goal's row is non-zero: ``d vgoal / dx`` (``vgoal = -budget_cost * budget``)."""
    R, P = sigma.shape
    J = np.zeros((R, P - 1, P))
    J[np.arange(R), goal] = logits_gradient(
        sigma, np.zeros((R, P - 1)), np.ones(R), cfg.budget_cost, goal, cfg.budget_mode
    )
    return J


def _next_states(states: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
    nxt = np.full_like(states, -1)
    nxt[:, :-1] = np.where(episode_start[:, 1:], -1, states[:, 1:])
    return nxt


def context_index(goal: np.ndarray, cfg: Any) -> tuple[np.ndarray, int]:
    """Context index of each goal cell in ``cfg.goals`` (default: the paper's two goals) and
    the number of contexts."""
    cells = [FOUR_ROOMS.goal_index(tuple(g)) for g in getattr(cfg, "goals", GOALS)]
    lookup = {c: i for i, c in enumerate(cells)}
    return np.array([lookup[int(g)] for g in goal], dtype=np.int64), len(cells)


def make_batch(
    sol: FollowerSolution, cfg: EstimatorSettings, buffers: Buffers, rows: slice, runs: np.ndarray
) -> Batch:
    """The rows ``rows`` of a library-sampled batch (:func:`sample_library`) as a ``Batch``."""
    b = buffers
    st, es = b.states[rows], b.episode_start[rows]
    sigma, goal = sol.sigma[rows], sol.goal[rows]
    R, T, P = st.shape[0], st.shape[1], sigma.shape[1]
    pen = penalties(sigma) + cfg.step_reward
    r_follow = np.where(st == goal[:, None], 1.0, np.take_along_axis(pen, st, axis=1))
    ctx, _ = context_index(goal, cfg)

    def follower() -> list:
        return [(_follower_table(sigma, goal), st, None)]

    def leader() -> list:
        return [(_leader_table(sigma, goal, cfg), st, None)]

    return Batch(
        states=st,
        actions=b.actions[rows],
        episode_start=es,
        follower_rewards=r_follow,
        leader_rewards=b.leader_rewards[rows],
        contexts=np.repeat(ctx[:, None], T, axis=1),
        next_states=_next_states(st, es),
        follower_grad=StepGradients(follower, (R, T, P)),
        leader_grad=StepGradients(leader, (R, T, P)),
        transition_grad=None,
        runs=runs,
    )


def make_model(
    sol: FollowerSolution,
    cfg: EstimatorSettings,
    rows: slice,
    n_runs: int,
    memory: dict,
    rng: np.random.Generator,
) -> Model:
    """The constants and handles of the rows ``rows`` (module docstring)."""
    pi = sol.pi[rows]
    _, n_ctx = context_index(sol.goal[:1], cfg)
    return Model(
        env="four-rooms",
        gamma=GAMMA,
        beta=np.full(pi.shape[0], float(cfg.beta)),
        n_states=FOUR_ROOMS.n_cells,
        n_actions=N_ACTIONS,
        n_contexts=n_ctx,
        n_params=FOUR_ROOMS.n_params,
        max_episode_steps=MAX_EPISODE_STEPS,
        policy_source=pi,
        n_runs=n_runs,
        rng=rng,
        memory=memory,
        handles={"config": cfg, "goals": getattr(cfg, "goals", GOALS), "solution": sol},
    )


def weights_to_state_sums(
    w: HPGDWeights, states: np.ndarray, goal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``gpen[r, s]`` (per-state sums of the follower weights, goal column zeroed: the goal's
    follower reward does not depend on ``x``) and ``mug[r]`` (the leader weights' sum at the
    goal: only the goal's leader reward depends on ``x``)."""
    st = torch.from_numpy(states)
    S = FOUR_ROOMS.n_cells
    gpen = per_state_sum(torch.as_tensor(w.follower), st, S).numpy()
    lead = per_state_sum(torch.as_tensor(w.leader), st, S).numpy()
    rows = np.arange(len(goal))
    gpen[rows, goal] = 0.0
    return gpen, lead[rows, goal]
