"""Workers: N lean-runtime processes share the listeners; a dead worker is restarted without the
listener ever closing; one config edit reaches every worker."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time

import pytest

from mesh import pki

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
    out = subprocess.run(["pgrep", "-P", str(mesh.children["gateway"].pid)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


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
