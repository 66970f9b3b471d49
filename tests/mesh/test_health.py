"""Liveness: thresholds, passive ejection, and real probes (TCP and HTTP) against loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from aiohttp import web

from mesh.core import health
from mesh.security import mtls, pki
from mesh.runtime import procs
from mesh.core.cluster import Endpoint
from mesh.config.schema import HealthCheck

HC = HealthCheck(interval=0.1, timeout=0.5, unhealthy_threshold=2, healthy_threshold=2)


def test_thresholds_decide_when_health_changes():
    ep = Endpoint("127.0.0.1", 1)
    assert not health.record(ep, False, "refused", HC) and ep.healthy  # one failure is not enough
    assert health.record(ep, False, "refused", HC) and not ep.healthy and ep.detail == "refused"
    assert not health.record(ep, True, "", HC) and not ep.healthy
    assert health.record(ep, True, "", HC) and ep.healthy and ep.detail == ""


def test_passive_ejection_is_immediate_and_checks_bring_it_back():
    ep = Endpoint("127.0.0.1", 1)
    assert health.eject(ep, "connect_failure: refused") and not ep.healthy
    assert not health.eject(ep, "again")
    health.record(ep, True, "", HC)
    assert health.record(ep, True, "", HC) and ep.healthy


async def serve(status: int) -> tuple[web.AppRunner, int]:
    app = web.Application()
    async def healthz(request):
        return web.Response(status=status)

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def test_probes_against_real_sockets():
    up, port = await serve(200)
    sick, sick_port = await serve(503)
    try:
        assert await health.probe(Endpoint("127.0.0.1", port), HC) == (True, "")
        http = HealthCheck(path="/healthz", timeout=0.5)
        assert (await health.probe(Endpoint("127.0.0.1", port), http))[0]
        ok, detail = await health.probe(Endpoint("127.0.0.1", sick_port), http)
        assert not ok and "answered 'HTTP/1.1 503 Service Unavailable'" in detail
        ok, detail = await health.probe(Endpoint("127.0.0.1", procs.free_port()), HC)
        assert (ok, detail) == (False, "health check failed: connection refused")
    finally:
        await up.cleanup()
        await sick.cleanup()


async def test_checker_takes_a_dead_endpoint_out_and_back_in():
    runner, port = await serve(200)
    ep = Endpoint("127.0.0.1", port)
    changes = []
    checker = health.Checker(lambda: [(ep, HC)], lambda: changes.append(ep.healthy), tick=0.02)
    checker.start()
    try:
        await runner.cleanup()  # the endpoint dies without telling anyone
        for _ in range(100):
            if not ep.healthy:
                break
            await asyncio.sleep(0.02)
        assert not ep.healthy and changes == [False]
        runner, _ = await serve_on(port)
        for _ in range(100):
            if ep.healthy:
                break
            await asyncio.sleep(0.02)
        assert ep.healthy and changes == [False, True]
        await runner.cleanup()
    finally:
        await checker.stop()


async def serve_on(port: int) -> tuple[web.AppRunner, int]:
    app = web.Application()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner, port


@pytest.fixture
def certs(tmp_path):
    pki.init_mesh(tmp_path, "mitmesh.local")
    for name in ("gateway", "payments", "orders"):
        pki.issue_workload(tmp_path, name, pki.spiffe_id("mitmesh.local", "demo", name))
    return tmp_path


async def tls_server(directory, name: str) -> asyncio.Server:
    """A sidecar inbound's stand-in: mTLS with `name`'s workload certificate, never answers."""
    cert, key, ca = mtls.workload_files(str(directory), ".", name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=context)


async def test_a_tcp_check_of_an_mtls_endpoint_is_the_handshake_and_the_identity(certs):
    """A rogue instance of a STRICT service at a tarpit (accepts TCP, never speaks) or at a server
    with another identity passes a bare TCP connect; the check a request would make fails it."""
    client = mtls.Watched(lambda: mtls.client_context(*mtls.workload_files(str(certs), ".", "gateway")), ())
    upstreams = mtls.Upstreams(frozenset({"payments"}), client)
    tls = upstreams.plan("payments", "https", "spiffe://mitmesh.local/ns/demo/sa/payments")
    tcp = HealthCheck(timeout=0.3)
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(8)
    real, impostor = await tls_server(certs, "payments"), await tls_server(certs, "orders")
    try:
        pit = Endpoint(*tarpit.getsockname())
        assert await health.probe(pit, tcp) == (True, "")  # what let the rogue in
        assert await health.probe(pit, tcp, tls) == (False, "health check timed out after 0.3s")
        ok, detail = await health.probe(Endpoint("127.0.0.1", impostor.sockets[0].getsockname()[1]), tcp, tls)
        assert not ok and "peer identity is spiffe://mitmesh.local/ns/demo/sa/orders" in detail
        good = Endpoint("127.0.0.1", real.sockets[0].getsockname()[1])
        assert await health.probe(good, tcp, tls) == (True, "")
        # the Checker asks for the request's TLS plan whatever the check's kind
        checker = health.Checker(lambda: [], lambda: None, tls_of=lambda ep: tls)
        assert (await checker._probe(pit, tcp))[0] is False
    finally:
        tarpit.close()
        real.close()
        impostor.close()


def test_the_first_check_decides_at_once_whatever_the_thresholds():
    """Envoy: a host's first successful check makes it healthy (first_check_), and a new host
    failing its first check stays out; either way it no longer awaits its first check."""
    passed, failed = (health.await_first_check(Endpoint("127.0.0.1", p)) for p in (1, 2))
    assert passed.pending and not passed.healthy and passed.detail == health.AWAITING
    assert health.record(passed, True, "", HC) and passed.healthy and not passed.pending
    assert health.record(failed, False, "refused", HC)  # one failure of 2: out all the same
    assert not failed.healthy and not failed.pending and failed.detail == "refused"
    assert not health.record(failed, True, "", HC) and not failed.healthy  # now the thresholds
    assert health.record(failed, True, "", HC) and failed.healthy


async def test_a_new_endpoint_is_checked_at_once():
    """Not at the next tick, nor spread over an interval as endpoints first seen otherwise are."""
    runner, port = await serve(200)
    known, new = Endpoint("127.0.0.1", port), health.await_first_check(Endpoint("127.0.0.1", port))
    targets = [(known, HC)]
    checker = health.Checker(lambda: list(targets), lambda: None, tick=30)
    checker.start()
    try:
        await asyncio.sleep(0.05)  # the checker's first pass is done; the next is 30 s away
        targets.append((new, HC))
        checker.wake()  # what a membership change does (addons/health.py)
        for _ in range(50):
            if not new.pending:
                break
            await asyncio.sleep(0.01)
        assert new.healthy and not new.pending
    finally:
        await checker.stop()
        await runner.cleanup()


async def test_first_checks_wait_for_every_new_endpoint_and_survive_a_cancelled_waiter():
    runner, port = await serve(200)
    tarpit = socket.create_server(("127.0.0.1", 0))  # accepts, never answers the GET
    http = HealthCheck(path="/healthz", timeout=0.3)
    real = health.await_first_check(Endpoint("127.0.0.1", port))
    rogue = health.await_first_check(Endpoint(*tarpit.getsockname()))
    checker = health.Checker(lambda: [], lambda: None)
    try:
        waiter = asyncio.get_running_loop().create_task(checker.first_checks([real, rogue], http))
        await asyncio.sleep(0.05)
        under_way = list(checker._running.values())
        waiter.cancel()  # a client gave up: the checks go on
        await asyncio.sleep(0)
        assert len(under_way) == 1 and not under_way[0].done()  # the real one passed already
        await checker.first_checks([real, rogue], http)  # waits for the check under way
        assert real.healthy and not real.pending
        assert (rogue.healthy, rogue.pending) == (False, False)
        assert rogue.detail == "health check timed out after 0.3s"
        await checker.first_checks([real, rogue], http)  # nothing awaits a first check: at once
    finally:
        tarpit.close()
        await runner.cleanup()
