"""A small name -> factory registry, one per layer (encoders, fusions, methods, data sets)."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, TypeVar

from holomodal.errors import ConfigError

T = TypeVar("T")


class Registry:
    """``register(name)`` decorates a factory, ``create(name, ...)`` calls it.

    Unknown names raise :class:`ConfigError` listing the known ones, so a typo in a
    configuration file reads as a user error rather than a ``KeyError`` traceback.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = factory  # type: ignore[assignment]
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {known})")
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
