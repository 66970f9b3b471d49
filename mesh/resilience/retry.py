"""Retries, Envoy's semantics: which outcomes are retried, back-off with full jitter, Retry-After,
and a retry budget (Linkerd's retryRatio/minRetriesPerSecond) so retries cannot multiply an outage.
"""

from __future__ import annotations

import collections
import random
import time
from dataclasses import dataclass

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
GATEWAY_ERRORS = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int  # total tries, the first included
    retry_on: frozenset[str]
    status_codes: frozenset[int]
    base: float  # back-off base interval, seconds
    max: float  # back-off ceiling, seconds
    non_idempotent: bool

    def allows_method(self, method: str) -> bool:
        return self.non_idempotent or method in IDEMPOTENT

    def retriable_failure(self, kind: str) -> bool:
        """An attempt without a response (upstream.UpstreamError.kind, or 'per_try_timeout')."""
        on = self.retry_on
        if kind == "connect_failure":
            return bool(on & {"connect-failure", "5xx", "gateway-error"})
        if kind in ("reset", "protocol_error"):
            return bool(on & {"reset", "5xx"})
        if kind == "per_try_timeout":
            return bool(on & {"5xx", "gateway-error", "reset"})
        return False

    def retriable_status(self, status: int) -> bool:
        on = self.retry_on
        return ((status >= 500 and "5xx" in on) or (status in GATEWAY_ERRORS and "gateway-error" in on)
                or (status in self.status_codes and "retriable-status-codes" in on))

    def backoff(self, retry: int, rnd=random.random) -> float:
        """Full jitter: uniform in [0, min(max, base · 2^(retry-1))] for the retry-th retry."""
        return rnd() * min(self.max, self.base * (2 ** (retry - 1)))


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class RetryBudget:
    """Retries may be at most `ratio` of the requests of the last `ttl` seconds, plus a floor of
    `min_per_second` · `ttl` (Linkerd: retryRatio, minRetriesPerSecond; Finagle's RetryBudget)."""

    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0, ttl: float = 10.0,
                 clock=time.monotonic):
        self.ratio, self.min_per_second, self.ttl, self.clock = ratio, min_per_second, ttl, clock
        self._requests: collections.deque[tuple[int, int]] = collections.deque()  # (second, count)
        self._retries: collections.deque[tuple[int, int]] = collections.deque()
        self.requests = 0
        self.retries = 0
        self.exhausted = 0

    def _slide(self) -> None:
        horizon = int(self.clock()) - int(self.ttl)
        for q, attr in ((self._requests, "requests"), (self._retries, "retries")):
            while q and q[0][0] <= horizon:
                setattr(self, attr, getattr(self, attr) - q.popleft()[1])

    @staticmethod
    def _add(q: collections.deque, now: int) -> None:
        if q and q[-1][0] == now:
            q[-1] = (now, q[-1][1] + 1)
        else:
            q.append((now, 1))

    def request(self) -> None:
        """Count one original request (not a retry)."""
        self._slide()
        self._add(self._requests, int(self.clock()))
        self.requests += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        self._slide()
        if self.retries + 1 > self.ratio * self.requests + self.min_per_second * self.ttl:
            self.exhausted += 1
            return False
        self._add(self._retries, int(self.clock()))
        self.retries += 1
        return True
