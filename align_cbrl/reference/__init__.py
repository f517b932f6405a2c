"""Exact references for the language-model core (enumerable tasks, ``docs/theory.md`` §3):
:mod:`align_cbrl.reference.tiny_language` (one follower) and
:mod:`align_cbrl.reference.several_followers` (several followers, the weighted mean of §1)."""
