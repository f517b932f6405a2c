"""The packed arguments of the Four-Rooms numba kernels: named tuples (numba types them as
records, read by field name inside the kernels).

Constants of one job (the map, the discount, a slip model, the follower's temperature) travel as
:class:`FollowerModel` / :class:`SamplerModel` / :class:`EstimatorModel`; per-run inputs as
:class:`Contexts`; buffers the kernels fill as :class:`SolveOutputs`, :class:`Samples` and
:class:`Gradients`. Conventions of ``docs/four_rooms.md``: state-based rewards, the goal terminal.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tabular_reference.common.kernel_tuples import kernel_tuple
from tabular_reference.four_rooms.dynamics import SlipModel
from tabular_reference.four_rooms.env import FOUR_ROOMS, GAMMA, MAX_EPISODE_STEPS

__all__ = [
    "Contexts",
    "EstimatorModel",
    "FactorCache",
    "FollowerModel",
    "Followers",
    "Gradients",
    "LibrarySamples",
    "Newton",
    "NewtonWork",
    "SamplerModel",
    "Samples",
    "SolveOutputs",
    "Walk",
    "WarmStart",
    "estimator_model",
    "follower_model",
    "sampler_model",
    "solve_outputs",
]


@kernel_tuple
class FollowerModel(NamedTuple):
    """The follower's MDP as the solve kernels read it: ``neighbours[S, 4]`` (the cell reached
    by moving in direction ``d``; itself at a wall), the start and target cells, the bandwidth
    of ``M = I - gamma P_pi``, the discount, the planning slip model
    ``P(d | a) = p_other + p_diff [d == a]`` and the follower's temperature (``beta`` in code,
    ``lambda`` in the paper)."""

    neighbours: np.ndarray
    start: int
    target: int
    bandwidth: int
    gamma: float
    p_other: float
    p_diff: float
    temperature: float


@kernel_tuple
class Newton(NamedTuple):
    """Stopping rule of the Newton solve: ``max|T(V) - V| <= tol`` within ``max_steps``."""

    tol: float
    max_steps: int


@kernel_tuple
class Contexts(NamedTuple):
    """Per run ``r`` what a solve reads: the follower's state rewards ``penalty[r, S]`` (the
    leader's incentives plus the step reward; ``pen`` in ``docs/theory.md`` §5), the goal cell
    ``goal[r]`` and the leader's reward there ``goal_value[r] = -budget_cost * budget``
    (``vgoal``)."""

    penalty: np.ndarray
    goal: np.ndarray
    goal_value: np.ndarray


@kernel_tuple
class Followers(NamedTuple):
    """Per run ``r`` what a sampler reads: the follower's policy ``policy[r, S, 4]``, its goal
    cell ``goal[r]`` and the leader's reward there ``goal_value[r]``."""

    policy: np.ndarray
    goal: np.ndarray
    goal_value: np.ndarray


@kernel_tuple
class NewtonWork(NamedTuple):
    """One context's Newton buffers: the policy ``[S, 4]`` and, of its last iterate, the
    factorised ``M(pi)`` (band storage), ``neg_entropy[s] = sum_a pi log pi`` and the
    right-hand side / next values ``rhs[S]``."""

    policy: np.ndarray
    factors: np.ndarray
    neg_entropy: np.ndarray
    rhs: np.ndarray


@kernel_tuple
class WarmStart(NamedTuple):
    """The factorised ``M(pi)`` and ``sum_a pi log pi`` of the policy of the warm-start values,
    used by the first Newton step when ``valid``."""

    factors: np.ndarray
    neg_entropy: np.ndarray
    valid: bool


@kernel_tuple
class SolveOutputs(NamedTuple):
    """What a batched solve writes per run ``r``: the leader value ``value[r] = F_xi``, with
    ``want_grad`` ``grad_penalty[r, S] = dF/dpen`` and ``grad_goal_value[r] = dF/dvgoal``
    (``= mu(goal)``), the follower's policy ``policy[r, S, 4]``, the Newton steps taken
    (``-1``: not converged) and the final residual ``max|T(V) - V|``."""

    value: np.ndarray
    grad_penalty: np.ndarray
    grad_goal_value: np.ndarray
    policy: np.ndarray
    newton_steps: np.ndarray
    residual: np.ndarray


@kernel_tuple
class FactorCache(NamedTuple):
    """Per slot ``k`` the factorised ``M(pi)`` (``factors[k]``, band storage) and
    ``neg_entropy[k] = sum_a pi log pi`` of the policy of the slot's stored values, valid when
    ``valid[k]``; ``slot[r]`` is the slot of row ``r`` of a batch."""

    slot: np.ndarray
    factors: np.ndarray
    neg_entropy: np.ndarray
    valid: np.ndarray


@kernel_tuple
class SamplerModel(NamedTuple):
    """What the samplers read: the map (``neighbours``, start and target cells), the sampling
    slip model (``p_intended`` on the chosen direction, ``p_other`` on each other one) and the
    batch layout: ``n_envs`` environments of ``steps`` steps each, concatenated, an episode cut
    after ``max_len`` steps."""

    neighbours: np.ndarray
    start: int
    target: int
    p_intended: float
    p_other: float
    n_envs: int
    steps: int
    max_len: int


@kernel_tuple
class EstimatorModel(NamedTuple):
    """The fused estimator ``form`` (``hpgd_kernels.FORM_*``) and the constants it reads."""

    form: int
    target: int
    gamma: float
    temperature: float
    max_len: int


@kernel_tuple
class Samples(NamedTuple):
    """``[R, T]`` sampled steps: the state, the action and the step's time in its episode."""

    states: np.ndarray
    actions: np.ndarray
    time_in_episode: np.ndarray


@kernel_tuple
class Walk(NamedTuple):
    """One run's sampled walk: its goal cell and its rows of :class:`Samples` (``[T]``)."""

    goal: int
    states: np.ndarray
    actions: np.ndarray
    time_in_episode: np.ndarray


@kernel_tuple
class LibrarySamples(NamedTuple):
    """``[R, T]`` sampled steps as the library estimators read them: state, action, the leader's
    reward and whether the step starts an episode."""

    states: np.ndarray
    actions: np.ndarray
    leader_rewards: np.ndarray
    episode_start: np.ndarray


@kernel_tuple
class Gradients(NamedTuple):
    """Per run ``r`` the per-state sums of the follower weights ``grad_penalty[r, S]`` and the
    leader weights at the goal ``grad_goal_value[r]`` (what the logit chain rule reads)."""

    grad_penalty: np.ndarray
    grad_goal_value: np.ndarray


def follower_model(temperature: float, plan: SlipModel) -> FollowerModel:
    """The Four-Rooms :class:`FollowerModel` at ``temperature`` in the slip model ``plan``."""
    env = FOUR_ROOMS
    layout = (env.nbr, env.start, env.target, env.bandwidth)
    return FollowerModel(*layout, GAMMA, plan.p_other, plan.p_diff, float(temperature))


def sampler_model(sample: SlipModel, n_envs: int, steps: int) -> SamplerModel:
    """The Four-Rooms :class:`SamplerModel` of ``n_envs`` environments x ``steps`` steps."""
    env = FOUR_ROOMS
    batch = (int(n_envs), int(steps), MAX_EPISODE_STEPS)
    return SamplerModel(env.nbr, env.start, env.target, sample.p_intended, sample.p_other, *batch)


def estimator_model(form: int, temperature: float) -> EstimatorModel:
    """The Four-Rooms :class:`EstimatorModel` of the fused estimator ``form``."""
    target, max_len = FOUR_ROOMS.target, MAX_EPISODE_STEPS
    return EstimatorModel(int(form), target, GAMMA, float(temperature), max_len)


def solve_outputs(n_runs: int) -> SolveOutputs:
    """Empty :class:`SolveOutputs` for ``n_runs`` runs (``grad_*`` only written with
    ``want_grad``)."""
    R, S = n_runs, FOUR_ROOMS.n_cells
    value, grad_penalty, grad_goal_value = np.empty(R), np.empty((R, S)), np.empty(R)
    policy, newton_steps, residual = np.empty((R, S, 4)), np.empty(R, np.int64), np.empty(R)
    return SolveOutputs(value, grad_penalty, grad_goal_value, policy, newton_steps, residual)
