"""One algorithm vocabulary for the outer loops (``docs/theory.md`` §8).

The leader's update rules, by name (one spelling each, in code, configs, command lines and
outputs alike):

``hpgd``        the HPGD estimate from the followers' samples (variants add a suffix, e.g.
                ``hpgd-published``);
``naive``       the direct terms only (the followers' response ignored);
``zero_order``  Gaussian smoothing of the objective (``zero_order_sampled``: with sampled
                values);
``exact``       ascent along the exact hypergradient (the paper's AMD baseline in Four-Rooms);
``fixed``       no update (the leader stays at its initial parameters).

Results layouts fixed elsewhere (the columns of ``docs/table1.json``: ``hpgd`` / ``amd`` /
``zo``) keep their own labels.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["ALGORITHMS", "check_algorithm"]

ALGORITHMS: tuple[str, ...] = ("hpgd", "naive", "zero_order", "exact", "fixed")


def check_algorithm(name: str, allowed: Iterable[str]) -> str:
    """``name`` if it is one of ``allowed``; else a one-line ``ValueError`` that lists the
    choices and the closest one."""
    allowed = tuple(allowed)
    if name not in allowed:
        # difflib here, not utils.suggest: the math core imports no other align_cbrl layer
        close = difflib.get_close_matches(str(name), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown algorithm {name!r}{hint}; choose one of " + ", ".join(allowed))
    return name
