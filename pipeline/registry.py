"""Name -> entry tables filled by decorators: the one shape behind every extension point
(recommenders, split protocols, metrics), after timm's ``@register_model``. A module registers
its own entries when it is imported; the factories only look names up."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pydantic_core import PydanticCustomError

from .errors import ConfigError

T = TypeVar("T")

# names end up in dotted config keys (model.<name>.<key>) and metric labels (<name>@<k>)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Registry(Generic[T]):
    """The entries of one kind, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on the entry (a class or a function)."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"a {self.kind} name is letters, digits and '_' (not starting with a digit), got {name!r}")

        def deco(entry: T) -> T:
            old = self._entries.get(name)
            # the same definition again (a module imported twice, e.g. reloaded) replaces itself
            if old is not None and _origin(old) != _origin(entry):
                raise ValueError(f"{self.kind} {name!r} is already registered by {_origin(old)}")
            self._entries[name] = entry
            return entry

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"no {self.kind} named {name!r}; registered: {', '.join(self._entries)}") from None

    def check(self, name: str) -> str:
        """``name`` if it is registered; else the error a pydantic validator raises, worded as
        for a fixed list of choices, so the config error names the key and every choice."""
        if name not in self._entries:
            names = [repr(n) for n in self._entries]
            expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return name

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


def _origin(entry: object) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"
