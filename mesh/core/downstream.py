"""Limits on one downstream connection: how long a client may take to send a request head, a request
body, or nothing at all between requests (slowloris), and how many streams it may reset (HTTP/2
rapid reset, CVE-2023-44487).

Pure state machines, no mitmproxy and no clock of their own: callers pass `now` (time.monotonic()).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# after an answer made before the request body was read, the proxy reads and drops what the client
# still sends for this long, then closes (a close with unread data would reset the connection and
# could destroy the answer before the client reads it; nginx calls this a lingering close)
LINGER = 2.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """request_headers_timeout, request_timeout and idle_timeout of the proxy's `http` settings."""

    headers: float
    request: float
    idle: float

    @property
    def tick(self) -> float:
        """How often connections are looked at: a quarter of the shortest timeout, within [0.05, 1] s."""
        return min(1.0, max(0.05, min(self.headers, self.request, self.idle) / 4))


@dataclass(slots=True)
class Connection:
    """What one downstream connection is doing: waiting for a head, receiving bodies, or idle."""

    opened: float
    idle_since: float = 0.0
    served: int = 0  # requests answered on this connection
    # flows in progress → when their head was complete while the body is still arriving, else None
    streams: dict[str, float | None] = field(default_factory=dict)
    # keep-alive: when bytes of a next request head were first seen after the connection went idle
    next_head: float | None = None

    def head(self, flow: str, now: float) -> None:
        """A request head arrived; its body, if any, is still to come."""
        self.streams[flow] = now
        self.next_head = None

    def complete(self, flow: str) -> None:
        """The whole request arrived."""
        if flow in self.streams:
            self.streams[flow] = None

    def done(self, flow: str, now: float) -> None:
        """The flow was answered or failed; with no other flow in progress the connection is idle."""
        if self.streams.pop(flow, False) is not False:
            self.served += 1
            if not self.streams:
                self.idle_since = now

    def sending(self, now: float) -> None:
        """The last answer is still being written to a slow reader: not idle yet."""
        if not self.streams:
            self.idle_since = now

    def activity(self, now: float) -> None:
        """Bytes arrived while the connection was idle after a request: a next head has begun."""
        if not self.streams and self.served and self.next_head is None:
            self.next_head = now

    def overdue(self, now: float, limits: Timeouts) -> str | None:
        """Why this connection must be closed now, or None."""
        if self.streams:
            started = [t for t in self.streams.values() if t is not None]
            if started and now - min(started) > limits.request:
                return f"request body not complete within {limits.request:g}s (request_timeout)"
            return None  # requests being answered: the route's timeouts apply, not the client's
        if not self.served:
            if now - self.opened > limits.headers:
                return f"no complete request head within {limits.headers:g}s (request_headers_timeout)"
            return None
        if self.next_head is not None and now - self.next_head > limits.headers:
            return f"no complete request head within {limits.headers:g}s (request_headers_timeout)"
        if now - self.idle_since > limits.idle:
            return f"idle for {limits.idle:g}s between requests (idle_timeout)"
        return None


class ResetWindow:
    """Stream resets a client sent on one connection, over a sliding window: more than `limit` within
    `window` seconds is a rapid-reset attack (CVE-2023-44487), answered with GOAWAY as Envoy and nginx do."""

    __slots__ = ("limit", "window", "_times")

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self._times: deque[float] = deque()

    def hit(self, now: float) -> bool:
        """Count one reset; True when the connection is now over its limit."""
        times = self._times
        times.append(now)
        edge = now - self.window
        while times[0] <= edge:
            times.popleft()
        return len(times) > self.limit
