"""Mirroring end to end: every request to a route is copied to catalog v2 (which answers
differently), and each differing answer is counted, logged and listed in /status with its request
id; the client never waits for a copy (a target that holds every copy does not hold the client's
answers)."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import re
import threading

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


class Held:
    """A mirror target that answers no copy until released: each request is recorded as it arrives
    (method, path, headers) and its answer held (at most `hold` seconds)."""

    def __init__(self, hold: float = 30.0):
        self.arrived: list[tuple[str, str, dict]] = []
        self.answered = 0
        self.release = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                headers = {k.lower(): v for k, v in self.headers.items()}
                held.arrived.append((self.command, self.path, headers))
                held.release.wait(hold)
                body = b'{"held": true}'
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the gateway stopped first: its copy has no reader left
                    return
                held.answered += 1

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Held":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_the_client_never_waits_for_its_copy(tmp_path):
    """Every copy goes to a target that answers none of them until the test says so: the client
    still has each of its answers (from the primary), and only then are the copies answered and
    compared. A gateway that waited for a copy would hold the client's first answer until the
    mirror's 30 s deadline, beyond the client's 5 s. (What a copy costs the gateway in CPU and a
    busy client's latency is measured by `mitmesh bench`: `mirror_cpu_vs_bare_paired`.)"""
    with Held() as held:
        route = {"forward": {"service": "catalog", "version": "v1", "rewrite": {"prefix": "/"}}}
        cfg = config(
            {"catalog": service("catalog", "v1"),
             "held": {"versions": {"v1": {"endpoints": [f"127.0.0.1:{held.port}"]}}}},
            [{"name": "held", "match": {"path": {"prefix": "/held/"}}, **route,
              "policies": ["held"]}],
            {"held": {"mirror": {"service": "held", "timeout": "30s"}}})
        with contextlib.contextmanager(running)(tmp_path, cfg) as mesh:
            port = mesh.config["gateway"]["listeners"][0]["port"]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for i in range(1, 5):
                conn.request("GET", f"/held/items/{i}")
                r = conn.getresponse()
                body = json.loads(r.read())
                assert r.status == 200 and body["item"]["id"] == i, body  # the primary's answer
            conn.close()
            # every copy reached the target (each leaves after its primary answered), none answered
            wait_until(lambda: len(held.arrived) == 4, timeout=10)
            assert held.answered == 0
            paths = sorted(path for _, path, _ in held.arrived)
            assert paths == [f"/items/{i}" for i in range(1, 5)]
            assert all(h["host"].endswith("-shadow") for _, _, h in held.arrived)
            before = mesh.status()["counters"].get("mirror_compared", 0)
            held.release.set()
            status = wait_until(lambda: (s := mesh.status())["counters"].get("mirror_compared", 0)
                                >= before + 4 and s)
            assert held.answered == 4 and status["counters"]["mirror_requests"] >= 4
