"""The one interface every discovery source implements: feed a registry with instance events.

A source finds instances somewhere (the config file, mDNS, later DNS-SD or a watched file) and
applies add/update/remove events to a Registry; it never touches clusters or load balancers.
"""

from __future__ import annotations

import abc

from .registry import Registry


class Source(abc.ABC):
    """Starts feeding a registry; stop() withdraws every instance this source added."""

    name: str = "source"

    @abc.abstractmethod
    async def start(self, registry: Registry) -> None:
        """Begin applying events to `registry` (returns once running, not when done)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop, and remove from the registry what this source put there."""
