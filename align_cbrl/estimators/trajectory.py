"""HPGD estimator for sampled multi-step trajectories (``docs/theory.md`` §2 and §4).

The leader's hypergradient for an entropy-regularised follower (temperature ``beta``) is

    dF/dx = E_xi E_tau sum_t gamma^t [ d rbar(s_t,a_t)
                                       + (1/beta) dA(s_t,a_t) Qbar(s_t,a_t)
                                       + gamma d log P(s_{t+1}|s_t,a_t) Vbar(s_{t+1}) ]    (HG)

with ``dA = dQ* - dV*`` the gradient of the follower's advantage and ``Qbar, Vbar`` the leader's
values under the follower's policy. HPGD estimates (HG) from the followers' trajectories alone:

* ``Ghat_t = sum_{k>=t} gamma^(k-t) rbar_k`` (within the episode) estimates ``Qbar(s_t,a_t)``;
* ``Dhat_t = sum_{k>=t} gamma^(k-t) d rtilde_k`` estimates ``dQ*(s_t,a_t)``, where ``rtilde`` is the
  follower's per-step pseudo-reward: ``r_x(s,a)`` when ``x`` enters the reward only, and
  ``r_x(s_k,a_k) + gamma log P_x(s_{k+1}|s_k,a_k) stopgrad(V*(s_{k+1}))`` when ``x`` also moves the
  transition (``dQ*`` is the value of ``pi*`` for the vector reward ``dr + gamma sum_s' dP V*``).

The estimate is composed of two small choices (rlax style):

* a **leader-value source** (:mod:`align_cbrl.estimators.leader_values`, ``leader_q``): which
  estimate of the leader's values multiplies ``Dhat_t`` -- ``"crossfit"`` (default when
  ``actions`` are given), ``"table"`` or ``"trajectory"``;
* a **weight form** (``form``): ``"mc"`` (the paper's Monte-Carlo form: ``Dhat_t`` centred per
  state with visit averages, ``(Dhat_t - Dbar(s_t)) Qhat_t / beta``; a state visited once
  contributes nothing), ``"covariance"`` (``Dhat_t (Qhat_t - Vhat(s_t)) / beta`` with a
  leader-side baseline; single visits count) or ``"naive"`` (direct terms only).

Every estimate is linear in the per-step gradients, so instead of materialising ``Dhat_t`` (one
vector per step) the double sums are reordered into per-step scalar weights:

    g = sum_t follower_t * d rtilde_t + leader_t * d rbar_t + transition_t * d log P_t          (W)

e.g. for ``"mc"``: ``sum_t gamma^tau_t Qhat_t Dhat_t = sum_k d rtilde_k gamma^tau_k sum_{t<=k} Qhat_t``
(``tau`` = time within the episode) and the centring term becomes a forward discounted sum of
``C(s_t)/n(s_t)`` with ``C(s) = sum_{t: s_t = s} gamma^tau_t Qhat_t``. The weights are then
contracted with analytic Jacobians (tabular case) or used as a stop-gradient surrogate
``sum_t w_t r_x(s_t,a_t)`` with one backward pass. All estimates are averaged over the episodes of
each run (divided by the number of episode starts). Batch layout and scans:
:mod:`align_cbrl.estimators.episodes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from align_cbrl.estimators.episodes import (
    Episodes,
    as_run_column,
    check_indices,
    check_trajectories,
    scatter_sum,
)
from align_cbrl.estimators.leader_values import (
    LEADER_Q,
    LeaderValues,
    crossfit_values,
    table_values,
    trajectory_values,
)

__all__ = [
    "FORMS",
    "HPGDWeights",
    "covariance_weights",
    "direct_weights",
    "hpgd_weights",
    "mc_weights",
]

Form = Literal["mc", "covariance", "naive"]
FORMS: tuple[str, ...] = ("mc", "covariance", "naive")
LeaderQ = Literal["crossfit", "table", "trajectory"]


@dataclass(frozen=True)
class HPGDWeights:
    """Per-step weights of the HPGD estimate (W); each ``[R, T]`` except ``n_episodes`` ``[R]``.

    ``follower`` multiplies ``d rtilde_t`` (already divided by ``beta`` and the episode count),
    ``leader`` multiplies ``d rbar_x(s_t, a_t)`` (``gamma^tau_t / n_episodes``), ``transition``
    multiplies ``d log P_x(s_{t+1} | s_t, a_t)`` (``gamma^(tau_t+1) Ghat_{t+1} / n_episodes``, zero at
    the last step of each episode, whose successor is not observed).
    """

    follower: torch.Tensor
    leader: torch.Tensor
    transition: torch.Tensor
    n_episodes: torch.Tensor


# ------------------------------------------------------------------------------ weight forms
def direct_weights(ep: Episodes, g_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(leader, transition)`` weights of (W), shared by all forms: a known score times one
    return, unbiased. ``g_hat`` are the leader's returns ``Ghat_t``."""
    leader_w = ep.gpow * ep.inv_episodes
    episode_start = ep.episode_start
    next_in_episode = torch.zeros_like(episode_start)
    next_in_episode[:, :-1] = ~episode_start[:, 1:]
    transition_w = torch.zeros_like(g_hat)
    transition_w[:, :-1] = ep.gamma * ep.gpow[:, :-1] * g_hat[:, 1:]
    transition_w = torch.where(next_in_episode, transition_w, torch.zeros_like(transition_w))
    return leader_w, transition_w * ep.inv_episodes


def mc_weights(ep: Episodes, values: LeaderValues) -> torch.Tensor:
    """Form ``"mc"``: ``sum_t gamma^tau_t Qhat_t (Dhat_t - Dbar(s_t))`` as weights on
    ``d rtilde`` (before the division by the episode count and ``beta``)."""
    # sum_t gamma^tau_t Qhat_t Dhat_t -> weight gamma^tau_k * sum_{t<=k} Qhat_t on d rtilde_k.
    direct = ep.gpow * ep.running_sum(values.q)
    # sum_t gamma^tau_t Qhat_t Dbar(s_t) = sum_t' c_t' Dhat_t', c = C(s)/n(s) per centring group
    # -> weight J_k = sum_{t'<=k} gamma^(k-t') c_t' on d rtilde_k.
    idx, n = values.centre_index, values.n_centre
    visits = scatter_sum(torch.ones_like(values.q), idx, n)
    c_group = scatter_sum(ep.gpow * values.q, idx, n) / visits.clamp_min(1.0)
    centring = ep.scan(torch.gather(c_group, 1, idx), reverse=False)
    return direct - centring


def covariance_weights(ep: Episodes, values: LeaderValues) -> torch.Tensor:
    """Form ``"covariance"``: ``sum_t gamma^tau_t Dhat_t (Qhat_t - Vhat(s_t))`` as weights on
    ``d rtilde`` (before the division by the episode count and ``beta``)."""
    if values.v is None:
        raise ValueError("form='covariance' needs leader values with a baseline")
    adv = torch.where(values.valid, values.q - values.v, torch.zeros_like(values.q))
    return ep.gpow * ep.running_sum(adv)


_FORM_WEIGHTS = {"mc": mc_weights, "covariance": covariance_weights}


# --------------------------------------------------------------------------- composition
def _leader_values(
    form: str,
    leader_q: str | None,
    g_hat: torch.Tensor,
    episode_start: torch.Tensor,
    states: torch.Tensor,
    actions: torch.Tensor | None,
    n_states: int,
    n_actions: int | None,
    q_table: torch.Tensor | None,
    v_table: torch.Tensor | None,
) -> LeaderValues:
    """Resolve and call the leader-value source ``leader_q`` (errors say what to pass)."""
    if leader_q is None:
        if actions is None:
            raise ValueError(
                "hpgd_weights needs an estimate of the leader's Q-values that is independent of "
                "the future of each step: pass actions= and n_actions= (leader_q='crossfit'), "
                "critic tables (leader_q='table'), or opt into the biased same-trajectory "
                "product with leader_q='trajectory'"
            )
        leader_q = "crossfit"
    if leader_q not in LEADER_Q:
        raise ValueError(f"unknown leader_q {leader_q!r}; choose one of {', '.join(LEADER_Q)}")
    baseline = form == "covariance"
    if leader_q == "trajectory":
        if baseline and v_table is None:
            raise _missing_baseline(leader_q)
        return trajectory_values(g_hat, v_table if baseline else None, states, n_states)
    if actions is None or n_actions is None:
        raise ValueError(f"leader_q={leader_q!r} needs actions= ([R, T]) and n_actions=")
    if actions.shape != states.shape:
        raise ValueError(
            f"actions {tuple(actions.shape)} must have the shape of states {tuple(states.shape)}"
        )
    check_indices(actions, n_actions, "action")
    if leader_q == "crossfit":
        return crossfit_values(
            g_hat, episode_start, states, actions, n_states, n_actions, baseline=baseline
        )
    if q_table is None:
        raise ValueError("leader_q='table' needs q_table ([S, A] or [R, S, A])")
    if baseline and v_table is None:
        raise _missing_baseline(leader_q)
    v = v_table if baseline else None
    return table_values(q_table, v, states, actions, n_states, n_actions, g_hat.dtype)


def _missing_baseline(leader_q: str) -> ValueError:
    return ValueError(
        f"form='covariance' with leader_q={leader_q!r} needs a leader baseline "
        "v_table of shape [S] or [R, S] (zeros for none)"
    )


def hpgd_weights(
    states: torch.Tensor,
    leader_rewards: torch.Tensor,
    episode_start: torch.Tensor,
    gamma: float,
    beta: float | torch.Tensor,
    *,
    form: Form = "mc",
    n_states: int,
    actions: torch.Tensor | None = None,
    n_actions: int | None = None,
    leader_q: LeaderQ | None = None,
    q_table: torch.Tensor | None = None,
    v_table: torch.Tensor | None = None,
) -> HPGDWeights:
    """Per-step weights (W) of the HPGD estimate of (HG) from sampled trajectories: the leader
    values of the source ``leader_q`` combined by the weight form ``form``.

    Args:
        states: ``[R, T]`` state indices.
        leader_rewards: ``[R, T]`` observed leader rewards ``rbar_t`` (values, no gradient).
        episode_start: ``[R, T]`` bool, True at the first step of every episode.
        gamma: discount factor in [0, 1].
        beta: follower temperature (> 0), a float or one per run ``[R]``.
        form: ``"mc"`` (paper), ``"covariance"`` or ``"naive"``.
        n_states: number of states (bounds of ``states``).
        actions: ``[R, T]`` action indices (needed by ``leader_q="crossfit"`` and ``"table"``).
        n_actions: number of actions (bounds of ``actions``).
        leader_q: source of the leader values multiplying ``Dhat_t`` (module docstring):
            ``"crossfit"`` (default when ``actions`` are given), ``"table"`` or ``"trajectory"``.
        q_table: ``[S, A]`` or ``[R, S, A]`` leader Q estimates (``leader_q="table"``).
        v_table: ``[S]`` or ``[R, S]`` leader value estimates, the baseline of ``"covariance"``
            with ``leader_q`` ``"table"`` or ``"trajectory"``.
    """
    if form not in FORMS:
        raise ValueError(f"unknown HPGD form {form!r}; choose one of {', '.join(FORMS)}")
    check_trajectories(episode_start, leader_rewards, gamma, states)
    beta_col = as_run_column(beta, states.shape[0], leader_rewards)
    check_indices(states, n_states, "state")
    ep = Episodes.of(episode_start, gamma, leader_rewards.dtype)
    g_hat = ep.scan(leader_rewards, reverse=True)
    leader_w, transition_w = direct_weights(ep, g_hat)
    if form == "naive":
        follower_w = torch.zeros_like(leader_rewards)
    else:
        values = _leader_values(
            form,
            leader_q,
            g_hat,
            episode_start,
            states,
            actions,
            n_states,
            n_actions,
            q_table,
            v_table,
        )
        follower_w = _FORM_WEIGHTS[form](ep, values) * ep.inv_episodes / beta_col
    return HPGDWeights(
        follower=follower_w, leader=leader_w, transition=transition_w, n_episodes=ep.n_episodes
    )
