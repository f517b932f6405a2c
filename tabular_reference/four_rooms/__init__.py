"""Four-Rooms reward shaping, the paper's Table 1 (``docs/theory.md`` §5): environment
(:mod:`env`, :mod:`dynamics`, :mod:`leader`), numba kernels (:mod:`kernels`: banded Newton
follower, exact leader value and adjoint gradient, sampler; :mod:`hpgd_kernels`: fused sampling
and estimation), the exact solver (:mod:`solver`), the hypergradient (:mod:`hypergradient`:
``hypergradient()`` from samples, ``exact_hypergradient()``), the outer loops (:mod:`algorithms`:
HPGD, exact ascent, zero-order, naive), the ``four-rooms`` / ``table1`` CLI, and plots."""
