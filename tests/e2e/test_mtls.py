"""mTLS on a real proxy process: handshakes refused without a mesh certificate, identities reach
authorization, pool clients check the proxy's SPIFFE ID, and certificates rotate under load."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import os
import ssl
import time
from pathlib import Path

import pytest
import yaml

from tools import launcher
from mesh.security import mtls, pki
from mesh.runtime import procs
from mesh.core import upstream

from .conftest import Mesh, wait_until

TD, NS = "mitmesh.local", "demo"


def sid(name: str) -> str:
    return pki.spiffe_id(TD, NS, name)


def files(certs: Path, name: str) -> tuple[str, str]:
    cert, key = pki.workload_paths(certs, name)
    return str(cert), str(key)


def call(port: int, certs: Path, client: tuple[str, str] | None = None, path: str = "/open/charge",
         tls12: bool = False) -> tuple[object, object]:
    """(status, JSON body) of one HTTPS request, or ("refused", why) when TLS fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the proxy is identified by its SPIFFE ID instead
    context.load_verify_locations(str(pki.mesh_ca_paths(certs)[0]))
    if client:
        context.load_cert_chain(*client)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("POST", path, body=b'{"amount": 5}')
        assert mtls.peer_identity(conn.sock) == sid("gateway")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected) as e:
        return "refused", f"{e.__class__.__name__}: {e}"
    finally:
        conn.close()


def plain(port: int, path: str = "/open/charge") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, body=b'{"amount": 5}')
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def meshed(tmp_path_factory):
    """A gateway with a STRICT and a PERMISSIVE mTLS listener in front of the payments service."""
    tmp = tmp_path_factory.mktemp("mtls")
    certs = tmp / "certs"
    pki.init_mesh(certs, TD)
    for name in ("gateway", "orders", "users"):
        pki.issue_workload(certs, name, sid(name))
    other = tmp / "other"
    pki.init_mesh(other, TD)
    pki.issue_workload(other, "orders", sid("orders"))  # the right name from the wrong CA
    ca = pki.read(*pki.mesh_ca_paths(certs))
    expired = pki.issue(ca, "orders", uris=[sid("orders")], lifetime=dt.timedelta(hours=1), client=True,
                        not_before=pki._now() - dt.timedelta(hours=3))
    pki.write(expired, tmp / "expired" / "orders.pem", tmp / "expired" / "orders.key")
    p = procs.free_port
    gateway_cert = {"cert": "certs/workload/gateway.pem", "key": "certs/workload/gateway.key"}
    config = {
        "version": 1,
        "gateway": {"listeners": [
            {"name": "public", "port": p()},
            {"name": "strict", "port": p(), "tls": {**gateway_cert, "mtls": "STRICT", "http2": False}},
            {"name": "permissive", "port": p(), "tls": {**gateway_cert, "mtls": "PERMISSIVE"}},
        ], "admin": {"port": p()}},
        "services": {"payments": {"versions": {"v1": {"launch": {"app": "payments"},
                                                       "endpoints": [f"127.0.0.1:{p()}"]}}}},
        "routes": [
            {"name": "payments", "match": {"path": {"prefix": "/payments/"}},
             "forward": {"service": "payments", "rewrite": {"prefix": "/"}}, "policies": ["only-orders"]},
            {"name": "open", "match": {"path": {"prefix": "/open/"}},
             "forward": {"service": "payments", "rewrite": {"prefix": "/"}}},
        ],
        "policies": {"only-orders": {"authz": {"allow": [{"principals": [f"{TD}/ns/{NS}/sa/orders"]}]}}},
    }
    m = Mesh(tmp, config)
    m.write()
    try:
        m.start_services()
        m.start_gateway()
        ports = {l["name"]: l["port"] for l in config["gateway"]["listeners"]}
        yield m, certs, tmp, ports
    finally:
        m.stop()


def test_strict_refuses_handshakes_without_a_valid_mesh_certificate(meshed):
    m, certs, tmp, ports = meshed
    strict = ports["strict"]
    for client in (None, files(tmp / "other", "orders"), (str(tmp / "expired/orders.pem"),
                                                         str(tmp / "expired/orders.key"))):
        for tls12 in (False, True):  # with TLS 1.2 the refusal comes inside the handshake itself
            status, why = call(strict, certs, client, tls12=tls12)
            assert status == "refused", (client, tls12, why)
    refused = "mTLS handshake refused on listener strict: "
    # logged once the client, having read the alert, lets go
    wait_until(lambda: m.children["gateway"].tail(200).count(refused) == 6, timeout=5)
    log = m.children["gateway"].tail(200)
    assert log.count(refused + "peer did not return a certificate") == 2
    assert log.count(refused + "self-signed certificate in certificate chain") == 2  # another CA
    assert log.count(refused + "certificate has expired") == 2
    status, body = plain(strict)
    assert (status, body["error"]) == (400, "mtls_required")


def test_valid_identity_reaches_authorization(meshed):
    m, certs, tmp, ports = meshed
    status, body = call(ports["strict"], certs, files(certs, "orders"), "/payments/charge")
    assert (status, body["service"], body["amount"]) == (200, "payments", 5.0)
    status, body = call(ports["strict"], certs, files(certs, "users"), "/payments/charge")
    assert (status, body["error"]) == (403, "access_denied")
    assert body["reason"] == f"no allow rule of route payments matches peer {sid('users')}"
    # the same route on the plaintext listener: no identity, so no allow rule matches
    assert plain(ports["public"], "/payments/charge")[0] == 403


def test_permissive_accepts_plaintext_and_tls_but_checks_certificates_it_gets(meshed):
    m, certs, tmp, ports = meshed
    port = ports["permissive"]
    assert plain(port)[0] == 200
    assert call(port, certs, None)[0] == 200
    assert call(port, certs, files(certs, "orders"), "/payments/charge")[0] == 200
    assert call(port, certs, files(tmp / "other", "orders"))[0] == "refused"


async def test_pool_clients_check_the_proxys_spiffe_id(meshed):
    m, certs, tmp, ports = meshed
    client = mtls.CertStore().client(*files(certs, "orders"), str(pki.mesh_ca_paths(certs)[0]))
    pool = upstream.Pool()
    try:
        resp = await pool.request("127.0.0.1", ports["strict"], b"POST", b"/payments/charge",
                                  [(b"host", b"payments")], b'{"amount": 1}', timeout=5,
                                  ssl=client.context, peer_identity=sid("gateway"))
        assert resp.status == 200
        with pytest.raises(upstream.ConnectFailure, match=f"peer identity is {sid('gateway')}, "
                                                          f"expected {sid('payments')}"):
            await pool.request("127.0.0.1", ports["strict"], b"GET", b"/open/x", [(b"host", b"p")],
                               timeout=5, ssl=client.context, peer_identity=sid("payments"))
    finally:
        await pool.close()


# ---------------------------------------------------------------------------------------------
# Rotation under steady load: client (orders) → gateway A → mTLS → proxy B (payments' sidecar
# stand-in) → payments. Every certificate on the path is renewed during the load.

# The acceptance run: MITMESH_ROTATION_EVERY=30 (60 s of load, two renewals of each certificate).
# The suite runs the same path with 3 s renewals for 7 s, to stay within its time budget.
EVERY = float(os.environ.get("MITMESH_ROTATION_EVERY", "3"))


def _proxy_config(listener: dict, services: dict, routes: list, policies: dict, identity: str) -> dict:
    lifetime = max(10.0, 2 * EVERY)
    return {"version": 1,
            "mesh": {"identity": {"lifetime": f"{lifetime:g}s", "renew_after": EVERY / lifetime,
                                  "reload_interval": "250ms"}},
            "gateway": {"listeners": [listener], "admin": {"port": procs.free_port()}, "identity": identity},
            "services": services, "routes": routes, "policies": policies}


def test_rotation_under_load_fails_no_request(tmp_path):
    certs = tmp_path / "certs"
    pki.init_mesh(certs, TD)
    p = procs.free_port
    a_port, b_port, pay_port = p(), p(), p()
    b = _proxy_config(
        {"name": "inbound", "port": b_port, "tls": {"cert": "certs/workload/payments.pem",
                                                    "key": "certs/workload/payments.key", "mtls": "STRICT"}},
        {"payments": {"versions": {"v1": {"endpoints": [f"127.0.0.1:{pay_port}"]}}}},
        [{"name": "in", "match": {"path": {"prefix": "/"}}, "forward": {"service": "payments"},
          "policies": ["from-gateway"]}],
        {"from-gateway": {"authz": {"allow": [{"principals": ["*/sa/gateway"]}]}}}, "payments")
    a = _proxy_config(
        {"name": "mesh", "port": a_port, "tls": {"cert": "certs/workload/gateway.pem",
                                                 "key": "certs/workload/gateway.key", "mtls": "STRICT"}},
        {"payments": {"mtls": "STRICT", "versions": {"v1": {"endpoints": [f"127.0.0.1:{b_port}"]}}}},
        [{"name": "pay", "match": {"path": {"prefix": "/pay/"}},
          "forward": {"service": "payments", "rewrite": {"prefix": "/"}}}], {}, "gateway")
    paths = {}
    for name, cfg in (("a", a), ("b", b)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg))
    children = []
    logs = tmp_path / "logs"
    try:
        rotator = procs.spawn("rotator", procs.python("-m", "mesh.cli", "certs", "rotate", "--watch", "--config",
                                                      str(paths["a"]), "gateway", "payments", "orders"),
                              log_dir=logs, cwd=str(tmp_path))
        children.append(rotator)
        procs.wait_log(rotator, "renewed workload certificate orders")
        service = procs.spawn("payments", procs.python("-m", "services.payments", "--port", str(pay_port)),
                              log_dir=logs)
        children.append(service)
        for name in ("b", "a"):
            gw = procs.spawn(f"proxy-{name}", launcher.lean_argv(paths[name], 1), log_dir=logs, cwd=str(tmp_path))
            children.append(gw)
            procs.wait_log(gw, "gateway ready")
        procs.wait_ports(service, [("127.0.0.1", pay_port)])
        results, renewals = asyncio.run(_load(certs, a_port, seconds=2.4 * EVERY))
        failures = [r for r in results if r != 200]
        assert len(results) > 100 and not failures, (len(results), failures[:5])
        rotations = rotator.log.read_text().count("renewed workload certificate")
        assert rotations >= 3 + 3 * 2, rotator.tail()  # first issue, then two renewals each
        assert renewals >= 2
        print(f"\nrotation every {EVERY:g}s: {len(results)} requests in {2.4 * EVERY:g}s, "
              f"{len(failures)} failed; {rotations} certificates issued or renewed; "
              f"the client picked up {renewals} renewals")
        for name in ("a", "b"):
            assert "renewed: new handshakes use it" in (logs / f"proxy-{name}.log").read_text()
        # B still refuses anyone but the gateway, rotation or not
        client = (str(certs / "workload/orders.pem"), str(certs / "workload/orders.key"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(str(pki.mesh_ca_paths(certs)[0]))
        context.load_cert_chain(*client)
        conn = http.client.HTTPSConnection("127.0.0.1", b_port, context=context, timeout=5)
        conn.request("POST", "/charge", body=b'{"amount": 1}')
        assert conn.getresponse().status == 403
        conn.close()
    finally:
        for child in reversed(children):
            child.stop()


async def _load(certs: Path, port: int, seconds: float, workers: int = 4) -> tuple[list, int]:
    """Steady requests through A, from a client whose own certificate is renewed meanwhile."""
    store = mtls.CertStore()
    client = store.client(*files(certs, "orders"), str(pki.mesh_ca_paths(certs)[0]))
    pool = upstream.Pool()
    results: list = []
    stop = time.monotonic() + seconds

    async def worker():
        while time.monotonic() < stop:
            try:
                resp = await pool.request("127.0.0.1", port, b"POST", b"/pay/charge", [(b"host", b"payments")],
                                          b'{"amount": 1}', timeout=5, ssl=client.context,
                                          peer_identity=sid("gateway"))
                results.append(resp.status if resp.status != 200 or b"charged" in resp.body else resp.body)
            except upstream.UpstreamError as e:
                results.append(f"{e.kind}: {e}")

    async def watch():
        renewed = 0
        while time.monotonic() < stop:
            await asyncio.sleep(0.25)
            renewed += len(store.refresh())
        return renewed

    try:
        *_, renewals = await asyncio.gather(*(worker() for _ in range(workers)), watch())
    finally:
        await pool.close()
    return results, renewals
