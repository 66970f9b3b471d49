"""Outlier ejection (Envoy's outlier detection): consecutive failures eject an endpoint for a time
that grows with each ejection, never more than a share of the cluster at once."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_5xx: int = 5  # 5xx responses and connect failures/resets in a row
    consecutive_gateway_failure: int = 5  # 502/503/504 and connect failures/resets in a row
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0  # at least one endpoint may always be ejected


@dataclass(slots=True)
class _Record:
    five_xx: int = 0
    gateway: int = 0
    ejections: int = 0
    until: float = 0.0


@dataclass
class OutlierDetector:
    """One per cluster; keyed by endpoint (address, port)."""

    policy: OutlierPolicy
    clock: object = time.monotonic
    records: dict = field(default_factory=dict)
    total_ejections: int = 0

    def _rec(self, key) -> _Record:
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = _Record()
        return rec

    def ejected(self, key) -> bool:
        rec = self.records.get(key)
        return rec is not None and rec.until > self.clock()

    def ejected_count(self) -> int:
        now = self.clock()
        return sum(1 for r in self.records.values() if r.until > now)

    def success(self, key) -> None:
        rec = self.records.get(key)
        if rec is not None:
            rec.five_xx = rec.gateway = 0

    def failure(self, key, *, status: int | None, cluster_size: int) -> float | None:
        """Record a failed attempt (status None: connect failure, reset or timeout).

        Returns the ejection time when this failure ejects the endpoint."""
        rec = self._rec(key)
        rec.five_xx += 1
        if status is None or status in (502, 503, 504):
            rec.gateway += 1
        p = self.policy
        if rec.five_xx < p.consecutive_5xx and rec.gateway < p.consecutive_gateway_failure:
            return None
        if rec.until > self.clock():
            return None  # already ejected (failures of requests in flight)
        allowed = max(1, math.floor(cluster_size * p.max_ejection_percent / 100))
        if self.ejected_count() >= allowed:
            return None
        rec.ejections += 1
        duration = min(p.base_ejection_time * rec.ejections, p.max_ejection_time)
        rec.until = self.clock() + duration
        rec.five_xx = rec.gateway = 0
        self.total_ejections += 1
        return duration

    def forget(self, keys_alive) -> None:
        alive = set(keys_alive)
        for key in [k for k in self.records if k not in alive]:
            del self.records[key]
