"""Circuit breakers with pybreaker, one per endpoint of a cluster, usable under asyncio.

`with breakers.calling(key): await attempt()` counts the attempt; an open breaker makes the
endpoint unavailable until `reset_timeout`, then one trial request at a time probes it (half-open)
and `success_threshold` successes close it again.

Shared openings (`circuit_breaker.shared: redis://…`): each process keeps its own pybreaker objects
in memory (the request path never waits for Redis), publishes an opening to a Redis hash
`mitmesh:breakers:<cluster>` (endpoint → until, epoch seconds) and reads the hash every
`shared_poll` in a task of its own: an endpoint another process opened is opened here too, until the
same moment. pybreaker's CircuitRedisStorage is not used: it is synchronous and would block the
event loop on every call. Redis being down only turns sharing off until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable


def _pybreaker():
    """pybreaker, imported without the optional libraries it loads when present: the redis client
    for its CircuitRedisStorage (unused, see above) and tornado for `call_async` (unused: asyncio
    here). A proxy with no Redis in its config imports no redis (about 150 modules, 9 MB); where
    one of them is loaded already, pybreaker sees it as usual."""
    if "pybreaker" in sys.modules:
        return sys.modules["pybreaker"]
    hidden = [name for name in ("redis", "tornado") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError: pybreaker goes without
    try:
        return importlib.import_module("pybreaker")
    finally:
        for name in hidden:
            del sys.modules[name]


pybreaker = _pybreaker()

log = logging.getLogger("mitmesh.breaker")


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    fail_max: int = 5
    reset_timeout: float = 10.0
    success_threshold: int = 1
    shared: str | None = None  # Redis URI through which openings are shared
    shared_poll: float = 0.25


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
        self.shared = Shared.of(policy.shared) if policy.shared else None
        self._poller: asyncio.Task | None = None
        self._adopting = False  # an opening read from Redis is not published back
        if self.shared is not None:
            self._share()  # at once when made in the event loop (a config load), else at first use

    def _changed(self, name: str, old: str | None, new: str) -> None:
        self.transitions.append((name, old or "", new))
        by = " (opened by another proxy, shared through Redis)" if self._adopting else ""
        log.warning(f"circuit breaker {self.cluster} {name}: {old} → {new}{by}")
        if self.shared is not None and not self._adopting:
            if new == pybreaker.STATE_OPEN:
                self.shared.publish(self.cluster, name, time.time() + self.policy.reset_timeout)
            elif new == pybreaker.STATE_CLOSED and old == pybreaker.STATE_HALF_OPEN:
                self.shared.clear(self.cluster, name)
        if self._on_change:
            self._on_change(name, old, new)

    def _share(self) -> None:
        """Start reading others' openings (once, from the event loop that uses the breakers)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # made outside the loop: available() starts it at first use
            return
        self._poller = loop.create_task(_poll(weakref.ref(self), self.shared, self.cluster,
                                              self.policy.shared_poll))

    def adopt(self, name: str, until: float) -> None:
        """Another proxy opened this endpoint's breaker until `until` (epoch seconds): open it here
        too, for the same time, unless it is already open or probing here."""
        host, _, port = name.rpartition(":")
        try:
            key = (host, int(port))
        except ValueError:
            return
        cb = self.get(key)
        if cb.current_state != pybreaker.STATE_CLOSED or until <= time.time():
            return
        self._adopting = True
        try:
            cb.open()
        finally:
            self._adopting = False
        cb._state_storage.opened_at = datetime.fromtimestamp(until - cb.reset_timeout, timezone.utc)

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

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
        if self.shared is not None and self._poller is None:
            self._share()
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


class Shared:
    """One Redis connection pool per URI, for every cluster's breakers in this process."""

    _all: dict[str, Shared] = {}

    def __init__(self, uri: str):
        import redis.asyncio  # noqa: F401  with the config that names it, not in a poll on the loop

        self.uri = uri
        self._client = None
        self._loop = None
        self.down: str | None = None  # the last error, while Redis cannot be reached
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def of(cls, uri: str) -> Shared:
        found = cls._all.get(uri)
        if found is None:
            found = cls._all[uri] = cls(uri)
        return found

    @property
    def redis(self):
        """The async client of the running event loop (a client is bound to the loop it was made in)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio  # only where sharing is configured

            self._client = redis.asyncio.Redis.from_url(self.uri, socket_timeout=1.0,
                                                        socket_connect_timeout=1.0)
            self._loop = loop
        return self._client

    @staticmethod
    def key(cluster: str) -> str:
        return f"mitmesh:breakers:{cluster}"

    def _spawn(self, coro) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a unit test driving breakers synchronously)
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def publish(self, cluster: str, endpoint: str, until: float) -> None:
        async def go():
            try:
                async with self.redis.pipeline(transaction=False) as p:
                    p.hset(self.key(cluster), endpoint, f"{until:.3f}")
                    p.expire(self.key(cluster), 3600)  # a forgotten cluster's hash goes away
                    await p.execute()
                self._up()
            except Exception as e:  # noqa: BLE001  sharing is best effort; the local breaker stands
                self._failed(e)
        self._spawn(go())

    def clear(self, cluster: str, endpoint: str) -> None:
        async def go():
            try:
                await self.redis.hdel(self.key(cluster), endpoint)
                self._up()
            except Exception as e:  # noqa: BLE001
                self._failed(e)
        self._spawn(go())

    async def read(self, cluster: str) -> dict[str, float]:
        """Endpoint → until, for the openings still in force (stale ones are dropped)."""
        raw = await self.redis.hgetall(self.key(cluster))
        now, out, stale = time.time(), {}, []
        for field, value in raw.items():
            try:
                until = float(value)
            except ValueError:
                until = 0.0
            name = field.decode("utf-8", "replace")
            if until > now:
                out[name] = until
            else:
                stale.append(field)
        if stale:
            await self.redis.hdel(self.key(cluster), *stale)
        return out

    def _up(self) -> None:
        if self.down is not None:
            log.warning(f"circuit breakers: Redis {self.uri} reachable again; openings are shared")
            self.down = None

    def _failed(self, e: Exception) -> None:
        if self.down is None:
            log.warning(f"circuit breakers: Redis {self.uri} unreachable ({e}); each proxy keeps its "
                        f"own breakers until it is back")
        self.down = str(e) or type(e).__name__


async def _poll(ref: weakref.ref, shared: Shared, cluster: str, every: float) -> None:
    """Open here what other proxies opened; ends when its Breakers is gone (a reload replaced it)."""
    while True:
        breakers = ref()
        if breakers is None:
            return
        try:
            for name, until in (await shared.read(cluster)).items():
                breakers.adopt(name, until)
            shared._up()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001  never let a Redis error end the loop
            shared._failed(e)
        del breakers
        await asyncio.sleep(every)
