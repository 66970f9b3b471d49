"""Clusters (the endpoints of one service version) and the load balancers that pick among them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(eq=False, slots=True)
class Endpoint:
    """One upstream instance as the proxy sees it: address, weight, zone and live counters."""

    address: str
    port: int
    weight: int = 1
    zone: str | None = None
    identity: str | None = None
    source: str = "static"
    active: int = 0  # requests in flight, for least_request
    healthy: bool = True
    current: float = 0.0  # smooth weighted round robin state

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


class RoundRobin:
    """Smooth weighted round robin (as nginx): weight 3:1 gives a a b a, not a a a b."""

    def pick(self, endpoints: list[Endpoint], _key=None) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        total = 0
        best = None
        for ep in endpoints:
            ep.current += ep.weight
            total += ep.weight
            if best is None or ep.current > best.current:
                best = ep
        best.current -= total
        return best


class Random:
    def pick(self, endpoints: list[Endpoint], _key=None) -> Endpoint:
        return random.choices(endpoints, weights=[e.weight for e in endpoints])[0]


class LeastRequest:
    """Power of two choices (Envoy's default for least_request): the less loaded of two picks."""

    def pick(self, endpoints: list[Endpoint], _key=None) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        a, b = random.sample(endpoints, 2)
        # active requests scaled by weight, as Envoy does for weighted hosts
        return a if (a.active + 1) / a.weight <= (b.active + 1) / b.weight else b


POLICIES = {"round_robin": RoundRobin, "random": Random, "least_request": LeastRequest}


@dataclass(eq=False)
class Cluster:
    name: str
    service: str
    version: str
    policy: str = "round_robin"
    connect_timeout: float = 1.0
    endpoints: list[Endpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lb = POLICIES[self.policy]()
        self._healthy: list[Endpoint] = [e for e in self.endpoints if e.healthy]

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the membership, keeping the live state of endpoints that stay."""
        old = {e.key: e for e in self.endpoints}
        merged = []
        for ep in endpoints:
            keep = old.get(ep.key)
            if keep is not None:
                keep.weight, keep.zone, keep.identity, keep.source = ep.weight, ep.zone, ep.identity, ep.source
                merged.append(keep)
            else:
                merged.append(ep)
        self.endpoints = merged
        self.refresh()

    def refresh(self) -> None:
        self._healthy = [e for e in self.endpoints if e.healthy]

    def pick(self, exclude: tuple[Endpoint, ...] = (), key=None, usable=None) -> Endpoint | None:
        """An endpoint for the next attempt, avoiding those in `exclude` when others are left;
        `usable(endpoint)` (breakers, ejections) filters strictly."""
        candidates = self._healthy
        if usable is not None:
            candidates = [e for e in candidates if usable(e.key)]
        if exclude:
            rest = [e for e in candidates if e not in exclude]
            candidates = rest or candidates
        if not candidates:
            return None
        return self.lb.pick(candidates, key)

    def status(self) -> dict:
        return {
            "service": self.service,
            "version": self.version,
            "lb": self.policy,
            "endpoints": [
                {"address": str(e), "weight": e.weight, "zone": e.zone, "healthy": e.healthy,
                 "active": e.active, "source": e.source}
                for e in self.endpoints
            ],
        }
