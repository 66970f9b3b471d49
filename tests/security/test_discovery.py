"""Attacks through discovery: mDNS announcements are not authenticated, so any process on the link
(here: loopback) can announce instances of any service. Real gateways and sidecars, real zeroconf
announcements on an explicit loopback interface, real sockets behind them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time

import pytest

from discovery.mdns import MdnsSource
from discovery.registry import Instance, Registry
from mesh.runtime import procs

from .conftest import Mesh, sidecar_config
from tools.testbed import get, wait_until

PAYMENTS = "spiffe://mitmesh.local/ns/demo/sa/payments"


@contextlib.contextmanager
def rogue(mesh: str, interface: str, *instances: Instance):
    """A process with no certificate and no token announcing `instances` over mDNS on `interface`."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(15)
    source = MdnsSource(mesh, [interface])
    try:
        run(source.start(Registry()))
        for inst in instances:
            run(source.announce(inst, inst.name))
        yield
    finally:
        with contextlib.suppress(Exception):
            run(source.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, engine):
    m = Mesh(tmp_path_factory.mktemp("rogue-admin"), {})
    config = sidecar_config(f"{m.net}.1")
    config["gateway"]["engine"] = engine
    m.write(config)
    try:
        m.start_gateway()
        yield m
    finally:
        m.stop()


def test_rogue_instance_at_the_gateways_admin_listener(gateway):
    """`catalog` announced at 127.0.0.1:<admin port>: /catalog/status on the public listener
    answered the admin's /status. The instance is refused; catalog has no endpoint."""
    m = gateway
    admin_port = m.config["gateway"]["admin"]["port"]
    inst = Instance("rogue-cat", "catalog", "v1", "127.0.0.1", admin_port, weight=10000, source="mdns")
    with rogue(m.config["mesh"]["id"], f"{m.net}.66", inst):
        found = m.wait_instances(1, "catalog")
        assert found[0]["detail"] == "it is this proxy's admin listener", found
        for path, host in [("/catalog/status", "localhost"), ("/catalog/flows", "127.0.0.1")]:
            status, body, _ = get(m.url + path, {"Host": host})
            assert status == 503 and set(body) >= {"error", "reason", "request_id"}, body
            assert "config" not in body and "listeners" not in body
    assert m.status()["clusters"]["catalog"]["endpoints"] == []
    assert m.children["gateway"].log.read_text().count("rogue-cat") == 1  # logged once


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """payments is STRICT mTLS, with one real instance behind its sidecar."""
    m = Mesh(tmp_path_factory.mktemp("rogue-strict"), {})
    config = sidecar_config(f"{m.net}.1")
    config["services"]["payments"]["mtls"] = "STRICT"
    config["routes"].append({"name": "payments", "match": {"path": {"prefix": "/payments/"}},
                             "forward": {"service": "payments", "rewrite": {"prefix": "/"}}})
    m.write(config)
    for step in ("init", "rotate"):  # the mesh CA, then every workload's certificate
        subprocess.run(procs.python("-m", "mesh.cli", "certs", step, "--config", str(m.path)),
                       check=True, capture_output=True)
    m.write()
    try:
        m.start_instances({"service": "payments", "app": "echo"})
        m.start_gateway()
        m.wait_instances(1, "payments", timeout=15)
        yield m
    finally:
        m.stop()


def test_rogue_instances_of_a_strict_service_at_a_tarpit(strict):
    """Announcements of payments (https, its SPIFFE ID, weight 10000) at sockets that accept TCP
    and never speak: a TCP health check passed them and every request went there (503 after
    3 s). The check now is the mTLS handshake with the identity check: they are unhealthy."""
    m = strict
    assert [get(m.url + "/payments/x")[0] for _ in range(3)] == [200] * 3  # the cluster is in use
    pits = []
    try:
        for _ in range(4):
            pit = socket.socket()
            pit.bind(("127.0.0.1", 0))
            pit.listen(64)  # the kernel completes the TCP handshakes; nobody ever reads
            pits.append(pit)
        rogues = [Instance(f"rogue-pay-{i}", "payments", "v1", "127.0.0.1", pit.getsockname()[1],
                           weight=10000, source="mdns", protocol="https", identity=PAYMENTS)
                  for i, pit in enumerate(pits)]
        with rogue(m.config["mesh"]["id"], f"{m.net}.77", *rogues):
            m.wait_instances(5, "payments")
            unhealthy = m.wait_instances(4, "payments", healthy=False, pending=False, timeout=15)
            assert all(i["name"].startswith("rogue-pay-") for i in unhealthy), unhealthy
            assert all("timed out" in i["detail"] for i in unhealthy), unhealthy
            results = [get(m.url + "/payments/x", timeout=10)[0] for _ in range(20)]
            assert results == [200] * 20
    finally:
        for pit in pits:
            pit.close()


def tarpits(count: int) -> list[socket.socket]:
    """Sockets that accept TCP (the kernel completes the handshakes) and never read."""
    pits = []
    for _ in range(count):
        pit = socket.socket()
        pit.bind(("127.0.0.1", 0))
        pit.listen(64)
        pits.append(pit)
    return pits


def test_a_freshly_announced_rogue_instance_gets_no_request(strict):
    """Rogue instances of payments (weight 10000, at tarpits) took traffic from the moment the
    gateway learned of them until their second failed health check, 1 to 2.5 s later: requests hung
    at the TLS handshake, then were retried elsewhere or failed. A new endpoint is now chosen only
    once its first check passed: every request of a stream that runs from before the announcement
    until the rogues have failed their checks is answered by the real instance, at the first try."""
    m = strict
    assert get(m.url + "/payments/x")[0] == 200  # the cluster is in use
    results: list[tuple[int, str | None, str | None]] = []
    stop = threading.Event()

    def send():
        while not stop.is_set() and len(results) < 3000:
            status, body, headers = get(m.url + "/payments/x", timeout=10)
            instance = body.get("instance") if isinstance(body, dict) else None
            results.append((status, headers.get("x-mitmesh-attempts"), instance))

    pits = tarpits(4)
    senders = [threading.Thread(target=send, daemon=True) for _ in range(4)]
    try:
        for t in senders:
            t.start()
        rogues = [Instance(f"fresh-rogue-{i}", "payments", "v1", "127.0.0.1", pit.getsockname()[1],
                           weight=10000, source="mdns", protocol="https", identity=PAYMENTS)
                  for i, pit in enumerate(pits)]
        # the rogues by their addresses: earlier tests' announcements may linger in the registry
        # when a goodbye was missed on a loaded machine, so a count of payments instances is not
        # this test's to rely on
        addresses = {f"127.0.0.1:{pit.getsockname()[1]}" for pit in pits}

        def fresh(**state) -> int:
            return sum(1 for i in m.registry() if i["address"] in addresses
                       and all(i.get(k) == v for k, v in state.items()))
        with rogue(m.config["mesh"]["id"], f"{m.net}.78", *rogues):
            wait_until(lambda: fresh() == 4, timeout=20, interval=0.05)
            known = len(results)
            wait_until(lambda: fresh(healthy=False, pending=False) == 4, timeout=20, interval=0.05)
            stop.set()
            for t in senders:
                t.join(15)
    finally:
        stop.set()
        for pit in pits:
            pit.close()
    wrong = [r for r in results if r[:2] != (200, "1")]
    assert not wrong, f"{len(wrong)} of {len(results)} requests: {wrong[:5]}"
    assert len({i for _, _, i in results}) == 1  # the real instance's name
    assert len(results) - known >= 10, (known, len(results))  # requests while the rogues were new


def test_a_new_real_instance_takes_traffic_once_its_first_check_passed(strict):
    """What the rogues cannot do, a real second instance does: it passes its first check (the mTLS
    handshake as payments) at once and takes its share within moments of its announcement."""
    m = strict
    assert get(m.url + "/payments/x")[0] == 200
    (second,) = m.start_instances({"service": "payments", "app": "echo"})
    try:
        def answered_by_second():
            status, body, _ = get(m.url + "/payments/x")
            assert status == 200, body
            return body["instance"] == second.name and time.time()
        first = wait_until(answered_by_second, timeout=5, interval=0.01)
        # as tests/e2e/test_discovery.py expects of any new instance, checks or not
        assert first and first - second.announced <= 2.0, first - second.announced
        entry = next(i for i in m.registry() if i["workload"] == second.name)
        assert (entry["healthy"], entry["pending"]) == (True, False), entry
    finally:
        m.stop_instance(second)
        # gone by its name, not by a count other tests' lingering announcements could upset
        wait_until(lambda: all(i["workload"] != second.name for i in m.registry()), timeout=20)
