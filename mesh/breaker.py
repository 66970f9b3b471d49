"""Circuit breakers with pybreaker, one per endpoint of a cluster, usable under asyncio.

`with breakers.calling(key): await attempt()` counts the attempt; an open breaker makes the
endpoint unavailable until `reset_timeout`, then one trial request at a time probes it (half-open)
and `success_threshold` successes close it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import pybreaker

log = logging.getLogger("mitmesh.breaker")


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    fail_max: int = 5
    reset_timeout: float = 10.0
    success_threshold: int = 1


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_change):
        self.on_change = on_change

    def state_change(self, cb, old_state, new_state):
        self.on_change(cb.name, old_state.name if old_state else None, new_state.name)


class Breakers:
    """The breakers of one cluster, keyed by endpoint (address, port)."""

    def __init__(self, cluster: str, policy: BreakerPolicy,
                 on_change: Callable[[str, str | None, str], None] | None = None):
        self.cluster = cluster
        self.policy = policy
        self.transitions: list[tuple[str, str, str]] = []
        self._on_change = on_change
        self._listener = _Listener(self._changed)
        self._breakers: dict[tuple, pybreaker.CircuitBreaker] = {}
        self._probing: set[tuple] = set()

    def _changed(self, name: str, old: str | None, new: str) -> None:
        self.transitions.append((name, old or "", new))
        log.warning(f"circuit breaker {self.cluster} {name}: {old} → {new}")
        if self._on_change:
            self._on_change(name, old, new)

    def get(self, key: tuple) -> pybreaker.CircuitBreaker:
        cb = self._breakers.get(key)
        if cb is None:
            cb = self._breakers[key] = pybreaker.CircuitBreaker(
                fail_max=self.policy.fail_max, reset_timeout=self.policy.reset_timeout,
                success_threshold=self.policy.success_threshold,
                exclude=[asyncio.CancelledError],  # a client going away is not the upstream's fault
                listeners=[self._listener], name=f"{key[0]}:{key[1]}",
                throw_new_error_on_trip=False)
        return cb

    def state(self, key: tuple) -> str:
        cb = self._breakers.get(key)
        return cb.current_state if cb is not None else "closed"

    def available(self, key: tuple) -> bool:
        """May an attempt go to this endpoint now? (closed; or open long enough and not probing)"""
        cb = self._breakers.get(key)
        if cb is None:
            return True
        state = cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return True
        if key in self._probing:
            return False
        if state == pybreaker.STATE_OPEN:
            opened = cb._state_storage.opened_at
            return opened is None or datetime.now(timezone.utc) >= opened + timedelta(seconds=cb.reset_timeout)
        return True  # half-open and nobody probing

    @contextlib.contextmanager
    def calling(self, key: tuple):
        """Wrap one attempt: an exception inside counts as a failure (re-raised as is)."""
        cb = self.get(key)
        trial = cb.current_state != pybreaker.STATE_CLOSED
        if trial:
            self._probing.add(key)
        try:
            with cb.calling():
                yield cb
        finally:
            if trial:
                self._probing.discard(key)

    def status(self) -> dict[str, str]:
        return {cb.name: cb.current_state for cb in self._breakers.values()}

    def open_count(self) -> int:
        return sum(1 for cb in self._breakers.values() if cb.current_state != pybreaker.STATE_CLOSED)
