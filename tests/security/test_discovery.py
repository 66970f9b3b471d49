"""Attacks through discovery: mDNS announcements are not authenticated, so any process on the link
(here: loopback) can announce instances of any service. Real gateways and sidecars, real zeroconf
announcements on an explicit loopback interface, real sockets behind them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading

import pytest

from discovery.mdns import MdnsSource
from discovery.registry import Instance, Registry
from mesh.runtime import procs

from .conftest import Mesh, sidecar_config
from tools.testbed import get

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
            unhealthy = m.wait_instances(4, "payments", healthy=False, timeout=15)
            assert all(i["name"].startswith("rogue-pay-") for i in unhealthy), unhealthy
            assert all("timed out" in i["detail"] for i in unhealthy), unhealthy
            results = [get(m.url + "/payments/x", timeout=10)[0] for _ in range(20)]
            assert results == [200] * 20
    finally:
        for pit in pits:
            pit.close()
