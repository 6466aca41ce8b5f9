"""The method registry: ``register_method``, ``create_method``, ``list_methods``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from unlearnkit.errors import InvalidHyperparameterError
from unlearnkit.methods.base import UnlearningMethod
from unlearnkit.registry import Registry

METHODS: Registry[type[UnlearningMethod]] = Registry("method")

M = TypeVar("M", bound=type[UnlearningMethod])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: registers an :class:`UnlearningMethod` subclass under ``name``.

    Raises:
        ValueError: If the name is taken.
    """

    def decorator(cls: M) -> M:
        METHODS.register(name)(cls)  # raises on a duplicate before touching the class
        cls.name = name
        return cls

    return decorator


def list_methods(pattern: str = "*") -> list[str]:
    """Names of the registered methods matching a shell-style pattern, sorted.

    Example:
        >>> import unlearnkit
        >>> unlearnkit.list_methods("l2ul*")
        ['l2ul', 'l2ul_adv']
    """
    return METHODS.names(pattern)


def method_class(name: str) -> type[UnlearningMethod]:
    """The class registered as ``name``.

    Raises:
        UnknownMethodError: Listing the known names.
    """
    return METHODS.get(name)


def create_method(name: str, **hyperparams: Any) -> UnlearningMethod:
    """An instance of the method ``name`` configured with ``hyperparams``.

    Raises:
        UnknownMethodError: If no method has that name.
        InvalidHyperparameterError: If a hyperparameter is unknown or out of range.

    Example:
        >>> import unlearnkit
        >>> unlearnkit.create_method("l2ul", reg_lambda=0.5).reg_lambda
        0.5
    """
    cls = METHODS.get(name)
    unknown = sorted(set(hyperparams) - set(cls.param_names()))
    if unknown:
        raise InvalidHyperparameterError(
            f"method {name!r} has no hyperparameter(s) {unknown}; it takes {cls.param_names()}"
        )
    return cls(**hyperparams)
