"""Circuit breakers: fail_max consecutive failures open, reset_timeout lets one probe through,
success closes; cancellation is not a failure."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.resilience.breaker import BreakerPolicy, Breakers


class Boom(Exception):
    pass


async def attempt(b: Breakers, key, fail: bool):
    with b.calling(key):
        await asyncio.sleep(0)
        if fail:
            raise Boom()


async def test_opens_after_fail_max_then_half_open_probe_closes():
    changes = []
    b = Breakers("c/v1", BreakerPolicy(fail_max=3, reset_timeout=0.2), lambda *a: changes.append(a))
    key = ("127.0.0.1", 1)
    for _ in range(3):
        with pytest.raises(Boom):
            await attempt(b, key, True)
    assert b.state(key) == "open" and not b.available(key)
    time.sleep(0.25)
    assert b.available(key)
    probe = asyncio.ensure_future(attempt(b, key, False))
    await asyncio.sleep(0)  # the probe is in flight: nobody else may use the endpoint
    assert not b.available(key)
    await probe
    assert b.state(key) == "closed" and b.available(key)
    assert [c[2] for c in changes] == ["open", "half-open", "closed"]


async def test_failed_probe_reopens_and_cancel_is_not_a_failure():
    b = Breakers("c/v1", BreakerPolicy(fail_max=1, reset_timeout=0.1))
    key = ("127.0.0.1", 2)
    with pytest.raises(Boom):
        await attempt(b, key, True)
    time.sleep(0.12)
    with pytest.raises(Boom):
        await attempt(b, key, True)
    assert b.state(key) == "open"
    other = ("127.0.0.1", 3)

    async def cancelled():
        with b.calling(other):
            raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        await cancelled()
    assert b.state(other) == "closed" and b.get(other).fail_counter == 0


async def test_an_opening_is_shared_through_redis_until_the_same_moment(redis_server):
    """Two proxies (two Breakers on one Redis): what one opens, the other opens within shared_poll
    and for the rest of the same reset_timeout, without a failure of its own; a recovery is cleared."""
    policy = BreakerPolicy(fail_max=2, reset_timeout=1.0, shared=redis_server.url, shared_poll=0.05)
    changes = []
    a = Breakers("catalog/v1", policy)
    b = Breakers("catalog/v1", policy, lambda *c: changes.append(c))
    key = ("127.0.0.1", 9101)
    assert a.available(key) and b.available(key)  # both start reading Redis
    for _ in range(2):
        with pytest.raises(Boom):
            await attempt(a, key, True)
    opened = time.time()
    assert a.state(key) == "open"
    for _ in range(40):
        await asyncio.sleep(0.025)
        if b.state(key) == "open":
            break
    assert b.state(key) == "open" and not b.available(key), b.status()
    assert b.get(key).fail_counter == 0  # b never failed itself
    assert changes == [("127.0.0.1:9101", "closed", "open")]
    # b's opening ends when a's does, not a poll later plus a whole reset_timeout
    ends = b.get(key)._state_storage.opened_at.timestamp() + 1.0
    assert opened - 0.2 < ends - 1.0 <= opened + 0.05
    # after reset_timeout a probes and closes: the shared opening is cleared, b probes on its own
    await asyncio.sleep(1.05)
    await attempt(a, key, False)
    assert a.state(key) == "closed"
    await asyncio.sleep(0.2)
    import redis.asyncio
    r = redis.asyncio.Redis.from_url(redis_server.url)
    assert await r.hgetall("mitmesh:breakers:catalog/v1") == {}
    await r.aclose()
    assert b.available(key)
    await attempt(b, key, False)
    assert b.state(key) == "closed"
    a.stop(), b.stop()


async def test_sharing_never_blocks_or_fails_when_redis_is_down(redis_server):
    policy = BreakerPolicy(fail_max=1, reset_timeout=5.0, shared=redis_server.url, shared_poll=0.05)
    redis_server.kill()
    a = Breakers("orders/v1", policy)
    key = ("127.0.0.1", 9201)
    assert a.available(key)
    with pytest.raises(Boom):
        await attempt(a, key, True)
    assert a.state(key) == "open" and not a.available(key)  # the local breaker works as ever
    await asyncio.sleep(0.2)
    assert a.shared.down  # and says why sharing is off (in /status as breakers_shared)
    a.stop()
