"""The repair scenario: unlearn corrupted training data and measure how much is restored.

Idea from RESTOR (Rezaei et al., "RESTOR: Knowledge Recovery in Machine Unlearning", TMLR 2025,
https://arxiv.org/abs/2411.00204), there for language models, here for image classifiers: some
training rows ``D_c`` are corrupted, either mislabelled (:func:`mislabel`) or poisoned with a
backdoor trigger and relabelled to a target class (:func:`add_backdoor`). Then

1. ``M_clean`` is trained on the clean part ``D`` (every training row except ``D_c``) and
   ``M_corrupt`` on ``D + D_c`` (the training set with the corrupted rows in place of the
   originals), from the same initial weights and recipe;
2. ``D_c`` is unlearned from ``M_corrupt`` with each method, in misclassification mode (do not
   predict the corrupt label) and, where the method supports it, in relabeling mode with the
   *true* labels as new labels (the instance-wise unlearning paper's answer to this case; for the
   backdoor, the true label of a poisoned image is the original label of the image it was made
   from);
3. each result is scored with :func:`~unlearnkit.metrics.restoration.restoration_score` on the
   affected set: the clean test set for mislabelling; for the backdoor, the triggered test images
   of classes other than the target (the clean test set barely sees a backdoor), where the attack
   success rate (:func:`~unlearnkit.metrics.restoration.attack_success_rate`) is reported too.

Methods that need retain data (``data_access = "forget+retain"``) get the clean part ``D``.
``retrain`` then trains a fresh model on ``D``: the same data as ``M_clean``, which is why it is
the reference of this scenario (give it the recipe's epochs, batch size, learning rate and weight
decay through ``hyperparams`` to make it match ``M_clean``'s training).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from unlearnkit.api import unlearn
from unlearnkit.errors import NonFiniteError
from unlearnkit.methods.registry import method_class
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.metrics.restoration import RestorationScore, attack_success_rate, restoration_score
from unlearnkit.models.small_cnn import SmallCNN
from unlearnkit.models.training import TrainRecipe, train_classifier
from unlearnkit.utils.hashing import state_dict_sha256
from unlearnkit.utils.versions import environment_versions

#: Kinds of corruption :func:`run_repair` knows.
CorruptionKind = Literal["mislabel", "backdoor"]
#: Unlearning modes of the scenario.
RepairMode = Literal["misclassify", "relabel"]

#: A small, fast recipe for 8x8 digits: 10 epochs of the default model's recipe.
REPAIR_DIGITS_RECIPE = TrainRecipe(epochs=10, batch_size=64, lr=2e-3, weight_decay=1e-4, seed=0)


@dataclass(frozen=True)
class TriggerPatch:
    """A square backdoor trigger stamped into a corner of every channel of an image.

    Attributes:
        size: Side of the square in pixels, 2 (for 8x8 digits; 3-4 for 28x28 or 32x32 images).
        value: Pixel value of the square, 1.0 (the brightest value of inputs in ``[0, 1]``).
        corner: ``"bottom-right"`` (default), ``"bottom-left"``, ``"top-right"`` or ``"top-left"``.
            The default is where handwritten digits are mostly blank, so the patch is not
            confused with a stroke.
    """

    size: int = 2
    value: float = 1.0
    corner: str = "bottom-right"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"patch size must be an int >= 1, got {self.size!r}")
        if self.corner not in ("bottom-right", "bottom-left", "top-right", "top-left"):
            raise ValueError(f"unknown corner {self.corner!r}")


def apply_trigger(inputs: Tensor, patch: TriggerPatch = TriggerPatch()) -> Tensor:
    """A copy of ``inputs`` ``(N, C, H, W)`` with ``patch`` stamped on every image.

    Raises:
        ValueError: If ``inputs`` is not 4-D or the patch does not fit the images.

    Example:
        >>> x = apply_trigger(torch.zeros(1, 1, 4, 4))
        >>> x[0, 0].tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    """
    if inputs.dim() != 4:
        raise ValueError(f"apply_trigger needs (N, C, H, W) images, got shape {tuple(inputs.shape)}")
    height, width = inputs.shape[-2:]
    s = patch.size
    if s > height or s > width:
        raise ValueError(f"a {s}x{s} patch does not fit {height}x{width} images")
    rows = slice(height - s, height) if patch.corner.startswith("bottom") else slice(0, s)
    cols = slice(width - s, width) if patch.corner.endswith("right") else slice(0, s)
    stamped = inputs.clone()
    stamped[:, :, rows, cols] = patch.value
    return stamped


def mislabel(labels: Tensor, share: float, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Gives ``round(share * N)`` seeded random training rows a random *other* label.

    Args:
        labels: The true training labels ``(N,)`` (not modified).
        share: Share of rows to corrupt, in ``(0, 1]``; at least one row is corrupted.
        num_classes: Number of classes (at least 2).
        seed: Seed of the choice of rows and of the wrong labels.

    Returns:
        ``(corrupt_labels, ids)``: a copy of ``labels`` with the chosen rows changed, and the
        sorted ids of those rows. Every changed label differs from the original.

    Raises:
        ValueError: On a share outside ``(0, 1]`` or fewer than 2 classes.

    Example:
        >>> y = torch.arange(10) % 3
        >>> corrupt, ids = mislabel(y, 0.3, 3, seed=0)
        >>> len(ids), bool((corrupt[ids] != y[ids]).all()), int((corrupt != y).sum())
        (3, True, 3)
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    if num_classes < 2:
        raise ValueError(f"mislabelling needs at least 2 classes, got {num_classes}")
    labels = torch.as_tensor(labels).long()
    n = labels.shape[0]
    count = max(1, int(round(share * n)))
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(np.sort(rng.choice(n, size=count, replace=False))).long()
    # A shift in 1..C-1 modulo C is uniform over the other classes and never the label itself.
    shift = torch.from_numpy(rng.integers(1, num_classes, size=count)).long()
    corrupt = labels.clone()
    corrupt[ids] = (labels[ids] + shift) % num_classes
    return corrupt, ids


def add_backdoor(
    inputs: Tensor, labels: Tensor, n: int, target: int, seed: int, patch: TriggerPatch = TriggerPatch()
) -> tuple[Tensor, Tensor, Tensor]:
    """Poisons ``n`` seeded random training images of classes other than ``target``: stamps the
    trigger ``patch`` on them and gives them the label ``target`` (a BadNets-style backdoor).

    Args:
        inputs: Training images ``(N, C, H, W)`` (not modified).
        labels: Their true labels (not modified).
        n: Number of images to poison.
        target: The class triggered images should be predicted as.
        seed: Seed of the choice of images.
        patch: The trigger, a 2x2 bright square in the bottom-right corner by default.

    Returns:
        ``(poisoned_inputs, poisoned_labels, ids)``: copies of the training set with the rows
        ``ids`` (sorted) replaced by their poisoned versions. The true labels of the poisoned
        images are ``labels[ids]``.

    Raises:
        ValueError: If fewer than ``n`` images are of other classes, or ``n < 1``.

    Example:
        >>> x, y = torch.zeros(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> px, py, ids = add_backdoor(x, y, 2, target=0, seed=0)
        >>> py[ids].tolist(), bool((y[ids] != 0).all()), float(px[ids].sum())
        ([0, 0], True, 8.0)
    """
    labels = torch.as_tensor(labels).long()
    candidates = torch.nonzero(labels != target).flatten().numpy()
    if not 1 <= n <= len(candidates):
        raise ValueError(f"n must be in 1..{len(candidates)} (images of classes other than {target}), got {n}")
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(np.sort(rng.choice(candidates, size=n, replace=False))).long()
    poisoned_inputs, poisoned_labels = inputs.clone(), labels.clone()
    poisoned_inputs[ids] = apply_trigger(inputs[ids], patch)
    poisoned_labels[ids] = target
    return poisoned_inputs, poisoned_labels, ids


@dataclass
class RepairRun:
    """One method in one mode, applied to ``M_corrupt``.

    Attributes:
        method: Registry name.
        mode: ``"misclassify"`` or ``"relabel"`` (new labels = the true labels).
        status: ``"ok"``, ``"unsupported"`` (the method cannot relabel) or ``"diverged"``.
        acc_test: Accuracy in percent on the clean test set.
        restoration: ``R`` on the scenario's affected set (``None`` if undefined or not run).
        restoration_by_set: The full :class:`RestorationScore` per evaluation set, as dicts.
        asr: Attack success rate in percent after unlearning (backdoor only).
        acc_forget_true: Accuracy in percent on ``D_c`` with the true labels after unlearning.
        converged: Whether the method met its goal on ``D_c``.
        steps: Optimiser steps.
        seconds: Wall time of the unlearning call.
        sha256: Hash of the unlearned model's state dict.
        error: The error message of a diverged run.
    """

    method: str
    mode: str
    status: str = "ok"
    acc_test: float | None = None
    restoration: float | None = None
    restoration_by_set: dict[str, dict[str, Any]] = field(default_factory=dict)
    asr: float | None = None
    acc_forget_true: float | None = None
    converged: bool | None = None
    steps: int | None = None
    seconds: float | None = None
    sha256: str | None = None
    error: str | None = None


@dataclass
class RepairReport:
    """Everything one repair scenario measured, JSON-ready through :meth:`to_dict`.

    Attributes:
        kind: ``"mislabel"`` or ``"backdoor"``.
        seed: Seed of the corruption, the models' initialisation and training, and unlearning.
        recipe: The training recipe of both models (its seed is ``seed``).
        corruption: What was corrupted: ``ids``, ``count``, ``share``, and for the backdoor
            ``target`` and ``patch``.
        primary_set: Name of the evaluation set ``restoration`` refers to (``"test"`` or
            ``"triggered"``).
        clean: ``M_clean``'s figures: ``acc_test``, ``sha256``, ``asr`` (backdoor), training
            ``seconds``.
        corrupt: The same for ``M_corrupt``, plus ``affected`` (``|A|`` per evaluation set).
        runs: One :class:`RepairRun` per method and mode.
        versions: Library versions (:func:`~unlearnkit.utils.versions.environment_versions`).
    """

    kind: str
    seed: int
    recipe: dict[str, Any]
    corruption: dict[str, Any]
    primary_set: str
    clean: dict[str, Any]
    corrupt: dict[str, Any]
    runs: list[RepairRun]
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return asdict(self)


def _train(build: Callable[[], nn.Module], inputs: Tensor, labels: Tensor, recipe: TrainRecipe) -> tuple[nn.Module, float]:
    """Builds a model under the recipe's seed (global RNG untouched) and trains it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build()
    started = time.perf_counter()
    train_classifier(model, inputs, labels, recipe)
    return model, time.perf_counter() - started


def run_repair(
    data: Any,
    *,
    kind: CorruptionKind = "mislabel",
    methods: Sequence[str] = ("l2ul",),
    modes: Sequence[RepairMode] = ("misclassify", "relabel"),
    seed: int = 0,
    recipe: TrainRecipe = REPAIR_DIGITS_RECIPE,
    share: float = 0.03,
    n_poison: int = 40,
    target: int = 0,
    patch: TriggerPatch = TriggerPatch(),
    hyperparams: Mapping[str, Mapping[str, Any]] | None = None,
    build: Callable[[], nn.Module] | None = None,
    progress: bool = False,
) -> RepairReport:
    """Runs the repair scenario on one data split for one seed.

    Args:
        data: A :class:`~unlearnkit.data.DataSplit` or anything with ``x_train``, ``y_train``,
            ``x_test``, ``y_test`` and ``num_classes``.
        kind: ``"mislabel"`` (:func:`mislabel` with ``share``) or ``"backdoor"``
            (:func:`add_backdoor` with ``n_poison``, ``target`` and ``patch``).
        methods: Registered method names applied to ``M_corrupt``.
        modes: ``"misclassify"`` and/or ``"relabel"`` (new labels = the true labels; skipped with
            status ``"unsupported"`` for methods with ``supports_relabel = False``).
        seed: Seed of the corruption, of both models (their recipe's seed is replaced by it) and
            of every unlearning run.
        recipe: Training recipe of ``M_clean`` and ``M_corrupt``; default
            :data:`REPAIR_DIGITS_RECIPE` (10 epochs).
        share: Share of training rows mislabelled, 0.03.
        n_poison: Number of poisoned training images, 40.
        target: The backdoor's target class, 0.
        patch: The backdoor's trigger.
        hyperparams: Per method name, its hyperparameters.
        build: Returns the untrained model (called under the seed); default a ``SmallCNN`` sized
            from the data.
        progress: Show progress bars of the unlearning runs.

    Returns:
        :class:`RepairReport`.

    Raises:
        ValueError: On an unknown ``kind`` or mode.
    """
    if kind not in ("mislabel", "backdoor"):
        raise ValueError(f"kind must be 'mislabel' or 'backdoor', got {kind!r}")
    for mode in modes:
        if mode not in ("misclassify", "relabel"):
            raise ValueError(f"mode must be 'misclassify' or 'relabel', got {mode!r}")
    recipe = replace(recipe, seed=seed)
    if build is None:
        channels, size = int(data.x_train.shape[1]), int(data.x_train.shape[-1])
        num_classes = int(data.num_classes)

        def build() -> nn.Module:
            return SmallCNN(channels, num_classes, image_size=size)

    x_true, y_true = data.x_train, data.y_train.long()
    corruption: dict[str, Any]
    if kind == "mislabel":
        y_corrupt, ids = mislabel(y_true, share, int(data.num_classes), seed)
        x_corrupt = x_true
        corruption = {"share": share}
    else:
        x_corrupt, y_corrupt, ids = add_backdoor(x_true, y_true, n_poison, target, seed, patch)
        corruption = {"target": target, "patch": asdict(patch)}
    corruption.update(count=int(ids.numel()), ids=ids.tolist())
    keep = torch.ones(y_true.shape[0], dtype=torch.bool)
    keep[ids] = False
    clean_part = (x_true[keep], y_true[keep])  # D: also the retain data of the methods
    forget_x, forget_y, true_labels = x_corrupt[ids], y_corrupt[ids], y_true[ids]

    clean_model, clean_seconds = _train(build, *clean_part, recipe)
    corrupt_model, corrupt_seconds = _train(build, x_corrupt, y_corrupt, recipe)

    test = (data.x_test, data.y_test.long())
    sets: dict[str, tuple[Tensor, Tensor]] = {"test": test}
    triggered: Tensor | None = None
    if kind == "backdoor":
        # Test images of the target class would count as attack successes without a backdoor.
        others = test[1] != target
        triggered = apply_trigger(test[0][others], patch)
        sets["triggered"] = (triggered, test[1][others])
    primary = "triggered" if kind == "backdoor" else "test"

    def figures(model: nn.Module) -> dict[str, Any]:
        record: dict[str, Any] = {"acc_test": accuracy(model, *test), "sha256": state_dict_sha256(model)}
        if triggered is not None:
            record["asr"] = attack_success_rate(model, triggered, target)
        return record

    clean_record = {**figures(clean_model), "seconds": clean_seconds}
    corrupt_record = {**figures(corrupt_model), "seconds": corrupt_seconds}
    corrupt_record["affected"] = {
        name: restoration_score(clean_model, corrupt_model, corrupt_model, *xy).affected for name, xy in sets.items()
    }

    runs: list[RepairRun] = []
    settings = dict(hyperparams or {})
    for method in methods:
        spec = method_class(method)
        retain = clean_part if spec.data_access == "forget+retain" else None
        for mode in modes:
            run = RepairRun(method, mode)
            runs.append(run)
            if mode == "relabel" and not spec.supports_relabel:
                run.status = "unsupported"
                continue
            new_labels = true_labels if mode == "relabel" else None
            try:
                result = unlearn(
                    corrupt_model, (forget_x, forget_y), method, new_labels=new_labels, seed=seed, retain=retain,
                    progress=progress, **dict(settings.get(method, {})),
                )
            except NonFiniteError as err:
                # Recorded, not raised: one diverging method must not hide the others' figures.
                run.status, run.error = "diverged", str(err)
                continue
            model = result.model
            scores: dict[str, RestorationScore] = {
                name: restoration_score(clean_model, corrupt_model, model, *xy) for name, xy in sets.items()
            }
            record = figures(model)
            run.acc_test, run.sha256, run.asr = record["acc_test"], record["sha256"], record.get("asr")
            run.restoration = scores[primary].restoration
            run.restoration_by_set = {name: score.to_dict() for name, score in scores.items()}
            run.acc_forget_true = accuracy(model, forget_x, true_labels)
            run.converged, run.steps, run.seconds = result.converged, result.steps, result.seconds

    return RepairReport(
        kind=kind,
        seed=seed,
        recipe=recipe.as_dict(),
        corruption=corruption,
        primary_set=primary,
        clean=clean_record,
        corrupt=corrupt_record,
        runs=runs,
        versions=environment_versions(),
    )


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return statistics.fmean(defined) if defined else None


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


#: Columns of :func:`repair_summary`.
REPAIR_SUMMARY_HEADERS: tuple[str, ...] = (
    "kind", "model", "mode", "R", "R defined", "Acc(D_test)", "Acc(D_c,true)", "ASR before", "ASR after",
)


def repair_summary(reports: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[list[object]]:
    """Rows of means over seeds of :meth:`RepairReport.to_dict` reports, per corruption kind:
    ``M_clean`` and ``M_corrupt`` first, then each method and mode (columns
    :data:`REPAIR_SUMMARY_HEADERS`). R is averaged over the seeds where the affected set was
    non-empty (``R defined`` says how many); a method with no successful run shows its status.
    """
    rows: list[list[object]] = []
    kinds = list(dict.fromkeys(r["kind"] for r in reports))
    for kind in kinds:
        mine = [r for r in reports if r["kind"] == kind]
        primary = mine[0]["primary_set"]
        affected = [r["corrupt"]["affected"][primary] for r in mine]
        asr_before = _mean([r["corrupt"].get("asr") for r in mine])
        rows.append([kind, "M_clean", "-", "1.00", f"{len(mine)}/{len(mine)}", _mean([r["clean"]["acc_test"] for r in mine]),
                     None, None, _mean([r["clean"].get("asr") for r in mine])])
        rows.append([kind, "M_corrupt", "-", "0.00", f"|A| {statistics.fmean(affected):.1f}",
                     _mean([r["corrupt"]["acc_test"] for r in mine]), None, asr_before, asr_before])
        modes = list(dict.fromkeys(run["mode"] for r in mine for run in r["runs"]))
        for method in methods:
            for mode in modes:
                runs = [run for r in mine for run in r["runs"] if run["method"] == method and run["mode"] == mode]
                ok = [run for run in runs if run["status"] == "ok"]
                if not ok:
                    rows.append([kind, method, mode, runs[0]["status"] if runs else "-", "", None, None, None, None])
                    continue
                defined = [run["restoration"] for run in ok if run["restoration"] is not None]
                rows.append([
                    kind, method, mode, _fraction(_mean(defined)), f"{len(defined)}/{len(runs)}",
                    _mean([run["acc_test"] for run in ok]), _mean([run["acc_forget_true"] for run in ok]),
                    asr_before, _mean([run["asr"] for run in ok]),
                ])
    return rows
