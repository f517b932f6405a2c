"""Utilities shared by the tabular experiments: results directories, plots, the leader optimiser."""
