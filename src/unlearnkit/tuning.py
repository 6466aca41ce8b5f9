"""``tune``: a budgeted hyperparameter search for one deletion request (Optuna, an extra).

A trial runs the method with sampled hyperparameters on a copy of the model and scores it on
what the method is allowed to see plus a validation sample the user holds: a trial that does not
reach the goal scores its goal share minus 100 (always below any converged trial); a converged
trial scores the validation accuracy in percent. The best configuration and every trial are
returned; nothing is written to the user's model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from unlearnkit.errors import InvalidHyperparameterError, UnlearnkitError
from unlearnkit.methods.base import RetainData
from unlearnkit.methods.registry import create_method, method_class
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.request import ForgetRequest


@dataclass(frozen=True)
class FloatRange:
    """A float hyperparameter between ``low`` and ``high`` (log-uniform when ``log``)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """An integer hyperparameter between ``low`` and ``high`` inclusive."""

    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    """A hyperparameter taking one of ``options``."""

    options: tuple[Any, ...]


SearchSpace = Mapping[str, FloatRange | IntRange | Choice]

#: Default search spaces by method; a method missing here must be given one explicitly.
DEFAULT_SEARCH_SPACES: dict[str, dict[str, FloatRange | IntRange | Choice]] = {
    "neggrad": {"lr": FloatRange(1e-5, 1e-2, log=True), "forget_margin": FloatRange(0.1, 2.0)},
    "l2ul_adv": {
        "lr": FloatRange(1e-5, 1e-2, log=True),
        "anchor_weight": FloatRange(1.0, 300.0, log=True),
        "n_adv": IntRange(5, 40),
        "shift_anchors": Choice((0, 1, 2)),
    },
}
DEFAULT_SEARCH_SPACES["l2ul"] = {**DEFAULT_SEARCH_SPACES["l2ul_adv"], "reg_lambda": FloatRange(0.01, 100.0, log=True)}


@dataclass
class TuneResult:
    """The outcome of :func:`tune`.

    Attributes:
        method: The method tuned.
        best_params: Hyperparameters of the best trial (fixed ones included).
        best_score: Its score (validation accuracy in percent when converged).
        trials: One row per trial: number, params, score, converged, validation accuracy, goal
            share, steps, seconds, state (``ok`` or the error of a failed trial).
    """

    method: str
    best_params: dict[str, Any]
    best_score: float
    trials: list[dict[str, Any]] = field(default_factory=list)


def _suggest(trial: Any, name: str, dim: FloatRange | IntRange | Choice) -> Any:
    if isinstance(dim, FloatRange):
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    if isinstance(dim, IntRange):
        return trial.suggest_int(name, dim.low, dim.high)
    return trial.suggest_categorical(name, list(dim.options))


def tune(
    model: nn.Module,
    request: ForgetRequest,
    method: str = "l2ul",
    *,
    validation: RetainData,
    n_trials: int = 20,
    timeout: float | None = None,
    seed: int = 0,
    search_space: SearchSpace | None = None,
    retain: RetainData | None = None,
    heldout: RetainData | None = None,
    **fixed: Any,
) -> TuneResult:
    """Searches ``method``'s hyperparameters for this request within a budget.

    Args:
        model: The trained model (not modified).
        request: The forget request.
        method: Registered method name.
        validation: ``(inputs, labels)`` the model was not trained on (or a retain sample),
            used only to score utility.
        n_trials: Trial budget.
        timeout: Wall-time budget in seconds (``None``: none).
        seed: Seed of the sampler and of every trial's run.
        search_space: Hyperparameter ranges; defaults to :data:`DEFAULT_SEARCH_SPACES`.
        retain: Retain data for methods that use it.
        heldout: Held-out data for ``goal="unseen"``.
        **fixed: Hyperparameters held fixed in every trial (e.g. ``max_passes=200``).

    Raises:
        ImportError: If Optuna is not installed (``pip install 'unlearnkit[tune]'``).
        InvalidHyperparameterError: If the space names a hyperparameter the method lacks.
    """
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("tune needs Optuna: pip install 'unlearnkit[tune]'") from err
    space = dict(search_space if search_space is not None else DEFAULT_SEARCH_SPACES.get(method, {}))
    if not space:
        raise InvalidHyperparameterError(f"no default search space for {method!r}: pass search_space")
    known = set(method_class(method).param_names())
    unknown = sorted((set(space) | set(fixed)) - known)
    if unknown:
        raise InvalidHyperparameterError(f"method {method!r} has no hyperparameter(s) {unknown}")
    overlap = sorted(set(space) & set(fixed))
    if overlap:
        raise InvalidHyperparameterError(f"{overlap} are both searched and held fixed; drop them from one")
    create_method(method, **fixed)  # fail early on bad fixed values
    rows: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        params = {name: _suggest(trial, name, dim) for name, dim in space.items()}
        started = time.perf_counter()
        row: dict[str, Any] = {"number": trial.number, "params": params}
        try:
            algorithm = create_method(method, **fixed, **params)
            result = algorithm.unlearn(model, request, retain=retain, heldout=heldout, seed=seed)
        except UnlearnkitError as err:  # a diverged or invalid trial is recorded, not fatal
            row.update(state=f"failed: {err}", score=-200.0, converged=False, seconds=time.perf_counter() - started)
            rows.append(row)
            return -200.0
        share = sum(o.goal_met for o in result.outcomes) / len(result.outcomes)
        val_acc = accuracy(result.model, *validation)
        score = val_acc if result.converged else 100.0 * share - 100.0
        row.update(
            state="ok", score=score, converged=result.converged, validation_accuracy=val_acc,
            goal_share=share, steps=result.steps, seconds=result.seconds,
        )
        rows.append(row)
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n_trials, timeout=timeout)
    if not rows:
        raise UnlearnkitError("no trial finished within the budget: raise n_trials or timeout")
    best = max(rows, key=lambda r: r["score"])
    return TuneResult(method, {**fixed, **best["params"]}, best["score"], rows)
