"""Workers: N lean-runtime processes share the listeners; a dead worker is restarted without the
listener ever closing; one config edit reaches every worker; the admin views count every worker."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
import urllib.request

import pytest

from mesh.runtime import forkserver
from mesh.security import pki

from . import traffic
from .conftest import Mesh, demo_config, get, wait_until


@pytest.fixture
def mesh2(tmp_path):
    pki.init_edge(tmp_path / "certs")
    m = Mesh(tmp_path, demo_config(tmp_path / "certs"))
    m.write()
    try:
        m.start_services()
        m.start_gateway(workers=2)
        yield m
    finally:
        m.stop()


def workers(mesh: Mesh) -> list[int]:
    return forkserver.proxies_of(mesh.children["gateway"].pid)  # forked by the supervisor's fork server


def test_two_workers_share_the_listeners(mesh2):
    pids = wait_until(lambda: len(w := workers(mesh2)) == 2 and w)
    seen = set()
    deadline = time.monotonic() + 10
    while seen != set(pids) and time.monotonic() < deadline:
        seen.add(mesh2.status()["pid"])  # a new connection each time; either worker may take it
    assert seen == set(pids)
    assert all(get(mesh2.url + "/users/alice")[0] == 200 for _ in range(20))


def test_dead_worker_is_restarted_and_no_request_is_refused(mesh2):
    before = wait_until(lambda: len(w := workers(mesh2)) == 2 and w)
    os.kill(before[0], signal.SIGKILL)
    # connections made while the worker is down wait on its socket instead of being refused
    statuses = [get(mesh2.url + "/users/alice", timeout=10)[0] for _ in range(30)]
    assert statuses == [200] * 30
    after = wait_until(lambda: len(w := workers(mesh2)) == 2 and before[0] not in w and w)
    assert before[1] in after
    log = mesh2.children["gateway"].log.read_text()
    assert f"(pid {before[0]}) exited with -9; restarting" in log


def test_one_edit_reaches_every_worker(mesh2):
    wait_until(lambda: len(workers(mesh2)) == 2)
    edited = copy.deepcopy(mesh2.config)
    edited["routes"][0]["forward"] = {"service": "catalog", "version": "v2"}
    mesh2.write(edited)
    start = time.monotonic()

    def everyone_switched():  # 20 new connections, spread over both workers, all see the edit
        return all(get(mesh2.url + "/users/alice")[1].get("service") == "catalog" for _ in range(20))

    wait_until(everyone_switched, timeout=2.0, interval=0.1)
    assert time.monotonic() - start < 2.5
    versions = set()
    while len(versions) < 2 and time.monotonic() - start < 10:
        status = mesh2.status()
        versions.add((status["pid"], status["config"]["version"]))
    assert {v for _, v in versions} == {2}


@pytest.fixture
def mirrored2(tmp_path):
    """Two workers; every request to /mirrored/ is copied to catalog v2 (counted in /status)."""
    route = {"forward": {"service": "catalog", "version": "v1", "rewrite": {"prefix": "/"}}}
    cfg = traffic.config(
        {"catalog": traffic.service("catalog", "v1", "v2")},
        [{"name": "mirrored", "match": {"path": {"prefix": "/mirrored/"}}, **route, "policies": ["shadow"]}],
        {"shadow": {"mirror": {"service": "catalog", "version": "v2", "percent": 100}}})
    m = Mesh(tmp_path, cfg)
    m.write()
    try:
        m.start_services()
        traffic.start_gateways(m, workers=2)
        yield m
    finally:
        m.stop()


def test_status_and_flows_count_every_worker_whichever_answers(mirrored2):
    pids = set(wait_until(lambda: len(w := workers(mirrored2)) == 2 and w))
    n = 40
    # a new connection per request: the kernel spreads them over both workers' sockets
    ids = {get(mirrored2.url + f"/mirrored/items/{i % 4 + 1}")[2]["x-request-id"] for i in range(n)}
    wait_until(lambda: mirrored2.status()["counters"]["mirror_requests"] == n)  # copies leave after the answer
    status_from, flows_from = set(), set()
    deadline = time.monotonic() + 15
    while (status_from != pids or flows_from != pids) and time.monotonic() < deadline:
        status = mirrored2.status()  # whichever worker accepts the admin connection answers
        assert status["counters"]["mirror_requests"] == n, status["counters"]
        status_from.add(status["pid"])
        with urllib.request.urlopen(mirrored2.admin + "/flows", timeout=5) as r:
            flows = json.load(r)
        assert {f["request_id"] for f in flows["flows"]} == ids
        assert {f["pid"] for f in flows["flows"]} == pids  # both workers answered some of the requests
        flows_from.add(flows["pid"])
    assert status_from == pids and flows_from == pids
