"""Fault injection, Istio's semantics (delay and abort by percentage) plus stateful faults: fail
the Nth call, fail for T seconds then recover, a slow-drip upstream body, a reset mid-body.

Faults act on the upstream attempt as the proxy sees it, so retries, timeouts, breakers and
ejection react to them exactly as they would to a real broken upstream.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

from mesh.config.types import parse_duration

HEADER = "x-mitmesh-fault"


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one attempt."""

    delay: float = 0.0
    abort: int | None = None  # answer this status instead of calling upstream
    drip: float | None = None  # upstream body at this many bytes per second
    reset_after: int | None = None  # upstream connection reset after this many body bytes

    def __bool__(self) -> bool:
        return bool(self.delay or self.abort or self.drip or self.reset_after is not None)


NONE = Fault()
ABORT_BODY = b"injected fault"  # the body of an aborted attempt, as Envoy's fault filter answers


def describe(fault: Fault) -> str:
    """The decision-log line of an injected fault: `injected delay 200 ms, abort 503`."""
    parts = []
    if fault.delay:
        parts.append(f"delay {fault.delay * 1000:.0f} ms")
    if fault.abort is not None:
        parts.append(f"abort {fault.abort}")
    if fault.drip:
        parts.append(f"drip {fault.drip:g} B/s")
    if fault.reset_after is not None:
        parts.append(f"reset after {fault.reset_after} bytes")
    return "injected " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    delay: float = 0.0
    delay_percent: float = 100.0
    abort: int | None = None
    abort_percent: float = 100.0
    every_nth: int | None = None  # with abort: only every Nth call fails
    for_seconds: float | None = None  # with abort: fail from the first call for this long, then recover
    drip: float | None = None
    reset_after: int | None = None
    header_triggered: bool = False  # honour x-mitmesh-fault from the client


class FaultState:
    """The counters behind stateful faults, one per route or cluster policy."""

    def __init__(self, policy: FaultPolicy, clock=time.monotonic, rnd=random.random):
        self.policy, self.clock, self.rnd = policy, clock, rnd
        self.calls = 0
        self.started: float | None = None
        self.injected = 0

    def next(self) -> Fault:
        p = self.policy
        self.calls += 1
        if self.started is None:
            self.started = self.clock()
        delay = p.delay if p.delay and self.rnd() * 100 < p.delay_percent else 0.0
        abort = None
        if p.abort is not None:
            if p.every_nth is not None:
                hit = self.calls % p.every_nth == 0
            elif p.for_seconds is not None:
                hit = self.clock() - self.started < p.for_seconds
            else:
                hit = self.rnd() * 100 < p.abort_percent
            abort = p.abort if hit else None
        fault = Fault(delay, abort, p.drip, p.reset_after)
        if fault:
            self.injected += 1
        return fault


_ITEM = re.compile(r"^\s*(delay|abort|drip|reset)\s*=\s*([^,]+?)\s*$")


def parse_header(value: str) -> Fault:
    """`delay=200ms`, `abort=503`, `drip=100` (bytes/s), `reset=10` (bytes), comma separated."""
    fields: dict = {}
    for part in value.split(","):
        m = _ITEM.match(part)
        if not m:
            raise ValueError(f"expected delay=DURATION, abort=STATUS, drip=BYTES_PER_S or reset=BYTES (got {part.strip()!r})")
        name, raw = m.groups()
        if name == "delay":
            seconds = parse_duration(raw)
            if seconds > 60:
                raise ValueError(f"delay: at most 60s (got {raw!r})")
            fields["delay"] = seconds
        elif name == "abort":
            if not raw.isdigit() or not 200 <= int(raw) <= 599:
                raise ValueError(f"abort: expected a status 200-599 (got {raw!r})")
            fields["abort"] = int(raw)
        elif name == "drip":
            fields["drip"] = float(raw)
            if fields["drip"] <= 0:
                raise ValueError(f"drip: expected bytes per second > 0 (got {raw!r})")
        else:
            if not raw.isdigit():
                raise ValueError(f"reset: expected a byte count (got {raw!r})")
            fields["reset_after"] = int(raw)
    return Fault(**fields)
