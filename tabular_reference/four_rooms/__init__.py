"""Four-Rooms reward shaping, the paper's Table 1 (reference notes, section 3): environment,
numba kernels (banded Newton follower, exact leader value and hypergradient, sampler),
algorithms (HPGD, AMD, zero-order, naive), the ``four-rooms`` / ``table1`` CLI, and plots."""
