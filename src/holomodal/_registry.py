"""A small name -> factory registry, one per layer (encoders, fusions, methods, data sets)."""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable, Mapping, TypeVar

from holomodal.errors import ConfigError

T = TypeVar("T")


class Registry:
    """``register(name)`` decorates a factory, ``create(name, ...)`` calls it.

    Unknown names raise :class:`ConfigError` listing the known ones, so a typo in a
    configuration file reads as a user error rather than a ``KeyError`` traceback.

    ``modules`` maps names to the module that registers them: such a name is known (listed,
    ``in``) before its module is imported, which happens the first time it is asked for, so
    that one entry's heavy imports are paid only by the runs that use it.
    """

    def __init__(self, kind: str, modules: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._modules = dict(modules or {})

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = factory  # type: ignore[assignment]
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries and name in self._modules:
            importlib.import_module(self._modules[name])
            if name not in self._entries:  # a wrong table entry, not a user's typo
                raise LookupError(f"{self.kind} '{name}': module '{self._modules[name]}' does not register it")
        if name not in self._entries:
            known = ", ".join(self.list()) or "none"
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {known})")
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def load_all(self) -> None:
        """Import every module of ``modules``, so that all entries are registered."""
        for module in sorted(set(self._modules.values())):
            importlib.import_module(module)

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries.keys() | self._modules.keys() if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._modules

    def __len__(self) -> int:
        return len(self._entries.keys() | self._modules.keys())
