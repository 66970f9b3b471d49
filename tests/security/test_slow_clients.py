"""Slow clients (slowloris and friends) against a real gateway and a real sidecar inbound, configured
with short timeouts (head 1 s, body 2 s, idle 2 s) so the module stays a few seconds: trickling heads,
trickling bodies, silent and idle connections are closed, and ordinary requests are served meanwhile."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from .conftest import read_reply, request, targets

HTTP = {"request_headers_timeout": "1s", "request_timeout": "2s", "idle_timeout": "2s"}
GIVE_UP = 10.0  # a connection still open this long after its timeout is a failure, not slowness


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, engine):
    with targets(tmp_path_factory.mktemp("slow"), http=HTTP, engine=engine) as m:
        yield m


def closed_within(sockets: list[socket.socket], trickle: bytes, every: float = 0.2) -> dict[int, float]:
    """Send `trickle` on every socket each `every` seconds until the proxy closes each; returns the
    seconds each lasted (by index). Sockets still open after GIVE_UP are missing from the result."""
    start, lasted = time.monotonic(), {}
    while len(lasted) < len(sockets) and time.monotonic() - start < GIVE_UP:
        for i, s in enumerate(sockets):
            if i in lasted:
                continue
            try:
                s.sendall(trickle)
                readable, _, _ = select.select([s], [], [], 0)
                if readable and not s.recv(65536):
                    lasted[i] = time.monotonic() - start
            except OSError:
                lasted[i] = time.monotonic() - start
        time.sleep(every)
    for s in sockets:
        s.close()
    return lasted


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_slowloris_twenty_trickling_heads_are_closed_while_requests_are_served(mesh, where):
    target = mesh.targets[where]
    sockets = [target.connect() for _ in range(20)]
    for s in sockets:
        s.sendall(b"GET /app/x HTTP/1.1\r\nHost: x\r\n")
    statuses: list[int] = []
    done = threading.Event()

    def ordinary():
        while not done.is_set():
            statuses.append(target.send(request("GET", "/app/x", {"Connection": "close"})).status)
            time.sleep(0.05)

    client = threading.Thread(target=ordinary)
    client.start()
    try:
        lasted = closed_within(sockets, b"X-Slow: 1\r\n")
    finally:
        done.set()
        client.join()
    assert len(lasted) == 20, f"{20 - len(lasted)} trickling connections still open after {GIVE_UP}s"
    assert statuses and set(statuses) == {200}, statuses
    assert min(lasted.values()) >= 0.9  # nothing is closed before request_headers_timeout (1 s)


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_trickling_body_is_closed_and_never_forwarded(mesh, where):
    target = mesh.targets[where]
    before = target.hits()
    s = target.connect()
    s.sendall(request("POST", "/app/x", {"Content-Length": "100000"}))
    lasted = closed_within([s], b"a")
    assert 0 in lasted and lasted[0] >= 1.9  # request_timeout is 2 s
    assert target.hits() == before


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_silent_connection_is_closed(mesh, where):
    s = mesh.targets[where].connect(timeout=GIVE_UP)
    start = time.monotonic()
    assert s.recv(1) == b""
    assert time.monotonic() - start >= 0.9
    s.close()


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(mesh):
    target = mesh.targets["gateway"]
    with target.connect(timeout=GIVE_UP) as s:
        s.sendall(request("GET", "/app/x"))
        assert read_reply(s).status == 200
        start = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - start >= 1.9  # idle_timeout (2 s), not the header timeout


def test_keep_alive_then_trickling_next_head_is_closed(mesh):
    target = mesh.targets["gateway"]
    s = target.connect()
    s.sendall(request("GET", "/app/x"))
    assert read_reply(s).status == 200
    time.sleep(0.5)
    s.sendall(b"GET /app/x HTTP/1.1\r\n")
    assert closed_within([s], b"X-Slow: 1\r\n")  # closed, well before a trickle could finish
