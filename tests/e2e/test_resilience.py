"""Resilience end to end with real processes: a failing instance among three, everything failing
(budget and breaker), an instance killed under load, and POSTs never retried unless allowed."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from mesh.runtime import procs
from tests.redis_server import start_redis

from .conftest import Mesh, get, wait_until


def catalog_mesh(tmp, *, instances=3, service_extra=None, policy=None) -> Mesh:
    p = procs.free_port
    svc = {"versions": {"v1": {"launch": {"app": "catalog"},
                               "endpoints": [f"127.0.0.1:{p()}" for _ in range(instances)]}}}
    svc.update(service_extra or {})
    config = {
        "version": 1,
        "gateway": {"listeners": [{"name": "public", "port": p()}], "admin": {"port": p()}},
        "services": {"catalog": svc},
        "routes": [{"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
                    "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}, "policies": ["p"]}],
        "policies": {"p": policy or {"retries": {"attempts": 3, "retry_on": ["5xx"],
                                                 "backoff": {"base": "1ms", "max": "10ms"}}}},
    }
    m = Mesh(tmp, config)
    m.write()
    return m


@pytest.fixture
def started():
    made = []

    def start(m: Mesh) -> Mesh:
        made.append(m)
        m.start_services()
        m.start_gateway()
        return m

    yield start
    for m in made:
        m.stop()


def knobs(m: Mesh, name: str, **values) -> dict:
    host, port = m.children[name].ports[0]
    status, body, _ = get(f"http://{host}:{port}/__knobs", data=json.dumps(values).encode() if values else None)
    return body


def hits(m: Mesh) -> int:
    return sum(knobs(m, n)["hits"] for n in m.children if n.startswith("catalog"))


async def load(url: str, count: int, concurrency: int = 16, method: str = "GET") -> list[tuple[float, int]]:
    out: list[tuple[float, int]] = []
    queue = iter(range(count))

    async def worker(session):
        for _ in queue:
            try:
                async with session.request(method, url) as r:
                    await r.read()
                    out.append((time.monotonic(), r.status))
            except aiohttp.ClientError:
                out.append((time.monotonic(), 0))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return out


def test_one_instance_of_three_answering_503(started, tmp_path):
    m = started(catalog_mesh(tmp_path))
    knobs(m, "catalog-v1-1", error_rate=1.0, error_status=503)
    results = asyncio.run(load(m.url + "/catalog/items/1", 1000))
    ok = sum(1 for _, s in results if s == 200)
    assert ok / len(results) >= 0.999, (ok, len(results))
    # its first failures were retried on the others; then outlier detection (on by default) ejected it
    assert 5 <= knobs(m, "catalog-v1-1")["hits"] < 50
    ejected = m.status()["clusters"]["catalog/v1"]["ejected"]
    assert ejected == [f"127.0.0.1:{m.children['catalog-v1-1'].ports[0][1]}"]


def test_everything_failing_budget_breaker_and_recovery(started, tmp_path):
    extra = {"circuit_breaker": {"fail_max": 5, "reset_timeout": "2s"},
             "retry_budget": {"ratio": 0.2, "min_per_second": 1, "ttl": "10s"}}
    m = started(catalog_mesh(tmp_path, service_extra=extra))
    for name in ("catalog-v1-1", "catalog-v1-2", "catalog-v1-3"):
        knobs(m, name, error_rate=1.0, error_status=503)
    before = hits(m)
    results = asyncio.run(load(m.url + "/catalog/items/1", 300, concurrency=1))
    attempts = hits(m) - before
    assert attempts <= 1.2 * len(results) + 10, attempts  # ratio 0.2 plus 1/s over the 10 s ttl
    # every endpoint saw fail_max failures in a row at most before its breaker opened
    assert attempts <= 3 * 5 + 3, attempts  # then: fast 503 circuit_open without upstream attempts
    status, body, _ = get(m.url + "/catalog/items/1")
    assert status == 503 and body["error"] == "circuit_open" and body["cluster"] == "catalog/v1"
    for name in ("catalog-v1-1", "catalog-v1-2", "catalog-v1-3"):
        knobs(m, name, error_rate=0.0)
    recovered = time.monotonic()
    wait_until(lambda: get(m.url + "/catalog/items/1")[0] == 200, timeout=2 + 1, interval=0.05)
    assert time.monotonic() - recovered <= 2 + 1  # reset_timeout + 1 s


def test_sigkill_of_one_instance_under_load(started, tmp_path):
    policy = {"retries": {"attempts": 3, "retry_on": ["5xx", "connect-failure", "reset"],
                          "backoff": {"base": "1ms", "max": "10ms"}},
              "timeout": {"request": "5s", "per_try": "1s"}}
    extra = {"outlier_detection": {"consecutive_5xx": 3, "base_ejection_time": "30s",
                                   "max_ejection_percent": 34}}
    m = started(catalog_mesh(tmp_path, policy=policy, service_extra=extra))

    async def scenario():
        task = asyncio.create_task(load(m.url + "/catalog/items/1", 3000, concurrency=8))
        await asyncio.sleep(1.0)
        m.children["catalog-v1-2"].kill()
        killed = time.monotonic()
        return killed, await task

    killed, results = asyncio.run(scenario())
    ok = sum(1 for _, s in results if s == 200)
    assert ok / len(results) >= 0.995, (ok, len(results))
    late = [s for t, s in results if t > killed + 10]
    assert all(s == 200 for s in late)


def test_post_is_never_retried_unless_the_route_opts_in(started, tmp_path):
    m = started(catalog_mesh(tmp_path, instances=2))
    for name in ("catalog-v1-1", "catalog-v1-2"):
        knobs(m, name, error_rate=1.0, error_status=503)
    before = hits(m)
    results = asyncio.run(load(m.url + "/catalog/orders", 20, concurrency=1, method="POST"))
    assert all(s == 503 for _, s in results)
    assert hits(m) - before == 20  # one attempt each


def test_breaker_openings_are_shared_by_workers_through_redis(tmp_path):
    """Two gateway workers, one Redis: the breaker one worker opens is open in the other too, so
    fresh connections (spread over both workers by the kernel) make no upstream attempt at all.
    Without sharing the other worker would spend its own fail_max attempts first."""
    redis = start_redis(tmp_path / "logs")
    m = catalog_mesh(tmp_path, instances=1, policy={"timeout": {"request": "5s"}}, service_extra={
        "circuit_breaker": {"fail_max": 3, "reset_timeout": "30s", "shared": redis.url, "shared_poll": "100ms"}})
    try:
        m.start_services()
        m.start_gateway(workers=2)
        knobs(m, "catalog-v1-1", error_rate=1.0, error_status=503)

        async def trip_then_fresh_connections():
            url = m.url + "/catalog/items/1"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
                tripped = []
                for _ in range(3):  # one keep-alive connection: one worker sees fail_max failures
                    async with one.get(url) as r:
                        tripped.append((r.status, (await r.json())["error"]))
            await asyncio.sleep(0.5)
            fresh = []
            for _ in range(20):
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
                    async with s.get(url) as r:
                        fresh.append((r.status, (await r.json())["error"]))
            return tripped, fresh

        tripped, fresh = asyncio.run(trip_then_fresh_connections())
        assert all(status == 503 and error != "circuit_open" for status, error in tripped), tripped
        assert fresh == [(503, "circuit_open")] * 20, fresh
        assert knobs(m, "catalog-v1-1")["hits"] == 3  # nothing reached the instance after the trip
    finally:
        m.stop()
        redis.child.stop()
