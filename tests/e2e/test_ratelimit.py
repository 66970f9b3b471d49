"""Rate limits end to end: two gateway processes sharing Redis allow exactly the limit between them,
one process with memory storage allows exactly its limit, headers count down, and a killed Redis
neither stops the traffic nor goes unnoticed."""

from __future__ import annotations

import pytest

from mesh.policies import apikeys
from tests.redis_server import start_redis

from .conftest import Mesh, get, wait_until
from .traffic import config, gateway_copy, service, start_gateways

LIMIT = 50
KEYS = ("key-c", "consumer-1", "consumer-2")


def limited(storage: str, per_minute: int) -> dict:
    return config(
        {"catalog": service("catalog", "v1")},
        [{"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
          "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}, "policies": ["per-consumer"]}],
        # storage_timeout: this shared test machine may be slow; the default (100ms) suits production
        {"per-consumer": {"rate_limit": {"minute": per_minute, "key": "api_key", "storage": storage,
                                         "storage_timeout": "2s"},
                          # the limit counts each key this policy verified
                          "api_key": {"consumers": {k: {"key_sha256": apikeys.digest(k)}
                                                    for k in KEYS}}}})


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    """Redis; one catalog; gateways a and b on Redis storage and gateway c on memory storage."""
    tmp = tmp_path_factory.mktemp("ratelimit")
    redis = start_redis(tmp / "logs")
    a = Mesh(tmp / "a", limited(redis.url, LIMIT))
    (tmp / "a").mkdir()
    a.write()
    b = gateway_copy(a, tmp / "b")
    c = Mesh(tmp / "c", {**limited("memory", 20), "services": a.config["services"]})
    (tmp / "c").mkdir()
    c.write()
    try:
        a.start_services()
        start_gateways(a, b, c)
        yield redis, a, b, c
    finally:
        for m in (c, b, a):
            m.stop()
        redis.child.stop()


def test_memory_storage_allows_exactly_the_limit_of_one_process(meshes):
    _, _, _, c = meshes
    results = [get(c.url + "/catalog/items", headers={"x-api-key": "key-c"}) for _ in range(30)]
    assert [s for s, _, _ in results] == [200] * 20 + [429] * 10
    assert [h["ratelimit-remaining"] for _, _, h in results] == [str(19 - i) for i in range(20)] + ["0"] * 10
    assert all(h["ratelimit-limit"] == "20" for _, _, h in results)
    status, body, headers = results[-1]
    assert body["error"] == "rate_limited" and 1 <= int(headers["retry-after"]) <= 60


def test_two_gateways_share_one_redis_limit_and_survive_its_death(meshes):
    redis, a, b, _ = meshes
    key = {"x-api-key": "consumer-1"}
    results = [get((a if i % 2 else b).url + "/catalog/items", headers=key) for i in range(80)]
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) == LIMIT and statuses == [200] * LIMIT + [429] * (80 - LIMIT)
    # one count across both processes: 49, 48, ... 0, whichever gateway answered
    assert [h["ratelimit-remaining"] for _, _, h in results[:LIMIT]] == [str(LIMIT - 1 - i) for i in range(LIMIT)]
    assert all(h["ratelimit-remaining"] == "0" and int(h["retry-after"]) >= 1 for _, _, h in results[LIMIT:])
    assert get(a.url + "/catalog/items", headers={"x-api-key": "consumer-2"})[0] == 200  # its own count

    redis.kill()  # mid-test: the storage is gone
    after = [get((a if i % 2 else b).url + "/catalog/items", headers=key) for i in range(20)]
    assert [s for s, _, _ in after] == [200] * 20  # fail open: requests keep flowing
    assert all("ratelimit-limit" not in h for _, _, h in after)
    for m in (a, b):
        counters = m.status()["counters"]
        assert counters["ratelimit_storage_errors"] >= 1 and counters["ratelimit_storage_outages"] == 1
        log = wait_until(lambda: "rate limit storage" in (t := m.children["gateway"].log.read_text()) and t)
        assert f"rate limit storage redis://127.0.0.1:{redis.port}/0 is unreachable" in log
        assert "allowing requests (fail open)" in log
