"""Circuit breakers: fail_max consecutive failures open, reset_timeout lets one probe through,
success closes; cancellation is not a failure."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.breaker import BreakerPolicy, Breakers


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
