"""The fork server (issue 18 items 1, 4): proxies forked from one preloaded engine share nothing that
must be their own, and outlive the fork server but not their launcher."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from mesh.runtime import forkserver, procs, supervisor
from mesh.security import pki
from tools.testbed import running_demo, wait_until

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="the fork server needs Linux pidfds")


def _config(catalogs: list[int], port: int, tls_port: int, admin: int, certs: Path) -> dict:
    return {
        "version": 1,
        "gateway": {"listeners": [{"name": "plain", "port": port},
                                  {"name": "tls", "port": tls_port,
                                   "tls": {"cert": str(certs / "edge.pem"), "key": str(certs / "edge.key")}}],
                    "admin": {"port": admin}},
        # random balancing: which endpoint each request goes to shows the process's `random` state
        "services": {"catalog": {"lb": {"policy": "random"},
                                 "versions": {"v1": {"endpoints": [f"127.0.0.1:{p}" for p in catalogs]}}}},
        "routes": [{"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
                    "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}}],
    }


@pytest.fixture
def catalogs(tmp_path):
    children = []
    try:
        for i in range(2):
            port = procs.free_port()
            child = procs.spawn(f"catalog-{i}", procs.python("-m", "services.catalog", "--port", str(port)),
                                log_dir=tmp_path)
            children.append(child)
            procs.wait_ports(child, [("127.0.0.1", port)])
        yield [int(c.argv[-1]) for c in children]
    finally:
        procs.stop_all(children)


@pytest.fixture
def server(tmp_path):
    s = forkserver.Server(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.close()


@pytest.fixture
def two_gateways(tmp_path, catalogs, server):
    """Two one-worker gateways forked from one fork server, each with a plain and a TLS listener."""
    certs = tmp_path / "certs"
    pki.init_edge(certs)
    proxies = []
    try:
        for name in ("a", "b"):
            ports = {k: procs.free_port() for k in ("port", "tls_port", "admin")}
            cfg = tmp_path / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump(_config(catalogs, certs=certs, **ports)))
            child = server.spawn(name, supervisor.worker_argv(cfg, [], "gateway", "info"), log_dir=tmp_path)
            proxies.append((child, ports))
        for child, _ in proxies:
            procs.wait_log(child, "gateway ready", timeout=60)
        yield proxies
    finally:
        procs.stop_all([c for c, _ in proxies])


def _get(port: int, path: str = "/catalog/items/1") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status, r.headers["x-request-id"]


def _upstreams(child: procs.Child) -> list[str]:
    lines = (json.loads(l) for l in child.log.read_text().splitlines() if l.startswith("{"))
    return [l["upstream"] for l in lines if l.get("route") == "catalog"]


def _client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the ticket comes with the handshake
    return ctx


def _tls_session(ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        s.sendall(b"GET /catalog/items/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        return s.session, s.session_reused


def test_two_forked_proxies_draw_their_own_random_ids_and_tls_tickets(two_gateways):
    (a, pa), (b, pb) = two_gateways
    ids = {}
    for child, ports in two_gateways:
        got = [_get(ports["port"]) for _ in range(24)]
        assert {status for status, _ in got} == {200}
        ids[child.name] = {rid for _, rid in got}
    assert len(ids["a"]) == len(ids["b"]) == 24 and not ids["a"] & ids["b"]
    # the same 24 random picks of endpoint in both would mean one inherited `random` state (2^-24 by chance)
    deadline = time.monotonic() + 10
    while (len(_upstreams(a)) < 24 or len(_upstreams(b)) < 24) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(set(_upstreams(a)[:24])) == 2 and _upstreams(a)[:24] != _upstreams(b)[:24]
    # a session ticket of a resumes on a, not on b: each made its own ticket keys after the fork
    ctx = _client()
    session, _ = _tls_session(ctx, pa["tls_port"])
    assert session.has_ticket
    assert _tls_session(ctx, pa["tls_port"], session)[1], "a does not resume its own sessions: the test proves nothing"
    assert not _tls_session(ctx, pb["tls_port"], session)[1], "b accepted a's ticket: the ticket key crossed the fork"


def _fds(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass
    return out


def _listening() -> dict[str, int]:
    """socket inode -> port of every listening TCP socket."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":
                out[f"socket:[{f[9]}]"] = int(f[1].rsplit(":", 1)[1], 16)
    return out


def test_no_socket_loop_or_thread_crosses_the_fork(two_gateways, server):
    listening = _listening()
    fs = server.child.pid
    server_fds = _fds(fs)
    # the fork server holds its control socket, its launcher's pidfd and stdio: no listener, no event
    # loop (an epoll fd and a self-pipe), one thread
    assert not [t for t in server_fds.values() if t in listening or "eventpoll" in t], server_fds
    assert len(os.listdir(f"/proc/{fs}/task")) == 1
    control = {t for t in server_fds.values() if t.startswith("socket:")}
    for child, ports in two_gateways:
        own = set(ports.values())
        fds = _fds(child.pid).values()
        assert {listening[t] for t in fds if t in listening} == own, (child.name, fds)
        assert not control & set(fds), f"{child.name} holds the fork server's control socket"


def _pids(text: str, pattern: str) -> list[int]:
    return [int(p) for p in re.findall(pattern, text)]


def test_a_dead_fork_server_takes_no_proxy_down_and_is_restarted(tmp_path, catalogs):
    certs = tmp_path / "certs"
    pki.init_edge(certs)
    ports = {k: procs.free_port() for k in ("port", "tls_port", "admin")}
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump(_config(catalogs, certs=certs, **ports)))
    # TMPDIR: the supervisor's run directory (Prometheus files, flow rings) lands in tmp_path, as
    # the SIGKILL below leaves it behind
    gw = procs.spawn("gateway", [procs.tool("mitmesh"), "gateway", "--config", str(cfg), "--workers", "2",
                                 "--verbosity", "warn"],
                     log_dir=tmp_path, env={"TMPDIR": str(tmp_path)})
    seen: set[int] = set()
    try:
        procs.wait_log(gw, "gateway ready", timeout=90)
        log = gw.log.read_text()
        [first] = _pids(log, r"fork server ready: pid (\d+)")
        workers = _pids(log, r"worker \d started, pid (\d+)")
        seen |= {first, *workers}
        os.kill(first, signal.SIGKILL)
        procs.wait_log(gw, "fork server restarted", timeout=60)
        for _ in range(20):  # both workers serve on, re-parented to the supervisor
            assert _get(ports["port"])[0] == 200
        for pid in workers:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert ppid == gw.pid
        os.kill(workers[0], signal.SIGKILL)  # the supervisor forks its replacement from the new server
        deadline = time.monotonic() + 60
        while len(_pids(gw.log.read_text(), r"worker 0 ready, pid (\d+)")) < 2:
            assert time.monotonic() < deadline, gw.tail()
            time.sleep(0.1)
        log = gw.log.read_text()
        [_, second] = _pids(log, r"fork server ready: pid (\d+)")
        new = _pids(log, r"worker 0 started, pid (\d+)")[-1]
        seen |= {second, new}
        assert new not in workers
        assert Path(f"/proc/{new}/stat").exists()
        assert _get(ports["port"])[0] == 200
        # the launcher's death takes every proxy down (their lifeline), and the fork server with them
        os.kill(gw.pid, signal.SIGKILL)
        gw.proc.wait(10)
        deadline = time.monotonic() + 30
        while [p for p in seen if _running(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in seen if _running(p)]
    finally:
        gw.stop()
        for pid in seen:  # by pid, only ours, also when an assertion above failed
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.timeout(300)
def test_bench_footprint_only_prints_its_figures():
    """`mitmesh bench --footprint-only` runs end to end (figures are not asserted: a bench measures them)."""
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "bench", "--footprint-only"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"sidecar_private_mb=[\d.]+ sidecar_start_ms=\d+ standalone_sidecar_rss_mb=[\d.]+ standalone_sidecar_anon_mb=[\d.]+", last), last


def test_up_outlives_its_fork_server_and_learns_of_a_sidecar_exit(tmp_path):
    with running_demo(tmp_path) as demo:
        log = demo["log"]
        text = log.read_text()
        [server] = _pids(text, r"fork-server: pid (\d+)")
        admins = dict(re.findall(r"sidecar: (\S+) inbound .* admin (http://\S+) pid \d+", text))
        sidecars = dict((name, int(pid)) for name, pid in re.findall(r"sidecar: (\S+) inbound .* pid (\d+)", text))
        assert len(sidecars) >= 2 and _running(server)
        os.kill(server, signal.SIGKILL)
        wait_until(lambda: "restarting it" in log.read_text(), timeout=60)
        with urllib.request.urlopen(demo["url"] + "/catalog/items", timeout=10) as r:  # through a sidecar
            assert r.status == 200
        for name, admin in admins.items():  # every sidecar serves on, now a child of `mitmesh up`
            with urllib.request.urlopen(admin, timeout=10) as r:
                assert r.status == 200 and json.load(r)["pid"] == sidecars[name]
        name, pid = next(iter(sidecars.items()))
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: f"exited: {name}.sidecar with code -9" in log.read_text(), timeout=30)
