"""Per-snapshot compiled objects for addons: built once per config version, looked up by identity.

A flow keeps the snapshot it started with, so the last few versions stay available while their
flows finish; looking one up is an identity comparison, nothing is parsed on the request path.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class PerSnapshot(Generic[T]):
    def __init__(self, build: Callable[[object], T], keep: int = 4):
        self._build = build
        self._keep = keep
        self._items: list[tuple[object, T]] = []

    def get(self, snapshot: object) -> T:
        for snap, value in self._items:
            if snap is snapshot:
                return value
        value = self._build(snapshot)
        self._items = [(snapshot, value), *self._items[: self._keep - 1]]
        return value

    def latest(self) -> T | None:
        return self._items[0][1] if self._items else None
