"""A small string registry: names to factories, with duplicate detection.

Used for methods (and later data sets and models) so that a new entry is picked up by the CLI,
the benchmark grid and the registry-wide contract tests without touching them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from unlearnkit.errors import UnknownMethodError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes).

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"method"``).

    Example:
        >>> reg: Registry[type] = Registry("widget")
        >>> @reg.register("round")
        ... class Round: ...
        >>> reg.get("round").__name__
        'Round'
        >>> reg.names()
        ['round']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name``.

        Raises:
            ValueError: If ``name`` is already taken.
        """

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Returns the entry registered as ``name``.

        Raises:
            UnknownMethodError: If nothing is registered under ``name``; the message lists
                the known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownMethodError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
