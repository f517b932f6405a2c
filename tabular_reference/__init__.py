"""Exact tabular reference for align_cbrl: Four-Rooms reward shaping and tax design.

Reproduces the experiments of "Contextual Bilevel Reinforcement Learning for Incentive Alignment"
(Thoma et al., NeurIPS 2024) with exact follower solutions and exact hypergradients, and validates
the estimators of the ``align_cbrl`` math core against them.
"""
