"""Four-Rooms environment (``docs/theory.md`` §5): map, slip dynamics, contexts.

Cells are indexed by the row-major order of the 104 free cells of the 13 x 13 map, so the
up/down neighbours of a cell are at most :data:`BANDWIDTH` indices away and the linear systems
``I - gamma P_pi`` of the follower and leader are banded.

Dynamics: actions 0..3 = up, right, down, left; moving into a wall leaves the agent in place.
The slip probabilities are not fixed here: a :class:`~tabular_reference.four_rooms.dynamics.SlipModel`
gives ``P(d | a) = p_other + (p_intended - p_other) [d == a]`` over the four *directions* ``d``,
and :mod:`tabular_reference.four_rooms.dynamics` names the planning and sampling models of each
configuration (``paper``: 0.56 / 0.1467, ``notes``: 0.67 / 0.11, ``published``: plans in the first,
samples from the second).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tabular_reference.four_rooms.dynamics import SlipModel

MAP = (
    "xxxxxxxxxxxxx",
    "x     x     x",
    "x     x     x",
    "x           x",
    "x     x     x",
    "x     x     x",
    "xx xxxx     x",
    "x     xxx xxx",
    "x     x     x",
    "x     x     x",
    "x           x",
    "x     x     x",
    "xxxxxxxxxxxxx",
)
START = (4, 1)
TARGET = (8, 4)
GOALS = ((1, 9), (11, 11))
DOORWAYS = ((3, 6), (6, 2), (7, 9), (10, 6))
GAMMA = 0.99
MAX_EPISODE_STEPS = 200
BUDGET = 0.2
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # up, right, down, left
N_ACTIONS = 4


@dataclass(frozen=True)
class FourRooms:
    """Static layout: ``cells[i] = (row, col)``, ``index[(row, col)] = i``, ``nbr[i, d]`` the cell
    reached by moving in direction ``d`` (itself at a wall), ``bandwidth`` of the transition
    structure, and the indices of start, target and the goals."""

    cells: tuple[tuple[int, int], ...]
    index: dict[tuple[int, int], int]
    nbr: np.ndarray  # int64 [S, 4]
    bandwidth: int
    start: int
    target: int
    goals: tuple[int, ...]

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def n_params(self) -> int:
        """105 leader logits: one per free cell plus one "unused" slot (the last)."""
        return len(self.cells) + 1

    def goal_index(self, goal: tuple[int, int]) -> int:
        if tuple(goal) not in self.index:
            raise ValueError(f"goal {tuple(goal)} is not a free cell of the Four-Rooms map")
        return self.index[tuple(goal)]

    def dense_transitions(self, slip: SlipModel) -> np.ndarray:
        """Dense ``P[s, a, s']`` (float64) of the slip model ``slip``."""
        S = self.n_cells
        P = np.zeros((S, N_ACTIONS, S))
        for s in range(S):
            for a in range(N_ACTIONS):
                for d in range(4):
                    P[s, a, self.nbr[s, d]] += slip.p_intended if d == a else slip.p_other
        return P


def build() -> FourRooms:
    """Parse :data:`MAP` into a :class:`FourRooms` layout."""
    cells = [(r, c) for r, row in enumerate(MAP) for c, ch in enumerate(row) if ch != "x"]
    index = {rc: i for i, rc in enumerate(cells)}
    nbr = np.zeros((len(cells), 4), dtype=np.int64)
    for i, (r, c) in enumerate(cells):
        for d, (dr, dc) in enumerate(MOVES):
            nbr[i, d] = index.get((r + dr, c + dc), i)
    bw = int(np.abs(nbr - np.arange(len(cells))[:, None]).max())
    return FourRooms(
        cells=tuple(cells),
        index=index,
        nbr=nbr,
        bandwidth=bw,
        start=index[START],
        target=index[TARGET],
        goals=tuple(index[g] for g in GOALS),
    )


FOUR_ROOMS = build()
