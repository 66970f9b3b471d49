"""mTLS on every mesh hop, with real sidecars and real certificates: each sidecar's inbound follows
its service's mode (payments, orders, users STRICT; catalog PERMISSIVE), sidecars call each other
with their workload certificates and check the SPIFFE ID discovery announced, and payments' sidecar
lets only orders (and the gateway) in. Certificates are renewed every few seconds throughout, by a
real `mitmesh certs rotate --watch`, while the tests run and while steady load goes through the
gateway and three sidecars.

MITMESH_ROTATION_EVERY=30 is the acceptance run: renewals every 30 s during 60 s of load.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mitmproxy import io
from mitmproxy.test import tflow, tutils

from mesh.security import mtls, pki
from mesh.runtime import procs

from .conftest import Mesh, get, sidecar_config, wait_until

TD, NS = "mitmesh.local", "demo"
EVERY = float(os.environ.get("MITMESH_ROTATION_EVERY", "3"))
LOAD_SECONDS = 2 * EVERY if "MITMESH_ROTATION_EVERY" in os.environ else 3 * EVERY


def sid(name: str) -> str:
    return pki.spiffe_id(TD, NS, name)


@pytest.fixture(scope="module")
def meshed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sidecar-mtls")
    certs = tmp / "certs"
    pki.init_mesh(certs, TD)
    other = tmp / "other"  # the right names from another CA
    pki.init_mesh(other, TD)
    pki.issue_workload(other, "orders", sid("orders"))
    ca = pki.read(*pki.mesh_ca_paths(certs))
    expired = pki.issue(ca, "orders", uris=[sid("orders")], lifetime=dt.timedelta(hours=1), client=True,
                        not_before=pki._now() - dt.timedelta(hours=3))
    pki.write(expired, tmp / "expired" / "orders.pem", tmp / "expired" / "orders.key")
    m = Mesh(tmp, {})
    config = sidecar_config(f"{m.net}.1")
    lifetime = max(10.0, 2 * EVERY)
    config["mesh"]["identity"] = {"lifetime": f"{lifetime:g}s", "renew_after": EVERY / lifetime,
                                  "reload_interval": "250ms"}
    for name in ("payments", "orders", "users"):
        config["services"][name]["mtls"] = "STRICT"
    config["services"]["catalog"]["mtls"] = "PERMISSIVE"
    config["services"]["payments"]["policies"] = ["payments-callers"]
    # HTTP health checks go over mTLS like requests; the policy lets every mesh identity check health
    config["services"]["payments"]["health_check"] = {"path": "/healthz"}
    config["policies"] = {"payments-callers": {"authz": {"allow": [
        {"principals": [f"{TD}/ns/{NS}/sa/orders", f"{TD}/ns/{NS}/sa/gateway"]},
        {"paths": ["/healthz"], "methods": ["GET"]}]}}}
    m.config = config
    m.write()
    try:
        # the launcher's way: issue every workload certificate, then keep renewing them
        rotator = m.start_rotator()
        procs.wait_log(rotator, "renewed workload certificate gateway")
        m.instances = {s.inst.service: s for s in m.start_instances(
            {"service": "payments"}, {"service": "orders"}, {"service": "users"}, {"service": "catalog"})}
        m.start_gateway()
        m.wait_converged(list(m.instances.values()), 4)
        m.certs, m.other = certs, other
        yield m
    finally:
        m.stop()


def inbound(s) -> tuple[str, int]:
    host, _, port = s.inbound.rpartition(":")
    return host, int(port)


def call(s, certs: Path, client: tuple[str, str] | None, path: str = "/charge",
         expect: str | None = None) -> tuple[object, object]:
    """(status, JSON body) of one HTTPS request to an instance's sidecar inbound, or
    ("refused", why) when the handshake fails; checks the sidecar presents `expect`'s identity."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(pki.mesh_ca_paths(certs)[0]))
    if client:
        context.load_cert_chain(*client)
    conn = http.client.HTTPSConnection(*inbound(s), context=context, timeout=5)
    try:
        conn.connect()  # the peer read after the handshake: a closing answer takes conn.sock away
        peer = mtls.peer_identity(conn.sock)
        conn.request("POST", path, body=b'{"amount": 5}')
        resp = conn.getresponse()
        assert peer == sid(expect or s.inst.service)
        return resp.status, json.loads(resp.read())
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected) as e:
        return "refused", f"{e.__class__.__name__}: {e}"
    finally:
        conn.close()


def plain(s, path: str = "/charge") -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*inbound(s), timeout=5)
    try:
        conn.request("POST", path, body=b'{"amount": 5}')
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def workload(certs: Path, name: str) -> tuple[str, str]:
    cert, key = pki.workload_paths(certs, name)
    return str(cert), str(key)


def test_strict_inbound_refuses_handshakes_without_a_valid_mesh_certificate(meshed):
    payments = meshed.instances["payments"]
    tmp = meshed.tmp
    for client in (None, workload(meshed.other, "orders"),
                   (str(tmp / "expired/orders.pem"), str(tmp / "expired/orders.key"))):
        status, why = call(payments, meshed.certs, client)
        assert status == "refused", (client, why)
    refused = "mTLS handshake refused on listener inbound: "
    # logged once the client, having read the alert, lets go
    wait_until(lambda: payments.sidecar.tail(400).count(refused) >= 3, timeout=5)
    log = payments.sidecar.tail(400)
    assert refused + "peer did not return a certificate" in log
    assert refused + "self-signed certificate in certificate chain" in log  # another CA
    assert refused + "certificate has expired" in log
    status, body = plain(payments)  # STRICT: no plaintext
    assert (status, body["error"]) == (400, "mtls_required")


def test_inbound_authorizes_the_verified_peer(meshed):
    payments = meshed.instances["payments"]
    status, body = call(payments, meshed.certs, workload(meshed.certs, "orders"))
    assert (status, body["service"], body["amount"]) == (200, "payments", 5.0)
    status, body = call(payments, meshed.certs, workload(meshed.certs, "users"))  # a valid mesh cert
    assert (status, body["error"]) == (403, "access_denied")
    assert body["reason"] == f"no allow rule of service payments matches peer {sid('users')}"


def test_permissive_inbound_accepts_plaintext_and_mtls(meshed):
    catalog = meshed.instances["catalog"]
    status, body = plain(catalog, "/items/2")
    assert (status, body["service"]) == (200, "catalog")
    status, body = call(catalog, meshed.certs, workload(meshed.certs, "users"), "/items/2")
    assert (status, body["service"]) == (200, "catalog")
    status, body = call(catalog, meshed.certs, None, "/items/2")  # TLS without a client certificate
    assert status == 200
    assert call(catalog, meshed.certs, workload(meshed.other, "orders"), "/items/2")[0] == "refused"


def test_discovery_announces_https_and_the_identity(meshed):
    gateway = {i["service"]: i for i in meshed.registry() if i["source"] == "mdns"}
    assert {s: (i["protocol"], i["identity"]) for s, i in gateway.items()} == {
        s: ("https", sid(s)) for s in ("payments", "orders", "users", "catalog")}


def test_orders_may_call_payments_and_users_may_not(meshed):
    orders, payments, users = (meshed.instances[n] for n in ("orders", "payments", "users"))
    rid = "mtls-order-1"
    status, body, _ = get(meshed.url + "/orders", headers={"x-request-id": rid},
                          data=json.dumps({"item_id": 3, "quantity": 2}).encode())
    assert status == 200, body
    assert body["order"]["payments"] == payments.name
    seen = [f for f in payments.flows() if f["request_id"] == rid]
    assert len(seen) == 1 and seen[0]["peer"] == sid("orders")
    # users' app asks its sidecar for http://payments: mTLS with users' certificate, and
    # payments' sidecar answers 403 with its JSON reason
    status, body, _ = get(meshed.url + "/users/alice/charge", data=b"{}",
                          headers={"x-request-id": "mtls-users-1"})
    assert status == 403, body
    assert body["upstream"]["error"] == "access_denied"
    assert body["upstream"]["reason"] == f"no allow rule of service payments matches peer {sid('users')}"
    seen = [f for f in payments.flows() if f["request_id"] == "mtls-users-1"]
    assert len(seen) == 1 and seen[0]["peer"] == sid("users") and seen[0]["status"] == 403
    # users' sidecar health-checks payments (GET /healthz over mTLS, allowed): still healthy
    checks = wait_until(lambda: [f for f in payments.flows()
                                 if f["path"] == "/healthz" and f["peer"] == sid("users")], timeout=5)
    assert all(f["status"] == 200 for f in checks)
    payments_at_users = next(i for i in meshed.registry(users.admin) if i["service"] == "payments")
    assert payments_at_users["healthy"] is True
    assert any(f["request_id"] == "mtls-users-1" and f["direction"] == "outbound" for f in users.flows())
    # orders' own sidecar made the first call (with orders' certificate)
    assert any(f["request_id"] == rid and f["direction"] == "outbound" and f["host"] == "payments"
               for f in orders.flows())


def test_rotation_under_load_through_gateway_and_sidecars_fails_no_request(meshed):
    """Steady POST /orders: client → gateway → orders' sidecar → orders → orders' sidecar →
    catalog's and payments' sidecars, mTLS on every hop, while every certificate is renewed."""
    results: list = []
    stop = time.monotonic() + LOAD_SECONDS
    rotator = meshed.children["rotator"]
    before = rotator.log.read_text().count("renewed workload certificate")

    def worker(n: int):
        conn = http.client.HTTPConnection("127.0.0.1", int(meshed.url.rsplit(":", 1)[1]), timeout=10)
        i = 0
        while time.monotonic() < stop:
            i += 1
            try:
                conn.request("POST", "/orders", body=b'{"item_id": 1, "quantity": 1}',
                             headers={"x-request-id": f"rot-{n}-{i}", "content-type": "application/json"})
                r = conn.getresponse()
                body = r.read()
                results.append(r.status if r.status == 200 else (r.status, body[:300]))
            except (OSError, http.client.HTTPException) as e:
                results.append(repr(e))
                conn.close()
            time.sleep(0.01)
        conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_SECONDS + 30)
    renewed = rotator.log.read_text().count("renewed workload certificate") - before
    failures = [r for r in results if r != 200]
    print(f"\nrotation every {EVERY:g}s: {len(results)} orders in {LOAD_SECONDS:g}s through the gateway "
          f"and 3 sidecars, {len(failures)} failed; {renewed} certificates renewed meanwhile")
    assert len(results) > 50 and not failures, (len(results), failures[:5])
    assert renewed >= 5 * int(LOAD_SECONDS // EVERY - 1), rotator.tail()  # each of the 5 identities
    for s in meshed.instances.values():
        assert "renewed: new handshakes use it" in s.sidecar.log.read_text()
    assert "renewed: new handshakes use it" in meshed.children["gateway"].log.read_text()


def test_replay_presents_a_workload_certificate(meshed, tmp_path):
    """`mitmesh replay` against payments' STRICT sidecars: as the gateway (the default identity)
    it is let in; as users it gets payments' 403; with no certificate to present it stops."""
    recorded = tmp_path / "flows.mitm"
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/charge", content=b'{"amount": 5}',
                                       host="payments", port=80),
                       resp=tutils.tresp(content=b'{"service": "payments", "amount": 5.0, "status": "charged"}'))
    with open(recorded, "wb") as f:
        io.FlowWriter(f).add(flow)
    argv = procs.python("-m", "mesh.cli", "replay", str(recorded), "--against", "payments/v1", "--admin",
                        meshed.admin, "--config", str(meshed.path),
                        "--ignore", "instance,request_id,version,zone,payment_id,method,path")
    run = lambda *extra: subprocess.run(argv + list(extra), capture_output=True, text=True, timeout=30)
    ok = run()
    assert ok.returncode == 0 and "1 same, 0 differ, 0 failed" in ok.stdout, ok.stdout + ok.stderr
    assert f"replaying over mTLS as {sid('gateway')}" in ok.stdout
    denied = run("--identity", "users")
    assert denied.returncode == 1 and "status: 200 → 403" in denied.stdout, denied.stdout + denied.stderr
    missing = run("--identity", "nobody")
    assert missing.returncode == 1 and "cannot load the workload certificate of nobody" in missing.stderr
