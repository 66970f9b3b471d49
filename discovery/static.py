"""Static instances, from the config's endpoints: discovery for users without multicast."""

from __future__ import annotations

from typing import Iterable

from .registry import Event, Instance, Registry
from .source import Source


class StaticSource(Source):
    """Holds a fixed list of instances; `replace` (on a config reload) applies only the difference."""

    name = "static"

    def __init__(self, instances: Iterable[Instance] = ()) -> None:
        self._instances = list(instances)
        self.registry: Registry | None = None

    def attach(self, registry: Registry) -> None:
        """Start synchronously: the config's endpoints are known before anything runs."""
        self.registry = registry
        self.replace(self._instances)

    async def start(self, registry: Registry) -> None:
        self.attach(registry)

    def replace(self, instances: Iterable[Instance]) -> None:
        self._instances = list(instances)
        if self.registry is None:
            return
        wanted = {i.name: i for i in self._instances}
        for name, old in self.registry.by_source(self.name).items():
            if name not in wanted:
                self.registry.apply(Event("remove", old))
        for inst in wanted.values():
            self.registry.apply(Event("add", inst))

    async def stop(self) -> None:
        if self.registry is not None:
            for old in self.registry.by_source(self.name).values():
                self.registry.apply(Event("remove", old))
        self.registry = None
