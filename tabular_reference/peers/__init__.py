"""Peer methods written against the estimator interface (``docs/validate.md``); importing the
package registers them for the harnesses they support (``bc-hg``: Four-Rooms and tax design)."""

from tabular_reference.peers import bchg  # noqa: F401  (registers "bc-hg")
