"""The base class every unlearning method derives from.

The base class does everything that is the same for every method, so a method is only its
algorithm: it validates the model and the request, enforces the method's data contract, copies
the model (the caller's is never changed unless ``inplace=True``), seeds every random choice,
times the run, checks the result for NaN and infinity, and builds the
:class:`~unlearnkit.result.UnlearnResult` with per-instance outcomes.
"""

from __future__ import annotations

import abc
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from unlearnkit.components.loop import LoopOutcome
from unlearnkit.components.stopping import StopMonitor, StopRule, goal_met, label_margin
from unlearnkit.components.unseen import per_example_loss, unseen_loss_targets
from unlearnkit.errors import (
    DataContractError,
    InvalidHyperparameterError,
    InvalidModelError,
    InvalidRequestError,
    NonFiniteError,
)
from unlearnkit.models.training import TrainRecipe
from unlearnkit.request import ForgetRequest, instance_sha256
from unlearnkit.result import InstanceOutcome, UnlearnResult
from unlearnkit.utils.hashing import state_dict_sha256
from unlearnkit.utils.memory_format import memory_format_name, preferred_memory_format, running_in
from unlearnkit.utils.modules import check_finite_parameters, copy_model, model_dtype, predict_logits, resolve_device
from unlearnkit.utils.versions import environment_versions

DataAccess = Literal["forget", "forget+retain", "forget+optional-retain"]


class _FromPreset:
    """Sentinel default: the value comes from the chosen preset."""

    def __repr__(self) -> str:
        return "FROM_PRESET"


#: Default of every preset-dependent hyperparameter: take the value from the chosen preset.
FROM_PRESET: Any = _FromPreset()
RetainData = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class MethodRun:
    """What a method's algorithm reports back to the base class.

    Attributes:
        steps: Optimiser steps taken.
        passes: Passes over the method's data.
        converged: Whether the goal held at the end.
        stop_reason: Why the run stopped.
        details: Method-specific figures for the result.
    """

    steps: int
    passes: int
    converged: bool
    stop_reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_loop(cls, outcome: LoopOutcome, **details: Any) -> MethodRun:
        """Wraps the outcome of :func:`~unlearnkit.components.loop.optimise_until`."""
        return cls(outcome.steps, outcome.passes, outcome.converged, outcome.stop_reason, details)


@dataclass
class UnlearnContext:
    """Everything a method's algorithm may use, prepared by the base class.

    Attributes:
        model: The model to update in place: already a copy, on ``device``.
        request: The forget request, on ``device``.
        num_classes: Number of classes the model predicts.
        device: Where to compute.
        generator: CPU generator seeded with ``seed``, for every random choice.
        seed: The seed.
        progress: Whether to show progress bars.
        retain: Retain inputs and labels, only for methods that declare ``forget+retain`` or
            ``forget+optional-retain`` (then ``None`` when not given).
        loss_targets: Per-instance loss targets of the ``unseen`` goal, else ``None``.
        started: ``time.perf_counter()`` at the start of the call (for time caps).
    """

    model: nn.Module
    request: ForgetRequest
    num_classes: int
    device: torch.device
    generator: torch.Generator
    seed: int
    progress: bool
    retain: RetainData | None = None
    loss_targets: Tensor | None = None
    started: float = field(default_factory=time.perf_counter)

    def monitor(self, rule: StopRule) -> StopMonitor:
        """A stop monitor bound to this request's forget set and goal; its time cap counts from the
        start of the call (attacks and importance included)."""
        req = self.request
        return StopMonitor(rule, req.inputs, req.known_labels, req.new_labels, self.loss_targets, started=self.started)

    def goal_holds(self) -> bool:
        """Whether every forget instance meets its goal now (no margin): the ``converged`` of a
        fixed-schedule method."""
        return bool(self.monitor(StopRule(max_passes=None)).goal(self.model).all())


class UnlearningMethod(abc.ABC):
    """Base class of unlearning methods.

    Subclasses set the class attributes, take their hyperparameters as keyword-only
    ``__init__`` arguments stored under the same names (no work in ``__init__`` beyond
    checking them), and implement :meth:`_unlearn`.

    Class attributes:
        name: Registry name.
        summary: One line for ``unlearnkit methods``.
        data_access: ``"forget"`` (uses only the model and the forget set),
            ``"forget+retain"`` (also needs retain data) or ``"forget+optional-retain"`` (works
            from the forget set alone, and uses retain data when it is given).
        supports_relabel: Whether relabeling requests are accepted.
        supports_unseen: Whether ``goal="unseen"`` requests are accepted.
        goal_driven: Whether the method runs until the forget set meets its goal (checked after
            every step, ``stop_reason="goal_reached"`` when it does). ``False`` for methods
            with a fixed schedule (fine-tuning, retraining): they stop with
            ``stop_reason="fixed_schedule"`` and ``converged`` only reports whether the goal
            happens to hold at the end.
        gradient_based: Whether the method changes the model through optimiser steps (``False``
            for closed-form and one-shot methods); wrappers that constrain optimiser steps
            (``gu``) refuse the others.
        needs_labels: Whether the method reads the forget set's labels. Methods that do not
            (``laf``) accept requests without labels; for those, the original model's
            predictions stand in for the labels when the goal is checked and reported (the
            result's ``details["labels"]`` says ``"predicted_by_original"``), and are never
            handed to the method as data it may train on.
        exact: Whether the method deletes exactly, by construction, with no optimiser step
            (``steps = passes = 0``, ``stop_reason="exact_deletion"``, ``details["exact"]``):
            the served weights were trained without the forget rows. Such a method needs a
            model of its own design, built by :meth:`prepare_model`.
        trains_own_model: Whether the method needs a model it trained itself (a training-time
            design such as S3T) rather than any trained classifier; :meth:`prepare_model`
            builds it, and demos, benchmarks and the contract tests call it.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    data_access: ClassVar[DataAccess] = "forget"
    supports_relabel: ClassVar[bool] = True
    supports_unseen: ClassVar[bool] = False
    goal_driven: ClassVar[bool] = True
    gradient_based: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True
    exact: ClassVar[bool] = False
    trains_own_model: ClassVar[bool] = False
    #: Preset name -> values of the preset-dependent hyperparameters. ``"default"`` is the robust
    #: recipe used when no preset is named; ``"paper"`` reproduces the published recipe.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: The preset the instance was built with (methods with presets only).
    preset: str

    def _set_params(self, preset: str, **given: Any) -> None:
        """Stores hyperparameters as attributes, filling ``FROM_PRESET`` ones from ``preset``.

        Raises:
            InvalidHyperparameterError: If the preset is unknown.
        """
        if self.presets and preset not in self.presets:
            raise InvalidHyperparameterError(
                f"method {self.name!r} has no preset {preset!r}; presets: {sorted(self.presets)}"
            )
        table = self.presets.get(preset, {})
        self.preset = preset
        for key, value in given.items():
            if value is FROM_PRESET:
                value = table[key]
            setattr(self, key, value)

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the method's hyperparameters: the keyword-only ``__init__`` arguments of the
        class and of every base class it passes ``**kwargs`` on to, most derived first."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is UnlearningMethod or klass is object:
                continue
            params = inspect.signature(init).parameters.values()
            names += [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in names]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    @classmethod
    def prepare_model(
        cls,
        model: nn.Module,
        train: tuple[Tensor, Tensor],
        *,
        seed: int,
        directory: str | Path,
    ) -> nn.Module:
        """The model this method unlearns from, for a classifier trained on ``train``.

        Most methods unlearn from any trained classifier and return ``model`` itself. A
        training-time design (``trains_own_model = True``) trains its own form of the model on
        ``train`` instead, writing its files under ``directory``; every training row may then
        be named in a later request.

        Args:
            model: The trained classifier (its input shape and class count describe the task).
            train: Training inputs and labels.
            seed: Seed of every random choice of the training.
            directory: Where a training-time design writes its checkpoints.

        Returns:
            The model to hand to :meth:`unlearn`.
        """
        return model

    @classmethod
    def params_for_recipe(cls, recipe: TrainRecipe) -> dict[str, Any]:
        """Hyperparameters that make this method train the way ``recipe`` trained the model.

        For methods that train a model from scratch (``retrain``), whose faithful setting is
        the model's own pretraining recipe; demos and benchmarks apply them under any
        hyperparameter the user gives. Empty for every other method.
        """
        return {}

    def get_params(self) -> dict[str, Any]:
        """Every hyperparameter of this instance, by name (as given or defaulted)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def resolved_params(self, context: UnlearnContext) -> dict[str, Any]:
        """Hyperparameters with data-dependent defaults filled in; recorded in the result.

        Subclasses whose defaults depend on the data (e.g. an attack radius scaled to the input
        size) override this.
        """
        return self.get_params()

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def unlearn(
        self,
        model: nn.Module,
        request: ForgetRequest,
        *,
        retain: RetainData | None = None,
        heldout: RetainData | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        inplace: bool = False,
        progress: bool = False,
        memory_format: str = "auto",
    ) -> UnlearnResult:
        """Forgets ``request``'s instances from ``model``.

        Args:
            model: Any ``nn.Module`` mapping a float batch to ``(N, C)`` logits.
            request: The validated forget request.
            retain: Retain inputs and labels, for methods that declare ``forget+retain`` or
                ``forget+optional-retain`` only.
            heldout: Inputs and labels the model was never trained on; with ``goal="unseen"``
                they calibrate the loss targets (without them, images use shifted copies).
                Never trained on.
            seed: Seed of every random choice; the same seed gives the same weights.
            device: Where to run; defaults to the model's device.
            inplace: Update ``model`` itself instead of a copy.
            progress: Show progress bars.
            memory_format: Tensor layout of the run: ``"auto"`` (channels-last for models
                with 2-D convolutions, faster on CPU and GPU; see
                :func:`~unlearnkit.utils.memory_format.preferred_memory_format`),
                ``"channels_last"`` or ``"contiguous"``. The model is handed back in the
                standard contiguous layout either way.

        Returns:
            The result, holding the unlearned model and the evidence.

        Raises:
            InvalidRequestError: If the request does not fit the model.
            InvalidModelError: If the model has non-finite weights or wrong outputs.
            DataContractError: If retain data is given to a forget-only method, or missing for
                a method that needs it.
            NonFiniteError: If the run produced NaN or infinite values.
        """
        started = time.perf_counter()
        if not isinstance(request, ForgetRequest):
            raise InvalidRequestError(f"request must be a ForgetRequest, got {type(request).__name__}")
        self._check_data_contract(request, retain)
        if heldout is not None and request.goal != "unseen":
            raise DataContractError("heldout data is used only to calibrate goal='unseen'; pass heldout=None")
        check_finite_parameters(model, "the model to unlearn")
        device = resolve_device(device, model)
        layout = preferred_memory_format(model, memory_format)
        # By name, not by position: a method may add modules (unmerged adapters wrap layers).
        modes = {name: m.training for name, m in model.named_modules()}
        working = model if inplace else copy_model(model)
        working.to(device)
        # Inputs follow the model's floating dtype (NumPy hands out float64 by default).
        request = request.to(device, dtype=model_dtype(working))
        sha_before = state_dict_sha256(model)

        logits_before = predict_logits(working, request.inputs)
        num_classes = logits_before.shape[1]
        if num_classes < 2:
            raise InvalidModelError(f"the model outputs {num_classes} logit(s) per input; a classifier needs at least 2")
        labels_source = "given"
        if not request.has_labels:
            # Only the goal check and the report read these; a label-free method never sees them
            # as training data (it declared needs_labels = False and must not read them).
            request = request.with_labels(logits_before.argmax(dim=1))
            labels_source = "predicted_by_original"
        if not any(p.requires_grad for p in working.parameters()):
            raise InvalidModelError("the model has no trainable parameters (all have requires_grad=False)")
        request.check_classes(num_classes)
        if retain is not None:
            retain = self._check_retain(retain, num_classes, device)
        loss_targets, target_source = None, None
        if request.goal == "unseen":
            if heldout is not None:
                heldout = self._check_retain(heldout, num_classes, device, what="heldout")
            try:
                loss_targets, target_source = unseen_loss_targets(working, request.inputs, request.known_labels, heldout=heldout)
            except ValueError as err:
                raise InvalidRequestError(str(err)) from None

        context = UnlearnContext(
            model=working,
            request=request,
            num_classes=num_classes,
            device=device,
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
            progress=progress,
            retain=retain,
            loss_targets=loss_targets,
            started=started,
        )
        cuda_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            # Global RNG state (dropout masks) is seeded too, and restored for the caller after.
            torch.manual_seed(seed)
            with running_in(working, layout):
                run = self._unlearn(context)
        # Hand the model back in the train/eval modes it came in (per submodule).
        for name, module in working.named_modules():  # parents before children
            if name in modes:
                module.train(modes[name])
        try:
            check_finite_parameters(working, "the unlearned model")
        except ValueError as err:
            raise NonFiniteError(f"{self.name}: {err}; the result was discarded") from None

        logits_after = predict_logits(working, request.inputs)
        outcomes, metrics = _instance_outcomes(request, logits_before, logits_after, loss_targets)
        details = dict(run.details)
        details["memory_format"] = memory_format_name(layout)
        if labels_source != "given":
            details["labels"] = labels_source
        if target_source is not None:
            details["unseen/target_source"] = target_source
        return UnlearnResult(
            model=working,
            method=self.name,
            goal=request.goal,
            hyperparams=self.resolved_params(context),
            seed=seed,
            converged=run.converged,
            stop_reason=run.stop_reason,
            steps=run.steps,
            passes=run.passes,
            seconds=time.perf_counter() - started,
            outcomes=outcomes,
            metrics=metrics,
            details=details,
            retain_used=0 if retain is None else int(retain[0].shape[0]),
            model_sha256_before=sha_before,
            model_sha256_after=state_dict_sha256(working),
            versions=environment_versions(),
            device=str(device),
        )

    @abc.abstractmethod
    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        """The algorithm: update ``context.model`` in place and report how it went."""

    # -- checks shared by every method ---------------------------------------------------------

    def _check_data_contract(self, request: ForgetRequest, retain: RetainData | None) -> None:
        if not request.has_labels and self.needs_labels:
            from unlearnkit.methods.registry import list_methods, method_class  # the registry imports this module

            free = [name for name in list_methods() if not method_class(name).needs_labels]
            raise InvalidRequestError(
                f"method {self.name!r} needs the forget set's labels, and this request has none; "
                f"methods that work without labels: {', '.join(free) or 'none registered'}"
            )
        if request.goal == "relabel" and not self.supports_relabel:
            raise InvalidRequestError(f"method {self.name!r} does not support relabeling requests")
        if request.goal == "unseen" and not self.supports_unseen:
            raise InvalidRequestError(f"method {self.name!r} does not support goal 'unseen'")
        if self.data_access == "forget" and retain is not None:
            raise DataContractError(
                f"method {self.name!r} uses only the model and the forget set; it must not be "
                "handed retain data (pass retain=None)"
            )
        if self.data_access == "forget+retain" and retain is None:
            raise DataContractError(f"method {self.name!r} needs retain data: pass retain=(inputs, labels)")

    @staticmethod
    def _check_retain(retain: RetainData, num_classes: int, device: torch.device, what: str = "retain") -> RetainData:
        try:
            inputs, labels = retain
        except (TypeError, ValueError):
            raise DataContractError(f"{what} must be a pair (inputs, labels)") from None
        if labels is None:
            raise DataContractError(f"{what} data needs labels: pass ({what}_inputs, {what}_labels)")
        try:
            checked = ForgetRequest(inputs, labels, input_range=None)  # same shape/label/finite checks
            checked.check_classes(num_classes)
        except InvalidRequestError as err:
            message = str(err).replace("forget set", f"{what} set").replace("forget inputs", f"{what} inputs")
            raise DataContractError(f"{what} data: {message}") from None
        return checked.inputs.to(device), checked.labels.to(device)


def _instance_outcomes(
    request: ForgetRequest, before: Tensor, after: Tensor, loss_targets: Tensor | None = None
) -> tuple[list[InstanceOutcome], dict[str, float]]:
    labels = request.known_labels
    target = labels if request.new_labels is None else request.new_labels
    margin_before = label_margin(before, target).tolist()
    margin_after = label_margin(after, target).tolist()
    loss_before = per_example_loss(before, labels)
    loss_after = per_example_loss(after, labels)
    met = goal_met(after, labels, request.new_labels, loss_targets=loss_targets).tolist()
    targets = [None] * len(request) if loss_targets is None else loss_targets.tolist()
    pred_before = before.argmax(dim=1)
    pred_after = after.argmax(dim=1)
    new_labels = [None] * len(request) if request.new_labels is None else request.new_labels.tolist()
    outcomes = [
        InstanceOutcome(
            id=request.ids[i],
            label=int(labels[i]),
            new_label=new_labels[i],
            pred_before=int(pred_before[i]),
            pred_after=int(pred_after[i]),
            margin_before=float(margin_before[i]),
            margin_after=float(margin_after[i]),
            goal_met=bool(met[i]),
            loss_before=float(loss_before[i]),
            loss_after=float(loss_after[i]),
            loss_target=targets[i],
            content_sha256=instance_sha256(request.inputs[i], int(labels[i])),
        )
        for i in range(len(request))
    ]
    metrics = {
        "acc/forget/before": 100.0 * float((pred_before == labels).float().mean()),
        "acc/forget/after": 100.0 * float((pred_after == labels).float().mean()),
        "loss/forget/before": float(loss_before.mean()),
        "loss/forget/after": float(loss_after.mean()),
    }
    if loss_targets is not None:
        metrics["unseen/before"] = 100.0 * float((loss_before >= loss_targets).float().mean())
        metrics["unseen/after"] = 100.0 * float((loss_after >= loss_targets).float().mean())
    if request.new_labels is not None:
        metrics["relabel/before"] = 100.0 * float((pred_before == request.new_labels).float().mean())
        metrics["relabel/after"] = 100.0 * float((pred_after == request.new_labels).float().mean())
    return outcomes, metrics


def optional(**values: Any) -> dict[str, Any]:
    """The given values without the ``None`` ones: for hyperparameters where ``None`` means
    "none" or "automatic", before handing them to a check."""
    return {name: value for name, value in values.items() if value is not None}


def _check_real(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidHyperparameterError(f"{name} must be a number, got {value!r}")


def check_positive(**values: float | int) -> None:
    """Raises :class:`InvalidHyperparameterError` for any value that is not a number > 0."""
    for name, value in values.items():
        _check_real(name, value)
        if not value > 0:  # also refuses NaN
            raise InvalidHyperparameterError(f"{name} must be > 0, got {value}")


def check_non_negative(**values: float | int) -> None:
    """Raises :class:`InvalidHyperparameterError` for any value that is not a number >= 0."""
    for name, value in values.items():
        _check_real(name, value)
        if not value >= 0:  # also refuses NaN
            raise InvalidHyperparameterError(f"{name} must be >= 0, got {value}")


def check_count(**values: int) -> None:
    """Raises :class:`InvalidHyperparameterError` for any value that is not a whole number >= 0."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidHyperparameterError(f"{name} must be >= 0 and a whole number, got {value!r}")


def check_caps(max_passes: int | None, max_steps: int | None, max_seconds: float | None) -> None:
    """Checks the caps of a goal-driven run: whole numbers / a non-negative number where given,
    and at least one given (a run that never reaches its goal must still end)."""
    check_count(**optional(max_passes=max_passes, max_steps=max_steps))
    check_non_negative(**optional(max_seconds=max_seconds))
    if max_passes is None and max_steps is None and max_seconds is None:
        raise InvalidHyperparameterError(
            "at least one of max_passes, max_steps and max_seconds must be set: a run that never "
            "reaches its goal would otherwise never end"
        )


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raises :class:`InvalidHyperparameterError` unless ``value`` is one of ``choices``."""
    # Compare types too, so that 1 is not accepted for True.
    if not any(value == c and type(value) is type(c) for c in choices):
        raise InvalidHyperparameterError(f"{name} must be one of {choices}, got {value!r}")

