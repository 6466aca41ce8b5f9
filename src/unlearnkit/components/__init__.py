"""Reusable building blocks of unlearning methods: plain functions of (model, data).

Components know no method: each is usable, and tested, on its own.
"""

from unlearnkit.components.attacks import default_l2_eps, targeted_pgd
from unlearnkit.components.importance import mas_importance, min_max_normalise
from unlearnkit.components.regularizers import importance_weighted_l2
from unlearnkit.components.stopping import StopDecision, StopMonitor, StopRule, goal_met

__all__ = [
    "StopDecision",
    "StopMonitor",
    "StopRule",
    "default_l2_eps",
    "goal_met",
    "importance_weighted_l2",
    "mas_importance",
    "min_max_normalise",
    "targeted_pgd",
]
