"""Clusters (the endpoints of one service version) and the load balancers that pick among them."""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Literal


@dataclass(eq=False, slots=True)
class Endpoint:
    """One upstream instance as the proxy sees it: address, weight, zone and live counters."""

    address: str
    port: int
    weight: int = 1
    zone: str | None = None
    identity: str | None = None
    source: str = "static"
    protocol: str = "http"  # what the endpoint speaks (from discovery): http, or https with mTLS
    instance: str | None = None  # the discovered instance's name
    active: int = 0  # requests in flight, for least_request
    healthy: bool = True
    current: float = 0.0  # smooth weighted round robin state
    failures: int = 0  # consecutive failed health checks (or a passive ejection)
    successes: int = 0  # consecutive passed health checks
    detail: str = ""  # why the endpoint is unhealthy

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


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RingHash:
    """Envoy's ring_hash: each endpoint owns points on a 64-bit ring in proportion to its weight,
    and a key goes to the owner of the first point at or after the key's hash. An endpoint's points
    depend only on its address and weight, never on the others: adding or removing one endpoint
    moves only the keys of its own arcs (about 1/N of them). A request without a key goes to a
    random endpoint, as in Envoy."""

    MAX_POINTS = 1 << 20

    def __init__(self, points_per_weight: int = 256):
        self.points_per_weight = points_per_weight
        self._points: list[int] = []
        self._owners: list[Endpoint] = []
        self._built_for: list[Endpoint] | None = None

    def rebuild(self, endpoints: list[Endpoint]) -> None:
        self._built_for = endpoints
        unit = math.gcd(*(e.weight for e in endpoints)) if endpoints else 1
        per = self.points_per_weight
        total = sum(e.weight // unit for e in endpoints) * per
        if total > self.MAX_POINTS:  # extreme weight ratios: fewer points, same proportions
            per = max(1, per * self.MAX_POINTS // total)
        ring = []
        for ep in endpoints:
            name = f"{ep.address}:{ep.port}_".encode()
            ring.extend((hash64(name + str(i).encode()), ep) for i in range(per * ep.weight // unit))
        ring.sort(key=lambda p: p[0])
        self._points = [p for p, _ in ring]
        self._owners = [e for _, e in ring]

    def pick(self, endpoints: list[Endpoint], key: str | None = None) -> Endpoint:
        if key is None or not self._points:
            return random.choices(endpoints, weights=[e.weight for e in endpoints])[0]
        i = bisect.bisect_left(self._points, hash64(key.encode()))
        if endpoints is self._built_for:
            return self._owners[i % len(self._owners)]
        allowed = set(map(id, endpoints))  # a retry excluding some: walk on to the next allowed owner
        for step in range(len(self._owners)):
            owner = self._owners[(i + step) % len(self._owners)]
            if id(owner) in allowed:
                return owner
        return endpoints[0]


POLICIES = {"round_robin": RoundRobin, "random": Random, "least_request": LeastRequest,
            "consistent_hash": RingHash}


@dataclass(frozen=True, slots=True)
class HashKey:
    """What consistent_hash hashes, compiled from `lb.hash_on`; the adapter reads it off the request."""

    kind: Literal["header", "cookie", "source_ip"]
    name: str = ""


@dataclass(eq=False)
class Cluster:
    name: str
    service: str
    version: str
    policy: str = "round_robin"
    connect_timeout: float = 1.0
    idle_timeout: float = 4.0  # pooled connections idle longer are not reused (below the upstream's keep-alive)
    endpoints: list[Endpoint] = field(default_factory=list)
    hash_on: HashKey | None = None
    points_per_weight: int = 256
    zone_aware: float | None = None  # min healthy share of the local zone; None: zone-blind
    local_zone: str | None = None  # the caller's zone (this proxy's)
    used: bool = False  # picked from at least once: its endpoints are worth health-checking
    health_check: object = None  # the service's HealthCheck settings, for the active checker

    def __post_init__(self) -> None:
        self.lb = (RingHash(self.points_per_weight) if self.policy == "consistent_hash"
                   else POLICIES[self.policy]())
        self.refresh()

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the membership, keeping the live state of endpoints that stay."""
        old = {e.key: e for e in self.endpoints}
        merged = []
        for ep in endpoints:
            keep = old.get(ep.key)
            if keep is not None and keep is not ep:
                keep.weight, keep.zone, keep.identity, keep.source = ep.weight, ep.zone, ep.identity, ep.source
                keep.protocol, keep.instance = ep.protocol, ep.instance
                merged.append(keep)
            elif keep is not None:
                merged.append(keep)
            else:
                merged.append(ep)
        self.endpoints = merged
        self.refresh()

    def refresh(self) -> None:
        """Recompute who may be picked, after a change of membership or health."""
        healthy = [e for e in self.endpoints if e.healthy]
        # none healthy: try them all rather than fail outright (Envoy's panic mode, at 0 %)
        self.panic = not healthy and bool(self.endpoints)
        candidates = healthy or list(self.endpoints)
        self.local_only = False
        if self.zone_aware is not None and self.local_zone is not None and healthy:
            local = [e for e in healthy if e.zone == self.local_zone]
            in_zone = sum(1 for e in self.endpoints if e.zone == self.local_zone)
            if local and len(local) >= self.zone_aware * in_zone:
                candidates, self.local_only = local, True
        self._healthy = healthy
        self._candidates = candidates
        rebuild = getattr(self.lb, "rebuild", None)
        if rebuild is not None:
            rebuild(candidates)

    def pick(self, exclude: tuple[Endpoint, ...] = (), key: str | None = None,
             usable=None) -> Endpoint | None:
        """An endpoint for the next attempt, avoiding those in `exclude` when others are left;
        `usable(key)` (circuit breakers) filters strictly."""
        self.used = True
        candidates, healthy = self._candidates, self._healthy
        if usable is not None:
            candidates = [e for e in candidates if usable(e.key)]
            healthy = [e for e in healthy if usable(e.key)]
        if exclude:
            rest = ([e for e in candidates if e not in exclude]
                    or [e for e in healthy if e not in exclude])
            candidates = rest or candidates
        if not candidates:
            return None
        return self.lb.pick(candidates, key)

    def status(self) -> dict:
        lb: dict = {"policy": self.policy}
        if self.hash_on is not None:
            lb["hash_on"] = {self.hash_on.kind: self.hash_on.name or True}
        if self.zone_aware is not None:
            lb["zone_aware"] = {"min_healthy": self.zone_aware, "local_zone": self.local_zone,
                                "local_only": self.local_only}
        return {
            "service": self.service,
            "version": self.version,
            "lb": lb,
            "panic": self.panic,
            "endpoints": [
                {"address": str(e), "instance": e.instance, "weight": e.weight, "zone": e.zone,
                 "healthy": e.healthy, "detail": e.detail, "active": e.active, "source": e.source,
                 "identity": e.identity, "protocol": e.protocol}
                for e in self.endpoints
            ],
        }
