"""align_cbrl: incentive alignment with contextual bilevel reinforcement learning.

A leader shapes the rewards of followers across contexts and learns how to shape them from what
the followers do, with HPGD (hyper policy gradient descent). The math core (``align_cbrl.estimators``
and friends) depends on torch only; TRL integrations live in their own modules.
"""

__version__ = "0.1.0"
