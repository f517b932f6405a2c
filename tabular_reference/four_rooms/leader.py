"""The leader's parametrisation in Four-Rooms (``docs/theory.md`` §5).

105 logits ``x`` (one per free cell, the last one the "unused" slot); ``sigma = softmax(x)``;
``penalty(cell) = -0.2 * sigma[cell]``; the leader pays ``budget_cost * budget`` once, when the
follower reaches its goal, with ``budget = sum |penalties|`` (the paper calls ``budget_cost``
beta). The paper leaves open whether the goal cell's own (never collected) penalty counts;
``budget_mode`` selects:

* ``"all"``: ``budget = 0.2 * sum_{cells} sigma = 0.2 * (1 - sigma_unused)`` (default; see
  ``docs/four_rooms.md`` for the evidence from the AMD column of Table 1),
* ``"collected"``: ``budget = 0.2 * sum_{cells != goal} sigma``.
"""

from __future__ import annotations

import numpy as np

from tabular_reference.four_rooms.env import BUDGET

BUDGET_MODES = ("all", "collected")


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``x[R, P]``."""
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def penalties(sigma: np.ndarray) -> np.ndarray:
    """``pen[R, S] = -0.2 * sigma[:, :S]`` (S = 104 cells)."""
    return -BUDGET * sigma[:, :-1]


def budget(sigma: np.ndarray, goal: np.ndarray, mode: str = "all") -> np.ndarray:
    """``budget[R]`` = total penalty mass the leader pays for (see module docstring)."""
    if mode == "all":
        return BUDGET * (1.0 - sigma[:, -1])
    if mode == "collected":
        return BUDGET * (1.0 - sigma[:, -1] - sigma[np.arange(len(goal)), goal])
    raise ValueError(f"unknown budget_mode {mode!r}; choose one of {BUDGET_MODES}")


def logits_gradient(
    sigma: np.ndarray,
    grad_penalty: np.ndarray,
    grad_goal_value: np.ndarray,
    budget_cost: float,
    goal: np.ndarray,
    mode: str = "all",
) -> np.ndarray:
    """Chain rule to the logits: given ``grad_penalty[R, S] = dF/dpen`` and
    ``grad_goal_value[R] = dF/dvgoal`` with ``vgoal = -budget_cost * budget``, return
    ``dF/dx[R, S+1]``: ``g_sigma = -0.2 dF/dpen - budget_cost dF/dvgoal dbudget/dsigma`` and
    ``dF/dx_j = sigma_j (g_sigma_j - sum_i sigma_i g_sigma_i)`` (softmax Jacobian)."""
    R, P = sigma.shape
    gs = np.zeros((R, P))
    gs[:, :-1] = -BUDGET * grad_penalty - budget_cost * BUDGET * grad_goal_value[:, None]
    if mode == "collected":
        gs[np.arange(R), goal] += budget_cost * BUDGET * grad_goal_value
    elif mode != "all":
        raise ValueError(f"unknown budget_mode {mode!r}; choose one of {BUDGET_MODES}")
    return sigma * (gs - (sigma * gs).sum(axis=-1, keepdims=True))
