"""One algorithm vocabulary for the outer loops (``docs/theory.md`` §8).

The leader's update rules, by canonical name:

``hpgd``        the HPGD estimate from the followers' samples (variants add a suffix, e.g.
                ``hpgd-published``);
``naive``       the direct terms only (the followers' response ignored);
``zero-order``  Gaussian smoothing of the objective (``zero-order-sampled``: with sampled values);
``exact``       ascent along the exact hypergradient (the paper's AMD baseline in Four-Rooms);
``fixed``       no update (the leader stays at its initial parameters).

Older spellings are accepted where users type them (CLI flags, YAML files) and mapped to the
canonical name, which is what every output records; results layouts fixed elsewhere (the
columns of ``docs/table1.json``: ``hpgd`` / ``amd`` / ``zo``) keep their own labels.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ALGORITHM_ALIASES", "CANONICAL_ALGORITHMS", "canonical_algorithm"]

CANONICAL_ALGORITHMS: tuple[str, ...] = ("hpgd", "naive", "zero-order", "exact", "fixed")
ALGORITHM_ALIASES: dict[str, str] = {
    "zo": "zero-order",
    "zero_order": "zero-order",
    "zero_order_sampled": "zero-order-sampled",
    "amd": "exact",
}


def canonical_algorithm(name: str, allowed: Iterable[str]) -> str:
    """The canonical spelling of ``name`` (an alias or itself), which must be one of ``allowed``;
    raises ``ValueError`` listing the choices otherwise."""
    allowed = tuple(allowed)
    canonical = ALGORITHM_ALIASES.get(name, name)
    if canonical not in allowed:
        aliases = sorted(a for a, c in ALGORITHM_ALIASES.items() if c in allowed)
        raise ValueError(
            f"unknown algorithm {name!r}; choose one of {', '.join(allowed)}"
            + (f" (aliases: {', '.join(aliases)})" if aliases else "")
        )
    return canonical
