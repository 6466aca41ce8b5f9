"""Membership-inference evidence of forgetting: do the forget rows still look like training rows?

Three population attacks from the literature, each trained on rows whose membership is known
(retain rows are members, test rows are not) and then asked about the forget rows:

- :func:`mia_efficacy`: SalUn's MIA-efficacy (Fan et al., ICLR 2024, after Jia et al., NeurIPS
  2023): an RBF SVC on the true-label probability; the share of forget rows called non-member.
- :func:`entropy_mia`: the entropy attack of SSD (Foster et al., AAAI 2024, after Chundawat et
  al., AAAI 2023): logistic regression on the softmax entropy; the share called member.
- :func:`loss_threshold_auc`: ROC AUC of the per-example loss as a membership score.

Each model-level function has an array-level twin (``*_from_scores``) for callers that already
hold the per-example figures. Population attacks like these overstate privacy (Hayes et al.,
SaTML 2025): a low attack score is weak evidence, while a high one is strong evidence that the
forget rows were not forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.svm import SVC
from torch import Tensor, nn

from unlearnkit.errors import InvalidModelError, InvalidRequestError
from unlearnkit.utils.modules import model_dtype, predict_logits, resolve_device

#: ``(inputs, labels)`` of one set of examples.
Split = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class MembershipAttackResult:
    """What a membership attack concluded about the target (forget) rows.

    ``float(result)`` is ``result.score``, so a result can stand in for the headline figure.

    Attributes:
        score: The metric's headline figure in percent (0-100); which way it points is stated by
            the function that returns it.
        predicted_member: Percent of target rows the attack calls members.
        attack_accuracy: Balanced accuracy in percent of the attack on its own training rows
            (members vs non-members). Near 50 means the attack cannot tell retain from test
            rows at all, so its verdict on the forget rows carries no evidence either way.
        n_members: Member rows the attack was trained on.
        n_non_members: Non-member rows the attack was trained on.
        n_targets: Target rows scored.
        target_is_member: The attack's call on each target row, in order (``True``: member).
    """

    score: float
    predicted_member: float
    attack_accuracy: float
    n_members: int
    n_non_members: int
    n_targets: int
    target_is_member: tuple[bool, ...] = ()

    def __float__(self) -> float:
        return self.score


# -- per-example figures ---------------------------------------------------------------------------


def _check_split(inputs: Tensor, labels: Tensor | None, name: str) -> tuple[Tensor, Tensor | None]:
    """Validates one set of examples, returning tensors (labels as int64)."""
    inputs = torch.as_tensor(inputs)
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise InvalidRequestError(f"{name} is empty: need at least one example")
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise InvalidRequestError(f"{name} inputs hold NaN or infinite values")
    if labels is None:
        return inputs, None
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != inputs.shape[0]:
        raise InvalidRequestError(
            f"{name} has {inputs.shape[0]} inputs but labels of shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        # Float labels are accepted only when they are whole numbers: truncating 2.7 to 2
        # would score the wrong class silently.
        if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
            raise InvalidRequestError(f"{name} labels must be whole class indices")
    elif labels.dtype == torch.bool or labels.is_complex():
        raise InvalidRequestError(
            f"{name} labels must be integer class indices, got {labels.dtype}"
        )
    return inputs, labels.long()


def _logits(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor | None,
    name: str,
    batch_size: int,
    device: torch.device | str | None,
) -> tuple[Tensor, Tensor | None]:
    """Float64 logits of ``model`` (eval mode, no grad) on a checked set, and its labels."""
    inputs, labels = _check_split(inputs, labels, name)
    logits = predict_logits(
        model,
        inputs.to(model_dtype(model)),
        batch_size=batch_size,
        device=resolve_device(device, model),
    )
    # Softmax tails and log(1 - p) need more than float32's 7 digits near p = 1.
    logits = logits.detach().cpu().double()
    if not torch.isfinite(logits).all():
        raise InvalidModelError(f"the model returned NaN or infinite logits on {name}")
    if labels is not None:
        num_classes = logits.shape[1]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise InvalidRequestError(
                f"{name} labels must lie in 0..{num_classes - 1} (the model has {num_classes} "
                f"outputs), got {int(labels.min())}..{int(labels.max())}"
            )
        labels = labels.cpu()
    return logits, labels


def _true_log_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """``log p_y`` per row, from a log-softmax (exact where ``p_y`` underflows)."""
    return torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)


def _entropy(logits: Tensor) -> Tensor:
    """Softmax entropy per row, natural log."""
    log_p = torch.log_softmax(logits, dim=1)
    # -sum p log p from log-probabilities: a class whose p underflows to 0 adds 0 * finite = 0,
    # never the 0 * -inf = NaN that log(softmax) would give.
    return -(log_p.exp() * log_p).sum(dim=1)


def membership_signals(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    name: str = "inputs",
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Every per-example signal the attacks read, from ONE forward pass (float64):
    ``p_y`` (true-label probability), ``entropy``, ``loss`` (cross-entropy) and ``correct``
    (the prediction is the label). The same values as :func:`true_label_probability`,
    :func:`softmax_entropy` and :func:`cross_entropy_loss`, at a third of the cost.

    Example:
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> signals = membership_signals(model, torch.ones(1, 2), torch.tensor([1]))
        >>> signals["p_y"].round(2), signals["loss"].round(4), signals["entropy"].round(4)
        (array([0.5]), array([0.6931]), array([0.6931]))
    """
    logits, labels = _logits(model, inputs, labels, name, batch_size, device)
    assert labels is not None
    log_p_y = _true_log_probability(logits, labels)
    return {
        "p_y": log_p_y.exp().numpy(),
        "entropy": _entropy(logits).numpy(),
        "loss": (-log_p_y).numpy(),
        "correct": (logits.argmax(dim=1) == labels).numpy(),
    }


def true_label_probability(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Softmax probability ``p_y`` of each example's true label (float64), model in eval mode.

    Example:
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2))
        >>> x, y = torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0])
        >>> true_label_probability(model, x, y).round(4)
        array([0.5   , 0.8808])
    """
    return membership_signals(model, inputs, labels, batch_size=batch_size, device=device)["p_y"]


def softmax_entropy(
    model: nn.Module,
    inputs: Tensor,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Entropy (natural log) of each example's softmax output (float64), model in eval mode.

    Example:
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> softmax_entropy(model, torch.ones(1, 2)).round(4)  # uniform over 2 classes: log 2
        array([0.6931])
    """
    logits, _ = _logits(model, inputs, None, "inputs", batch_size, device)
    return _entropy(logits).numpy()


def cross_entropy_loss(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Per-example cross-entropy ``-log p_y`` (float64), model in eval mode.

    Example:
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> cross_entropy_loss(model, torch.ones(2, 2), torch.tensor([0, 1])).round(4)
        array([0.6931, 0.6931])
    """
    return membership_signals(model, inputs, labels, batch_size=batch_size, device=device)["loss"]


def logit_scaled_confidence(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """``log p_y - log(1 - p_y)`` per example (float64), computed exactly from the logits.

    Equals ``z_y - logsumexp_{j != y} z_j``, which stays exact where ``1 - p_y`` rounds to 0
    (a confident model), so no clipping is needed; this is the statistic that
    :func:`unlearnkit.metrics.gap.per_example_epsilon` compares across models. Needs at least
    two classes.

    Example:
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2))
        >>> x, y = torch.tensor([[3.0, 1.0], [40.0, 0.0]]), torch.tensor([0, 0])
        >>> logit_scaled_confidence(model, x, y)
        array([ 2., 40.])
    """
    logits, labels = _logits(model, inputs, labels, "inputs", batch_size, device)
    if logits.shape[1] < 2:
        raise InvalidModelError("logit-scaled confidence needs a model with at least 2 outputs")
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


# -- array-level attacks ---------------------------------------------------------------------------


def _scores(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    """A checked, non-empty, finite 1-D float64 array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one score per example (1-D), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: need at least one example")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``size`` of ``n`` rows drawn without replacement; all rows if size >= n."""
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def _check_max_samples(max_samples: int | None) -> None:
    """Raises ValueError unless ``max_samples`` is None or a positive integer."""
    if max_samples is None:
        return
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)):
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")


def _fit_and_score(
    classifier: SVC | LogisticRegression,
    members: np.ndarray,
    non_members: np.ndarray,
    targets: np.ndarray,
) -> tuple[float, float, tuple[bool, ...]]:
    """Fits ``classifier`` (member 1, non-member 0) and returns (percent of targets called
    member, balanced training accuracy in percent, the call on each target)."""
    features = np.concatenate([members, non_members])[:, None]
    truth = np.concatenate([np.ones(members.size), np.zeros(non_members.size)])
    classifier.fit(features, truth)
    train_accuracy = 100.0 * balanced_accuracy_score(truth, classifier.predict(features))
    calls = classifier.predict(targets[:, None]) > 0.5
    member_rate = 100.0 * float(calls.mean())
    return member_rate, float(train_accuracy), tuple(bool(c) for c in calls)


def mia_efficacy_from_scores(
    member_scores: Tensor | np.ndarray,
    non_member_scores: Tensor | np.ndarray,
    target_scores: Tensor | np.ndarray,
    *,
    seed: int = 0,
    max_samples: int | None = None,
) -> MembershipAttackResult:
    """SalUn's MIA-efficacy on precomputed true-label probabilities ``p_y``.

    An RBF SVC (``C=3``, ``gamma="auto"``, no feature scaling, as in SalUn's
    ``evaluation/SVC_MIA.py``) is trained on equal numbers of member rows (label 1) and
    non-member rows (label 0): the larger set is subsampled with ``seed`` to the size of the
    smaller one, and both to at most ``max_samples``. ``score`` is the percent of target rows
    predicted **non-member**: higher means the forget rows look more like unseen data.

    Example:
        >>> members, non_members = np.linspace(0.9, 1.0, 20), np.linspace(0.0, 0.1, 20)
        >>> float(mia_efficacy_from_scores(members, non_members, np.array([0.05, 0.95])))
        50.0
    """
    members = _scores(member_scores, "member_scores")
    non_members = _scores(non_member_scores, "non_member_scores")
    targets = _scores(target_scores, "target_scores")
    _check_max_samples(max_samples)
    size = min(members.size, non_members.size, max_samples or members.size)
    # One generator for both draws, so one seed fixes the whole attack.
    rng = np.random.default_rng(seed)
    members = members[_subsample(members.size, size, rng)]
    non_members = non_members[_subsample(non_members.size, size, rng)]
    member_rate, train_accuracy, calls = _fit_and_score(
        SVC(C=3.0, gamma="auto", kernel="rbf"), members, non_members, targets
    )
    return MembershipAttackResult(
        score=100.0 - member_rate,
        predicted_member=member_rate,
        attack_accuracy=train_accuracy,
        n_members=members.size,
        n_non_members=non_members.size,
        n_targets=targets.size,
        target_is_member=calls,
    )


def entropy_mia_from_scores(
    member_entropies: Tensor | np.ndarray,
    non_member_entropies: Tensor | np.ndarray,
    target_entropies: Tensor | np.ndarray,
    *,
    seed: int = 0,
    max_samples: int | None = None,
) -> MembershipAttackResult:
    """SSD's entropy attack on precomputed softmax entropies.

    Logistic regression (lbfgs, ``class_weight="balanced"``, as in SSD's ``metrics.py``) is
    trained with member rows as 1 and non-member rows as 0; the class weights balance the two
    sets, so by default every row is used. ``max_samples`` caps each set with a seeded
    subsample (for very large retain sets). ``score`` is the percent of target rows predicted
    **member**: lower means the forget rows look more like unseen data.

    Example:
        >>> members, non_members = np.linspace(0.0, 0.1, 30), np.linspace(1.0, 2.0, 10)
        >>> float(entropy_mia_from_scores(members, non_members, np.array([0.05, 1.5, 1.8, 2.0])))
        25.0
    """
    members = _scores(member_entropies, "member_entropies")
    non_members = _scores(non_member_entropies, "non_member_entropies")
    targets = _scores(target_entropies, "target_entropies")
    _check_max_samples(max_samples)
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        members = members[_subsample(members.size, max_samples, rng)]
        non_members = non_members[_subsample(non_members.size, max_samples, rng)]
    classifier = LogisticRegression(class_weight="balanced", solver="lbfgs", random_state=seed)
    member_rate, train_accuracy, calls = _fit_and_score(classifier, members, non_members, targets)
    return MembershipAttackResult(
        score=member_rate,
        predicted_member=member_rate,
        attack_accuracy=train_accuracy,
        n_members=members.size,
        n_non_members=non_members.size,
        n_targets=targets.size,
        target_is_member=calls,
    )


def loss_auc_from_losses(
    member_losses: Tensor | np.ndarray, non_member_losses: Tensor | np.ndarray
) -> float:
    """ROC AUC (0-1) of ``-loss`` as a membership score: the chance that a random member has a
    lower loss than a random non-member, ties counting one half.

    0.5 means the loss carries no membership signal; 1.0 means every member has a lower loss
    than every non-member.

    Example:
        >>> loss_auc_from_losses(np.array([0.1, 0.2]), np.array([0.15, 3.0]))
        0.75
    """
    members = _scores(member_losses, "member_losses")
    non_members = _scores(non_member_losses, "non_member_losses")
    truth = np.concatenate([np.ones(members.size), np.zeros(non_members.size)])
    # Lower loss means member, so the score that rises with membership is the negated loss.
    return float(roc_auc_score(truth, -np.concatenate([members, non_members])))


# -- model-level attacks ---------------------------------------------------------------------------


def _unpack(split: Split, name: str) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of a split, or an error naming it."""
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise InvalidRequestError(f"{name} must be a pair (inputs, labels)")
    return split[0], split[1]


def _split_signals(
    model: nn.Module, retain: Split, test: Split, forget: Split, batch_size: int, device: torch.device | str | None
) -> list[dict[str, np.ndarray]]:
    """:func:`membership_signals` of the retain, test and forget splits, in that order."""
    return [
        membership_signals(model, *_unpack(split, name), name=name, batch_size=batch_size, device=device)
        for name, split in (("retain", retain), ("test", test), ("forget", forget))
    ]


def mia_efficacy(
    model: nn.Module,
    retain: Split,
    test: Split,
    forget: Split,
    *,
    seed: int = 0,
    max_samples: int | None = None,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> MembershipAttackResult:
    """SalUn's MIA-efficacy of ``model``: percent of forget rows an attack calls non-member.

    The attack is the "confidence" attack of SalUn's ``evaluation/SVC_MIA.py`` (the entry
    SalUn's README says its MIA-efficacy column reports): an RBF SVC (``C=3``,
    ``gamma="auto"``) on the true-label probability ``p_y``, trained with retain rows as members
    and test rows as non-members in equal numbers. SalUn takes the *first* ``len(test)`` retain
    rows; here the larger set is subsampled at random with ``seed`` instead, which does not
    depend on how the retain rows happen to be ordered. ``max_samples`` caps both sets (the SVC
    costs grow quadratically with rows).

    ``score`` is the MIA-efficacy in percent: higher means more forget rows look unseen. A
    retrained model is the reference, not 100: a model that never saw the forget rows still
    calls some of them members. Check ``attack_accuracy``: near 50 the attack cannot tell
    retain from test rows, and the efficacy is uninformative.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
        >>> result = mia_efficacy(model, (x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:]))
        >>> 0.0 <= result.score <= 100.0, result.n_members, result.n_targets
        (True, 10, 10)
    """
    signals = _split_signals(model, retain, test, forget, batch_size, device)
    return mia_efficacy_from_scores(*(s["p_y"] for s in signals), seed=seed, max_samples=max_samples)


def entropy_mia(
    model: nn.Module,
    retain: Split,
    test: Split,
    forget: Split,
    *,
    seed: int = 0,
    max_samples: int | None = None,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> MembershipAttackResult:
    """SSD's entropy membership attack on ``model``: percent of forget rows called member.

    Logistic regression on the softmax entropy, retain rows as members and test rows as
    non-members, balanced by class weights (SSD's ``get_membership_attack_prob``; labels are
    only needed to check the sets). ``score`` is the mean predicted-member rate on the forget
    rows in percent: lower means more forget rows look unseen; compare with a retrained model.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
        >>> result = entropy_mia(model, (x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:]))
        >>> 0.0 <= result.score <= 100.0
        True
    """
    # Labels are checked although the entropy ignores them: the same input contract as the
    # other attacks, so a wrong split fails here too rather than scoring silently.
    signals = _split_signals(model, retain, test, forget, batch_size, device)
    return entropy_mia_from_scores(*(s["entropy"] for s in signals), seed=seed, max_samples=max_samples)


def loss_threshold_auc(
    model: nn.Module,
    members: Split,
    non_members: Split,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> float:
    """ROC AUC (0-1) of the per-example cross-entropy as a membership score (lower = member).

    On the forget rows against test rows, a value near 0.5 means the loss no longer singles
    out the forget rows; on retain rows against test rows it shows how much signal the loss
    carries at all for this model.

    Example:
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2))
        >>> seen = (torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1]))
        >>> unseen = (torch.tensor([[1.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 1]))
        >>> loss_threshold_auc(model, seen, unseen)
        1.0
    """
    losses = []
    for name, split in (("members", members), ("non_members", non_members)):
        logits, labels = _logits(model, *_unpack(split, name), name, batch_size, device)
        losses.append((-_true_log_probability(logits, labels)).numpy())
    return loss_auc_from_losses(*losses)
