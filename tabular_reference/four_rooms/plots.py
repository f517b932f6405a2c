"""Four-Rooms figures: penalty heat map with the follower's most likely path to each goal
(like the paper's penalty figure)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tabular_reference.common.plots import pyplot, save_figure
from tabular_reference.four_rooms import kernels
from tabular_reference.four_rooms.dynamics import SlipModel, resolve_dynamics
from tabular_reference.four_rooms.env import FOUR_ROOMS, MAP, TARGET
from tabular_reference.four_rooms.kernel_args import (
    Contexts,
    Newton,
    follower_model,
    solve_outputs,
)
from tabular_reference.four_rooms.leader import penalties, softmax


def follower_policy(
    x: np.ndarray, goal: int, beta: float, plan: SlipModel, tol: float = 1e-10
) -> np.ndarray:
    """Soft-optimal follower ``pi[S, 4]`` for logits ``x[105]`` and goal cell index, planning
    in the slip model ``plan``."""
    penalty = np.ascontiguousarray(penalties(softmax(x[None]))).copy()
    out = solve_outputs(1)
    kernels.solve_batch(
        follower_model(beta, plan),
        Newton(float(tol), 200),
        Contexts(penalty, np.array([goal]), np.array([0.0])),
        np.zeros((1, FOUR_ROOMS.n_cells)),
        False,
        out,
    )
    return out.policy[0]


def most_likely_path(pi: np.ndarray, goal: int, plan: SlipModel, max_len: int = 200) -> list[int]:
    """Greedy path: from the start, repeatedly move to the most likely next cell
    (``P(s'|s) = sum_a pi(a|s) P(s'|s,a)``) until the goal (or ``max_len`` cells)."""
    env = FOUR_ROOMS
    s = env.start
    path = [s]
    for _ in range(max_len):
        if s == goal:
            break
        probs: dict[int, float] = {}
        for d in range(4):
            n = int(env.nbr[s, d])
            probs[n] = probs.get(n, 0.0) + plan.p_other + plan.p_diff * pi[s, d]
        s = max(probs, key=probs.get)
        path.append(s)
    return path


def plot_penalty_map(
    x: np.ndarray,
    beta: float,
    goals: list[int],
    path: str | os.PathLike[str],
    title: str,
    dynamics: str | dict = "paper",
) -> Path:
    """Heat map of ``|penalty|`` per cell for logits ``x[105]``, walls in grey, with the
    follower's most likely path to each goal (planned in ``dynamics``' planning model)."""
    env = FOUR_ROOMS
    plan = resolve_dynamics(dynamics).plan
    plt = pyplot()
    grid = np.full((len(MAP), len(MAP[0])), np.nan)
    pen = -penalties(softmax(x[None]))[0]
    for i, (r, c) in enumerate(env.cells):
        grid[r, c] = pen[i]
    fig, ax = plt.subplots(figsize=(5.2, 4.8), dpi=120)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.3")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap)
    fig.colorbar(im, ax=ax, label="|penalty|")
    colors = ["tab:red", "tab:orange", "tab:pink"]
    for k, g in enumerate(goals):
        p = most_likely_path(follower_policy(x, g, beta, plan), g, plan)
        rc = np.array([env.cells[i] for i in p])
        ax.plot(
            rc[:, 1],
            rc[:, 0],
            "-o",
            ms=2.5,
            color=colors[k % 3],
            lw=1.5,
            label=f"goal {env.cells[g]}",
        )
        ax.plot(rc[-1, 1], rc[-1, 0], "*", ms=12, color=colors[k % 3])
    ax.plot(TARGET[1], TARGET[0], "s", ms=9, mfc="none", mec="white", mew=2, label="target (8,4)")
    ax.plot(
        env.cells[env.start][1], env.cells[env.start][0], "^", color="white", ms=7, label="start"
    )
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, path)
