"""Rate limits on the `limits` library: what (windows), how (strategy) and where (storage) kept apart.

Memory storage is per worker and synchronous (a dict update, no await); Redis storage is shared by
every worker and gateway using it, asynchronous, bounded by a timeout, and when it cannot be
reached the limiter fails open (or closed, if configured), logs the outage once and counts every
request decided without it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import limits
from limits import aio
from limits import strategies as sync_strategies

from mesh.telemetry import metrics
from mesh.config import schema
from mesh.security.redact import SECRET_HEADERS, named

log = logging.getLogger("mitmesh.ratelimit")

WINDOWS = (("second", limits.RateLimitItemPerSecond, 1), ("minute", limits.RateLimitItemPerMinute, 60),
           ("hour", limits.RateLimitItemPerHour, 3600), ("day", limits.RateLimitItemPerDay, 86400))
STRATEGIES = {"fixed_window": "fixed-window", "sliding_window": "sliding-window-counter",
              "moving_window": "moving-window"}
# the fields of an Outcome's headers, in the order `_answer` makes them
FIELDS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")
_LIMIT, _REMAINING, _RESET, _POLICY = FIELDS
RETRY_STORAGE_AFTER = 1.0  # seconds an unreachable storage is not asked again


@dataclass(frozen=True, slots=True, eq=False)  # identity: cheap to hash per request
class Policy:
    """One route's compiled rate limit."""

    route: str
    items: tuple[limits.RateLimitItem, ...]  # shortest window first
    key: str
    header: str | None  # lower case
    claim: str | None
    # the verified credentials it counts, as prefixes of FlowState.credential (`api_key:`, `jwt:`,
    # `oauth2:`): key: api_key, or key: header naming a header the route's authentication reads a
    # credential from (Authn strips it before this counts). Empty: it counts no credential.
    credential: tuple[str, ...]
    hashed: bool  # key: header naming a header that usually carries a secret: its value is hashed
    strategy: str  # limits' name
    storage: str  # "memory" or an async+redis:// URI
    fail_open: bool
    timeout: float
    policy_header: str  # RateLimit-Policy: 50;w=60, 1000;w=3600
    headers: bool = True  # RateLimit-* sent to the client (false: Kong's hide_client_headers)

    @property
    def span(self) -> int:
        """Seconds of its longest window: a key not counted for this long has nothing counted."""
        return max((item.get_expiry() for item in self.items), default=0)


def compile(model: schema.RateLimit, route: schema.Route,
            auth: Mapping[str, Any] | None = None) -> Policy:
    """`auth`: the route's authentication models by kind (jwt, oauth2, api_key), if any."""
    auth = auth or {}
    items = tuple(cls(getattr(model, name)) for name, cls, _ in WINDOWS if getattr(model, name))
    header = model.header.lower() if model.header else None
    credential = credentials_in(header, auth) if header else ()
    if model.key == "api_key":
        credential = ("api_key:",)
    return Policy(route.name, items, model.key, header, model.claim, credential,
                  bool(header) and not credential and header in SECRET_HEADERS,
                  STRATEGIES[model.strategy], _storage(model.storage), model.fail_open,
                  model.storage_timeout, _policy_header(items), model.headers)


def credentials_in(header: str, auth: Mapping[str, Any]) -> tuple[str, ...]:
    """The methods (as FlowState.credential prefixes) whose credential the route's authentication
    reads from this header (lower case): a rate limit on it counts the verified credential."""
    found = []
    key = auth.get("api_key")
    if key is not None and key.header is not None and key.header.lower() == header:
        found.append("api_key:")
    for kind in ("jwt", "oauth2"):
        token = auth.get(kind)
        if token is not None and any(s.header is not None and s.header.lower() == header
                                     for s in token.token_from):
            found.append(kind + ":")
    return tuple(found)


def _storage(uri: str) -> str:
    """limits' storage URI: Redis through its asyncio client, imported with the config that names it
    (a build runs off the event loop), never within the first request's storage timeout."""
    if not uri.startswith(("redis://", "rediss://")):
        return uri
    # limits' Redis storage imports ~450 modules (its dependency probing) the first time one is
    # made: made once here, so that cost is not paid inside the first request's storage timeout
    # (it connects nothing; the storages that count are made per proxy by Limits)
    redis_storage("async+" + uri, 1.0)
    return "async+" + uri


def _policy_header(items: tuple[limits.RateLimitItem, ...]) -> str:
    return ", ".join(f"{i.amount};w={i.get_expiry()}" for i in items)


AUTH_FAILURES = "auth-failures"  # the `route` of the failed-authentication counters


def compile_auth_failures(model: schema.AuthFailures) -> Policy:
    """The per-client-IP counter of failed authentications, as a rate limit of its own."""
    items = tuple(cls(getattr(model, name)) for name, cls, _ in WINDOWS if getattr(model, name, None))
    return Policy(AUTH_FAILURES, items, "ip", None, None, (), False, STRATEGIES["fixed_window"],
                  _storage(model.storage), True, model.storage_timeout, _policy_header(items))


class Outcome(NamedTuple):  # a tuple: made on every request, a frozen dataclass costs more
    allowed: bool
    headers: tuple[tuple[str, str], ...]  # RateLimit-* (empty when the storage was unreachable)
    retry_after: int = 0
    unavailable: bool = False  # decided without the storage
    window: str = ""  # the window that was exceeded

    def describe(self) -> str:
        if self.unavailable:
            return "storage unreachable: " + ("allowed (fail open)" if self.allowed else "refused (fail closed)")
        if self.allowed:  # headers are (Limit, Remaining, Reset, Policy), as `_outcome` makes them
            return f"allowed, {self.headers[1][1]}/{self.headers[0][1]} left"
        return f"over {self.window}, retry after {self.retry_after}s"


def key_text(kind: str, value: str, hashed: bool = False) -> str:
    """A counter key; a value that may be a secret is `hashed` (`redact.named`, as a verified
    credential's identity) so no secret lands in the storage or the logs."""
    return named(kind, value) if hashed else f"{kind}:{value}"


def _outcome(policy: Policy, stats: list[tuple[limits.RateLimitItem, bool, Any]], now: float) -> Outcome:
    """Headers from the most restrictive window: fewest left, then the later reset.
    `stats` holds (item, allowed, (reset time, remaining)) per window tried."""
    best = None
    for item, ok, (reset, remaining) in stats:
        rank = (0 if not ok else 1, remaining, -reset)
        if best is None or rank < best[0]:
            best = (rank, item, ok, reset, remaining)
    assert best is not None
    _, item, ok, reset, remaining = best
    return _answer(policy, item, ok, reset, remaining, now)


def _answer(policy: Policy, item: limits.RateLimitItem, ok: bool, reset: float, remaining: int,
            now: float) -> Outcome:
    """The outcome of the most restrictive window: `item`, whether it allowed the hit, when it
    ends and what is left in it."""
    wait = math.ceil(reset - now) if reset > now else 0
    headers = ((_LIMIT, str(item.amount)), (_REMAINING, str(remaining if remaining > 0 else 0)),
               (_RESET, str(wait)), (_POLICY, policy.policy_header))
    if ok:
        return Outcome(True, headers)
    return Outcome(False, headers, retry_after=max(1, wait), window=f"{item.amount} per {item.GRANULARITY.name}")


class LoopMemoryStorage(limits.storage.MemoryStorage):
    """limits' memory storage without its timer thread.

    MemoryStorage starts a threading.Timer 10 ms after every change to drop expired counters: about
    a hundred threads a second under load, each taking the GIL from the event loop (GIL handoffs
    wait up to the 5 ms switch interval). Counts never depend on that sweep (expired windows are
    dropped when read), so here it is skipped and `expire()` is called from the event loop instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()  # the one __init__ starts

    def _MemoryStorage__schedule_expiry(self) -> None:  # limits' private hook, called on every change
        pass

    def expire(self) -> None:
        """Drop expired counters and moving-window entries (memory only; counts are unaffected)."""
        self._MemoryStorage__expire_events()

    # The fixed window reads and counts on the same counters as limits' `incr`, `get` and
    # `get_expiry` (the fixed-window strategy reads them), without their per-call wrapper and
    # per-key lock: the event loop is this storage's only user (no timer thread, see above).
    # Counting is `Limiters._hit_fixed`; looking is this.

    def look(self, key: str, now: float) -> tuple[int, float]:
        """`get(key)` and `get_expiry(key)` without counting: (0, now) for a window not started."""
        end = self.expirations.get(key, 0)
        if end <= now:
            return 0, now
        return self.storage.get(key, 0), end


class Limiters:
    """The storages and limiters of one proxy process. They outlive reloads: counters survive edits."""

    def __init__(self):
        self._memory = LoopMemoryStorage()
        self._keys: dict[tuple[Policy, str], tuple] = {}  # limits' key strings, built once (_windows)
        self._fresh: dict[Policy, Outcome] = {}  # peek_sync's answer for a key never counted
        self._sync: dict[str, Any] = {}
        self._async: dict[tuple[str, str, float], Any] = {}
        self._storages: dict[tuple[str, float], Any] = {}
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    # memory: synchronous, no await on the hot path

    def hit_sync(self, policy: Policy, key: str) -> Outcome:
        if policy.strategy == "fixed-window":
            return self._hit_fixed(policy, key)
        stats = []
        ids = (policy.strategy, policy.route, key)
        limiter = self._sync_limiter(policy.strategy)
        for item in policy.items:
            ok = limiter.hit(item, *ids)
            stats.append((item, ok, limiter.get_window_stats(item, *ids)))
            if not ok:
                break
        return _outcome(policy, stats, time.time())

    def _hit_fixed(self, policy: Policy, key: str) -> Outcome:
        """One hit of the memory fixed window. Per window, what limits' `incr(key, expiry)` then
        `get_expiry(key)` do (a window that has ended is dropped first, as `get` drops it): the
        count comes back from the increment, one key and one step per window instead of the
        strategy's hit plus get_window_stats (three and five calls). The outcome is `_outcome`'s,
        from the same ranking, made as the windows are counted: the window that refuses is the
        last counted, so it is the answer; else the one with fewest left, then the later end."""
        windows = self._windows(policy, key)
        memory = self._memory
        counts, ends = memory.storage, memory.expirations
        now = time.time()
        best, fewest, last = None, 0, 0.0
        for item, k, seconds in windows:
            end = ends.get(k, 0)
            if end <= now:  # a new window
                memory.locks.pop(k, None)
                counts[k] = count = 1
                ends[k] = end = now + seconds
            else:
                count = counts[k] = counts.get(k, 0) + 1
                if count == 1:
                    ends[k] = end = now + seconds
            left = item.amount - count
            if left < 0:
                return _answer(policy, item, False, end, left, now)
            if best is None or left < fewest or (left == fewest and end > last):
                best, fewest, last = item, left, end
        assert best is not None
        return _answer(policy, best, True, last, fewest, now)

    def _sync_limiter(self, strategy: str) -> Any:
        limiter = self._sync.get(strategy)
        if limiter is None:
            limiter = self._sync[strategy] = sync_strategies.STRATEGIES[strategy](self._memory)
        return limiter

    def _windows(self, policy: Policy, key: str) -> tuple[tuple[limits.RateLimitItem, str, int], ...]:
        """(item, limits' key string, seconds) of `key`'s windows, built once per policy and key."""
        windows = self._keys.get((policy, key))
        if windows is None:
            if len(self._keys) > 100_000:  # many clients: start over rather than grow
                self._keys.clear()
            ids = (policy.strategy, policy.route, key)
            windows = self._keys[(policy, key)] = tuple((item, item.key_for(*ids), item.get_expiry())
                                                        for item in policy.items)
        return windows

    def peek_sync(self, policy: Policy, key: str) -> Outcome:
        """Whether one more hit would be allowed, without counting one (memory storage)."""
        if policy.strategy == "fixed-window":  # what the strategy's test and get_window_stats read
            windows = self._windows(policy, key)
            started = self._memory.expirations
            if not any(w[1] in started for w in windows):  # the usual case: nothing counted for this key
                return self._fresh_outcome(policy)
            now = time.time()
            look = self._memory.look
            stats = []
            for item, k, _ in windows:
                count, reset = look(k, now)
                stats.append((item, count < item.amount, (reset, item.amount - count)))
            return _outcome(policy, stats, now)
        limiter = self._sync_limiter(policy.strategy)
        ids = (policy.strategy, policy.route, key)
        stats = [(item, limiter.test(item, *ids), limiter.get_window_stats(item, *ids)) for item in policy.items]
        return _outcome(policy, stats, time.time())

    def _fresh_outcome(self, policy: Policy) -> Outcome:
        """A peek at a key with no window started: allowed, every window full, reset 0 (as
        `_outcome` makes it from limits' (0, now) for each window), built once per policy."""
        outcome = self._fresh.get(policy)
        if outcome is None:
            if len(self._fresh) > 64:  # policies of old snapshots
                self._fresh.clear()
            now = time.time()
            outcome = self._fresh[policy] = _outcome(policy, [(i, True, (now, i.amount)) for i in policy.items], now)
        return outcome

    def expire(self) -> None:
        """Memory housekeeping; the RateLimit addon calls it every second from the event loop."""
        self._memory.expire()

    # Redis: asynchronous, bounded by the policy's timeout, fail open or closed

    async def hit_async(self, policy: Policy, key: str, peek: bool = False) -> Outcome:
        """Count one hit (or, with `peek`, only look whether one more would be allowed)."""
        uri = policy.storage
        if time.monotonic() < self._down_until.get(uri, 0.0):
            return self._unavailable(policy, None)
        limiter = self._limiter(policy)
        ids = (policy.strategy, policy.route, key)
        stats = []
        try:
            async with asyncio.timeout(policy.timeout):
                for item in policy.items:
                    if peek:
                        stats.append((item, await limiter.test(item, *ids),
                                      await limiter.get_window_stats(item, *ids)))
                        continue
                    if policy.strategy == "fixed-window":  # two round trips instead of three
                        k = item.key_for(*ids)
                        count = await limiter.storage.incr(k, item.get_expiry())
                        ok = count <= item.amount
                        stats.append((item, ok, (await limiter.storage.get_expiry(k), item.amount - count)))
                    else:
                        ok = await limiter.hit(item, *ids)
                        stats.append((item, ok, await limiter.get_window_stats(item, *ids)))
                    if not ok:
                        break
        except Exception as e:  # redis errors, timeouts, refused connections: all mean "unreachable"
            return self._unavailable(policy, e)
        if uri in self._failures:
            log.warning(f"rate limit storage {redacted(uri)} is reachable again "
                        f"({self._failures.pop(uri)} requests were decided without it)")
        return _outcome(policy, stats, time.time())

    def _limiter(self, policy: Policy) -> Any:
        key = (policy.storage, policy.strategy, policy.timeout)
        limiter = self._async.get(key)
        if limiter is None:
            skey = (policy.storage, policy.timeout)
            storage = self._storages.get(skey)
            if storage is None:
                storage = self._storages[skey] = redis_storage(policy.storage, policy.timeout)
            limiter = self._async[key] = aio.strategies.STRATEGIES[policy.strategy](storage)
        return limiter

    def _unavailable(self, policy: Policy, error: Exception | None) -> Outcome:
        uri = policy.storage
        metrics.RATELIMIT_STORAGE_ERRORS.labels(policy.route, "allowed" if policy.fail_open else "refused").inc()
        if error is not None:
            self._down_until[uri] = time.monotonic() + RETRY_STORAGE_AFTER
            if uri not in self._failures:
                metrics.RATELIMIT_STORAGE_OUTAGES.inc()
                what = "allowing requests (fail open)" if policy.fail_open else "refusing requests (fail closed)"
                log.error(f"rate limit storage {redacted(uri)} is unreachable "
                          f"({type(error).__name__}: {error or 'timed out'}); {what}")
        self._failures[uri] = self._failures.get(uri, 0) + 1
        return Outcome(policy.fail_open, (), unavailable=True)

    async def close(self) -> None:
        for storage in self._storages.values():
            client = getattr(getattr(storage, "bridge", None), "storage", None)
            if client is not None:
                try:
                    await client.aclose()
                except Exception:
                    pass
        self._storages.clear()
        self._async.clear()


def redis_storage(uri: str, timeout: float) -> Any:
    """limits' async Redis storage on redis-py: short socket timeouts and one quick retry, so a
    dead Redis costs a refused connect, not seconds of back-off."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aio.storage.RedisStorage(uri, implementation="redispy", key_prefix="mitmesh",
                                    socket_connect_timeout=timeout, socket_timeout=timeout,
                                    retry=Retry(NoBackoff(), 1))


def redacted(uri: str) -> str:
    """A storage URI without its password, for logs."""
    scheme, sep, rest = uri.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme.removeprefix("async+") + sep + rest
