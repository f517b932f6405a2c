"""Leader (incentive) models: the leader's parameters ``x`` (``docs/theory.md`` §1, §3)."""

from align_cbrl.leaders.base import (
    Leader,
    build_leader,
    known_leaders,
    register_leader,
)
from align_cbrl.leaders.neural import NeuralShapingLeader
from align_cbrl.leaders.parametrization import WeightParametrization
from align_cbrl.leaders.pretrained import load_leader, push_to_hub, read_pretrained_config
from align_cbrl.leaders.weights import WeightLeader

__all__ = [
    "Leader",
    "NeuralShapingLeader",
    "WeightLeader",
    "WeightParametrization",
    "build_leader",
    "known_leaders",
    "load_leader",
    "push_to_hub",
    "read_pretrained_config",
    "register_leader",
]
