"""Clusters (the endpoints of one service version) and the load balancers that pick among them."""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import time
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
    # awaiting its first active health check: out of rotation and out of panic mode until it passes
    # (Envoy's PENDING_ACTIVE_HC; mesh/core/health.py await_first_check)
    pending: bool = False
    current: float = 0.0  # smooth weighted round robin state
    failures: int = 0  # consecutive failed health checks (or a passive ejection)
    successes: int = 0  # consecutive passed health checks
    detail: str = ""  # why the endpoint is unhealthy
    region: str | None = None
    ewma: float = -1.0  # peak EWMA of latency in seconds (-1: none observed yet)
    ewma_at: float = 0.0  # when it was last updated (monotonic)

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    def begin(self) -> float:
        """One request starts on this endpoint: counted in flight; returns its start time."""
        self.active += 1
        return time.monotonic()

    def end(self, started: float) -> None:
        """The request that began at `started` is over: its latency feeds the peak EWMA."""
        self.active -= 1
        now = time.monotonic()
        self.ewma = peak_ewma(self.ewma, self.ewma_at, now, now - started)
        self.ewma_at = now

    def cost(self, now: float) -> float:
        """Peak EWMA's cost: expected latency, decayed toward 0 while unobserved (so a slow endpoint
        is tried again in time), times the requests it would queue behind, per unit of weight."""
        rtt = DEFAULT_RTT if self.ewma < 0 else peak_ewma(self.ewma, self.ewma_at, now, 0.0)
        return rtt * (self.active + 1) / self.weight

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


DECAY = 10.0  # seconds: how fast old latencies fade (Finagle's and Linkerd's default)
DEFAULT_RTT = 0.03  # assumed latency of an endpoint not observed yet (Linkerd's default, 30 ms)


def peak_ewma(value: float, at: float, now: float, rtt: float) -> float:
    """Finagle's peak EWMA: a latency above the average replaces it at once (peaks count fully);
    below, it is averaged in with a weight that grows with the time since the last update."""
    if value < 0:
        return rtt
    w = math.exp(-max(now - at, 0.0) / DECAY)
    return rtt if rtt > value else value * w + rtt * (1.0 - w)


class PeakEwma:
    """Power of two choices by cost (latency x load): load moves away from slow endpoints."""

    def pick(self, endpoints: list[Endpoint], _key=None) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        a, b = random.sample(endpoints, 2)
        now = time.monotonic()
        return a if a.cost(now) <= b.cost(now) else b


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
            "consistent_hash": RingHash, "peak_ewma": PeakEwma}


def level_of(ep: Endpoint, zone: str | None, region: str | None) -> int:
    """An endpoint's priority for a caller in (zone, region): 0 its zone, 1 its region, 2 the rest."""
    if zone is not None and ep.zone == zone and (region is None or ep.region in (None, region)):
        return 0
    if region is not None and ep.region == region:
        return 1
    return 2


def priority_loads(levels: list[tuple[int, int]], overprovisioning: float) -> list[float]:
    """Envoy's priority load: level i's health is min(1, factor x healthy/total); each level takes
    what its health allows of what the levels before it left; when the levels' health adds up to
    less than 100 %, the loads are scaled up to 100 % (levels = [(healthy, total), ...])."""
    health = [min(1.0, overprovisioning * h / t) if t else 0.0 for h, t in levels]
    total = sum(health)
    if total <= 0:
        return [0.0] * len(levels)
    if total < 1.0:
        return [h / total for h in health]
    loads, left = [], 1.0
    for h in health:
        take = min(left, h)
        loads.append(take)
        left -= take
    return loads


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
    local_region: str | None = None  # the caller's region
    locality: float | None = None  # priority levels by locality: the overprovisioning factor
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
                keep.region = ep.region
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
        # An endpoint awaiting its first health check counts nowhere below: not a candidate, not in
        # the zone share or the levels, not in panic mode. Envoy's ignore_new_hosts_until_first_hc
        # leaves such hosts out of the panic, spillover and locality denominators, but "if panic
        # mode is triggered, new hosts are still eligible for traffic" (cluster.proto): its panic
        # set is every host (load_balancer_impl.cc). Discovery here is unauthenticated, so that
        # would hand traffic to an instance nobody has checked, any local process's announcement:
        # panic mode tries only endpoints that have been checked (a first check is under way).
        checked = [e for e in self.endpoints if not e.pending]
        healthy = [e for e in checked if e.healthy]
        # none healthy: try every checked one rather than fail outright (Envoy's panic mode, at 0 %)
        self.panic = not healthy and bool(checked)
        candidates = healthy or checked
        self.local_only = False
        if self.zone_aware is not None and self.local_zone is not None and healthy:
            local = [e for e in healthy if e.zone == self.local_zone]
            in_zone = sum(1 for e in checked if e.zone == self.local_zone)
            if local and len(local) >= self.zone_aware * in_zone:
                candidates, self.local_only = local, True
        # priority levels: [(load, healthy endpoints of the level)], the local zone first
        self._levels: list[tuple[float, list[Endpoint]]] = []
        if self.locality is not None and healthy:
            by_level: list[list[Endpoint]] = [[], [], []]
            for e in checked:
                by_level[level_of(e, self.local_zone, self.local_region)].append(e)
            present = [eps for eps in by_level if eps]
            loads = priority_loads([(sum(e.healthy for e in eps), len(eps)) for eps in present],
                                   self.locality)
            self._levels = [(load, [e for e in eps if e.healthy]) for load, eps in zip(loads, present)]
        self._healthy = healthy
        self._candidates = candidates
        self._pending = [e for e in self.endpoints if e.pending]
        rebuild = getattr(self.lb, "rebuild", None)
        if rebuild is not None:
            rebuild(candidates)

    def pick(self, exclude: tuple[Endpoint, ...] = (), key: str | None = None,
             usable=None) -> Endpoint | None:
        """An endpoint for the next attempt, avoiding those in `exclude` when others are left;
        `usable(key)` (circuit breakers) filters strictly."""
        self.used = True
        candidates, healthy = self._candidates, self._healthy
        if self._levels:  # a level drawn by its load, then the balancer within it
            r, level = random.random(), None
            for load, eps in self._levels:
                if eps and r < load:
                    level = eps
                    break
                r -= load
            candidates = level or candidates
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

    def warming(self) -> list[Endpoint]:
        """The endpoints a request must wait for: those awaiting their first health check, when no
        other may be picked (Envoy's cluster warming: a cluster is used once its first checks are
        done); empty when some endpoint has been checked, or none awaits a check."""
        return [] if self._candidates else self._pending

    def levels(self) -> list[dict]:
        """The priority levels as they stand: load share and healthy endpoints of each."""
        return [{"load": round(load, 3), "healthy": [str(e) for e in eps]} for load, eps in self._levels]

    def status(self) -> dict:
        lb: dict = {"policy": self.policy}
        if self.hash_on is not None:
            lb["hash_on"] = {self.hash_on.kind: self.hash_on.name or True}
        if self.zone_aware is not None:
            lb["zone_aware"] = {"min_healthy": self.zone_aware, "local_zone": self.local_zone,
                                "local_only": self.local_only}
        if self.locality is not None:
            lb["locality"] = {"overprovisioning": self.locality, "zone": self.local_zone,
                              "region": self.local_region, "levels": self.levels()}
        return {
            "service": self.service,
            "version": self.version,
            "lb": lb,
            "panic": self.panic,
            "endpoints": [
                {"address": str(e), "instance": e.instance, "weight": e.weight, "zone": e.zone,
                 "region": e.region, "ewma_ms": round(e.ewma * 1000, 1) if e.ewma >= 0 else None,
                 "healthy": e.healthy, "pending": e.pending, "detail": e.detail,
                 "active": e.active, "source": e.source,
                 "identity": e.identity, "protocol": e.protocol}
                for e in self.endpoints
            ],
        }
