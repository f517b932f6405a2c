"""The numba kernel of the tax-design surrogate gradient
(:func:`tabular_reference.tax_design.hypergradient.hypergradient`): the per-step weights of the
core estimator summed per cell of the small ``theta``-dependent tables each step's term reads, so
that autograd runs over the tables only (the same sum, reordered)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from tabular_reference.common.kernel_tuples import kernel_tuple

__all__ = ["CellSums", "StepWeights", "Steps", "TransitionTerm", "aggregate"]


@kernel_tuple
class Steps(NamedTuple):
    """``[R, T]`` sampled steps: asset bin, flow group, household type, action, next bin."""

    state: np.ndarray
    flow: np.ndarray
    context: np.ndarray
    action: np.ndarray
    next_state: np.ndarray


@kernel_tuple
class StepWeights(NamedTuple):
    """``[R, T]`` per-step weights of the core estimator (``HPGDWeights``)."""

    leader: np.ndarray
    follower: np.ndarray
    transition: np.ndarray


@kernel_tuple
class TransitionTerm(NamedTuple):
    """How the follower's transition term enters: with ``score`` its weight
    ``gamma follower_t (V*(s') - E[V*(s') | s, f])`` joins the transition weight (``V[R, C, S]``,
    ``expected[R, C, S, F]``); otherwise the follower weight is summed per (type, bin, flow)."""

    score: bool
    gamma: float
    V: np.ndarray
    expected: np.ndarray


@kernel_tuple
class CellSums(NamedTuple):
    """The weight sums per table cell, ``[R, n]``: the leader's per action, the follower's per
    (type, action) (Cobb-Douglas term) and per (type, bin, flow) (``gamma (K V*)``), and the
    transition weights per (flow, offset) (``log D``) and per (bin, flow) (``log Z``)."""

    leader_action: np.ndarray
    cobb_douglas: np.ndarray
    expected_next: np.ndarray
    log_offset: np.ndarray
    log_normaliser: np.ndarray


@njit(cache=True, nogil=True)
def aggregate(weights, steps, clipped, d_lo, term, sums):
    """Add the step ``weights`` of ``steps`` to their table cells in ``sums`` (module
    docstring); ``clipped[R, S, F]`` marks the rows whose mean is clipped (no ``tau``
    dependence), ``d_lo`` is the kernel's first offset. Returns True if a weighted, unclipped
    transition lies outside the band of offsets."""
    # read the arrays out of the tuples once, not at every step
    state, flow, context, action, next_state = steps
    w_leader, w_follower, w_transition = weights
    score, gamma, V, expected = term
    leader_action, cobb_douglas, expected_next, log_offset, log_normaliser = sums
    R, T = state.shape
    A = leader_action.shape[1]
    S, F = clipped.shape[1], clipped.shape[2]
    L = log_offset.shape[1] // F
    bad = False
    for r in range(R):
        for t in range(T):
            s, f, c, a, s2 = state[r, t], flow[r, t], context[r, t], action[r, t], next_state[r, t]
            wf = w_follower[r, t]
            leader_action[r, a] += w_leader[r, t]
            cobb_douglas[r, c * A + a] += wf
            tw = w_transition[r, t]
            if score:
                tw += gamma * wf * (V[r, c, s2] - expected[r, c, s, f])
            else:
                expected_next[r, (c * S + s) * F + f] += wf
            if tw != 0.0 and not clipped[r, s, f]:
                k = s2 - s - d_lo
                if k < 0 or k >= L:
                    bad = True
                else:
                    log_offset[r, f * L + k] += tw
                    log_normaliser[r, s * F + f] += tw
    return bad
