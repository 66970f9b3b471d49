"""Mirroring end to end: every request to a route is copied to catalog v2 (which answers differently);
the client's latency stays within 10 % of the same route without a mirror, and each differing answer
is counted, logged and listed in /status with its request id."""

from __future__ import annotations

import http.client
import json
import re
import statistics
import time

import pytest

from .conftest import wait_until
from .traffic import config, running, service


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mirror")
    route = {"forward": {"service": "catalog", "version": "v1", "rewrite": {"prefix": "/"}}}
    cfg = config(
        {"catalog": service("catalog", "v1", "v2")},
        [{"name": "plain", "match": {"path": {"prefix": "/plain/"}}, **route},
         {"name": "mirrored", "match": {"path": {"prefix": "/mirrored/"}}, **route, "policies": ["shadow"]}],
        {"shadow": {"mirror": {"service": "catalog", "version": "v2", "percent": 100,
                               "ignore": ["instance", "version"]}}})
    yield from running(tmp, cfg)


def test_differences_are_counted_logged_and_listed(mesh):
    before = mesh.status()["counters"].get("mirror_diffs", 0)
    ids = []
    port = mesh.config["gateway"]["listeners"][0]["port"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for i in range(5):
        conn.request("GET", f"/mirrored/items/{i % 4 + 1}")
        r = conn.getresponse()
        body = json.loads(r.read())
        assert body["version"] == "v1" and "price" in body["item"], body  # the client gets the primary's answer
        ids.append(r.headers["x-request-id"])
    conn.close()
    status = wait_until(lambda: (s := mesh.status())["counters"].get("mirror_diffs", 0) >= before + 5 and s)
    assert status["counters"]["mirror_compared"] >= status["counters"]["mirror_diffs"]
    listed = {d["request_id"]: d for d in status["mirror_diffs"]}
    for rid in ids:
        difference = listed[rid]["difference"]
        # every difference named, not just the first
        assert re.fullmatch(r'body differs at item\.price: [\d.]+ vs \(absent\); item\.price_cents: \(absent\) '
                            r'vs \d+; item\.currency: \(absent\) vs "EUR"', difference), difference
        assert (listed[rid]["primary"], listed[rid]["mirror"]) == ("catalog/v1", "catalog/v2")
    log = mesh.children["gateway"].log.read_text()
    for rid in ids:  # (at most 10 lines per second and route are logged; these are the first)
        assert f"mirror differs: request {rid} route mirrored: catalog/v1 vs catalog/v2: body differs at item.price" in log


def timed(conn: http.client.HTTPConnection, path: str) -> float:
    start = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    return time.perf_counter() - start


def test_mirroring_adds_no_client_latency(mesh):
    """A client's latency with every request mirrored stays within 10 % of the same route without.

    Blocks of 20 requests alternate between the two routes (so machine noise hits both alike, and a
    copy's work, if it lingered, would land on the next request of its own block), one at a time
    with a 15 ms pause: a client that leaves the gateway idle between requests. (Back to back, on
    this 2-core machine where the client, the gateway and both services share the cores, the
    copies' extra work shows in the latency; that is throughput, measured by the bench.)"""
    port = mesh.config["gateway"]["listeners"][0]["port"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(20):  # warm up both routes and the pools
        timed(conn, "/plain/items/1")
        timed(conn, "/mirrored/items/1")
    plain, mirrored = [], []
    for _ in range(10):
        for path, out in (("/plain/items/1", plain), ("/mirrored/items/1", mirrored)):
            for _ in range(20):
                time.sleep(0.015)
                out.append(timed(conn, path))
    conn.close()
    p, m = statistics.median(plain), statistics.median(mirrored)
    assert m <= p * 1.10, f"median latency {m * 1000:.3f} ms mirrored vs {p * 1000:.3f} ms plain"
    assert mesh.status()["counters"]["mirror_requests"] >= 220  # every request was mirrored
