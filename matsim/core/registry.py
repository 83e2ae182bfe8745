"""Registries map names to classes, so configs and checkpoints name models (``"bamboo"``), never import paths."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from matsim.core.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes.

    Example::

        MODELS = Registry("model")

        @MODELS.register("bamboo")
        class Bamboo(nn.Module): ...

        MODELS.get("bamboo")      # -> Bamboo
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering the class under ``name`` (names are unique)."""

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[name].__name__}")
            self._entries[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; a :class:`ConfigError` listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def name_of(self, cls: type) -> str:
        """The registered name of ``cls`` (a ``KeyError`` if it is not registered)."""
        for name, entry in self._entries.items():
            if entry is cls:
                return name
        raise KeyError(f"{cls.__name__} is not a registered {self.kind}")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
