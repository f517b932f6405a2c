"""Exact references for the language-model core (enumerable tasks, ``docs/theory.md`` §3):
:mod:`align_cbrl.reference.tiny_language`."""
