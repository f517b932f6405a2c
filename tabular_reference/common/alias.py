"""Walker's alias method (Vose's construction), shared by the tabular samplers.

A law over ``K`` outcomes is stored as thresholds ``prob[k]`` and aliases ``alias[k]``: draw
``u`` uniform on ``[0, 1)``, take bin ``k = floor(u K)``, and return ``k`` if ``u K - k < prob[k]``
else ``alias[k]``. One uniform and one comparison per draw.
"""

from __future__ import annotations

from numba import njit

__all__ = ["vose"]


@njit(cache=True, nogil=True, inline="always")
def vose(scaled, n, alias, small, large):
    """Vose's construction in place for the first ``n`` entries of ``scaled`` (probabilities
    times ``n``): on return ``scaled[k]`` is the threshold of bin ``k`` and ``alias[k]`` its alias
    (``small``, ``large``: integer scratch of length ``>= n``)."""
    n_small = 0
    n_large = 0
    for k in range(n):
        alias[k] = k
        if scaled[k] < 1.0:
            small[n_small] = k
            n_small += 1
        else:
            large[n_large] = k
            n_large += 1
    while n_small > 0 and n_large > 0:
        n_small -= 1
        lo = small[n_small]
        hi = large[n_large - 1]
        alias[lo] = hi
        scaled[hi] = (scaled[hi] + scaled[lo]) - 1.0
        if scaled[hi] < 1.0:
            n_large -= 1
            small[n_small] = hi
            n_small += 1
    for j in range(n_large):
        scaled[large[j]] = 1.0
    for j in range(n_small):  # round-off leftovers
        scaled[small[j]] = 1.0
