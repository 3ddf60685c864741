"""Named registries: the one place where a config string becomes code.

Used for source formats, stages and methods (see DESIGN.md: templates, datasets and eval tasks
are files found by name instead).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from medtune.errors import ConfigError


class Registry:
    """A name → callable table with a one-line description per entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            self._help[name] = help or (fn.__doc__ or "").strip().splitlines()[0]
            return fn

        return wrap

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        return {n: self._help[n] for n in self.names()}
