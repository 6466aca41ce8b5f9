"""Metrics of unlearning. Metrics know no method: they take models and data.

- accuracy: :func:`accuracy`, :func:`evaluate`;
- membership inference: :func:`mia_efficacy` (SalUn), :func:`entropy_mia` (SSD),
  :func:`loss_threshold_auc`;
- gap to a retrained model: :func:`average_gap` (SalUn), :func:`per_example_epsilon`,
  :func:`forgetting_score`, :func:`challenge_score` (NeurIPS 2023 challenge);
- representation: :func:`feature_layer`, :func:`extract_features`, :func:`linear_cka`,
  :func:`knn_accuracy`, :func:`representation_report`, :func:`weight_change_by_layer`;
- collateral damage: :func:`collateral_damage`; relearn time: :func:`relearn_steps`;
- per-example membership with shadow models (U-LiRA): :func:`shadow_confidences`, :func:`ulira_attack`;
- the Unlearning Comparator's views: :func:`prediction_matrix`, :func:`privacy_attack` (the
  privacy score PS) with :func:`attack_signals`, :func:`project_2d` and :func:`forget_marks`
  (embedding map);
- repair of corrupted training data: :func:`restoration_score` (RESTOR's R),
  :func:`attack_success_rate` (a backdoor's).
"""

from unlearnkit.metrics.accuracy import accuracy, evaluate
from unlearnkit.metrics.collateral import CollateralDamage, collateral_damage
from unlearnkit.metrics.embedding import forget_marks, project_2d
from unlearnkit.metrics.features import extract_features, extract_layer_features, feature_layer
from unlearnkit.metrics.gap import (
    AVERAGE_GAP_KEYS,
    average_gap,
    challenge_score,
    forgetting_score,
    logit_confidence,
    per_example_epsilon,
    per_example_epsilons,
    unlearning_accuracy,
)
from unlearnkit.metrics.membership import (
    MembershipAttackResult,
    cross_entropy_loss,
    entropy_mia,
    logit_scaled_confidence,
    loss_threshold_auc,
    mia_efficacy,
    softmax_entropy,
    true_label_probability,
)
from unlearnkit.metrics.prediction_matrix import PredictionMatrix, prediction_matrix
from unlearnkit.metrics.privacy import PrivacyAttack, attack_signals, privacy_attack
from unlearnkit.metrics.relearn import RelearnResult, relearn_steps
from unlearnkit.metrics.representation import knn_accuracy, linear_cka, representation_report, weight_change_by_layer
from unlearnkit.metrics.restoration import RestorationScore, attack_success_rate, restoration_score
from unlearnkit.metrics.ulira import ShadowConfidences, ULiRAResult, shadow_confidences, ulira_attack

__all__ = [
    "AVERAGE_GAP_KEYS",
    "CollateralDamage",
    "MembershipAttackResult",
    "PredictionMatrix",
    "PrivacyAttack",
    "RelearnResult",
    "RestorationScore",
    "ShadowConfidences",
    "ULiRAResult",
    "accuracy",
    "attack_signals",
    "attack_success_rate",
    "average_gap",
    "challenge_score",
    "collateral_damage",
    "cross_entropy_loss",
    "entropy_mia",
    "evaluate",
    "extract_features",
    "extract_layer_features",
    "feature_layer",
    "forget_marks",
    "forgetting_score",
    "knn_accuracy",
    "linear_cka",
    "logit_confidence",
    "logit_scaled_confidence",
    "loss_threshold_auc",
    "mia_efficacy",
    "per_example_epsilon",
    "per_example_epsilons",
    "prediction_matrix",
    "privacy_attack",
    "project_2d",
    "relearn_steps",
    "representation_report",
    "restoration_score",
    "shadow_confidences",
    "softmax_entropy",
    "true_label_probability",
    "ulira_attack",
    "unlearning_accuracy",
    "weight_change_by_layer",
]
