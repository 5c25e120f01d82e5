"""Name-keyed registries for methods (PEFT kinds, quant methods, tasks, backends)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from ftlab.errors import FtlabError

T = TypeVar("T")


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to `name` (case-insensitive), or None when nothing is near."""
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:
        return lowered[name.lower()]
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[hits[0]] if hits else None


class Registry(Generic[T]):
    """Lookup is case-insensitive; messages use the spelling given at registration."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, tuple[str, T]] = {}

    def add(self, name: str, obj: T) -> T:
        if name.lower() in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name.lower()] = (name, obj)
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def get(self, name: str) -> T:
        return self._entry(name)[1]

    def canonical(self, name: str) -> str:
        """The registered spelling of `name`."""
        return self._entry(name)[0]

    def _entry(self, name: str) -> tuple[str, T]:
        try:
            return self._items[str(name).lower()]
        except KeyError:
            valid = self.names()
            hint = closest(str(name), valid)
            did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
            raise FtlabError(f"unknown {self.kind} {name!r}{did_you_mean}; valid: {', '.join(valid)}") from None

    def names(self) -> list[str]:
        return [n for n, _ in self._items.values()]

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._items.values()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __len__(self) -> int:
        return len(self._items)
