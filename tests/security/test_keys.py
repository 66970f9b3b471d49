"""Keys and trust domain: CA keys apart from what proxies read, identities from outside the mesh's
trust domain refused in the handshake (both directions), AEAD-only TLS 1.2, the certificate_required
alert. Against a real gateway and a real sidecar that run with the CA keys moved away."""

from __future__ import annotations

import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading

import pytest

from tools import certcmd
from mesh.security import pki
from mesh.runtime import procs
from mesh.config import load
from tools.testbed import Mesh, get, sidecar_config, wait_until

from .peers import TD, https, peer_cert, sid, tls_context

pytestmark = pytest.mark.e2e

MITMESH = [sys.executable, "-m", "mesh.cli"]


class ForeignEndpoint:
    """An endpoint presenting a certificate from the mesh's own CA but for another trust domain:
    counts the bytes of any request that reaches it after the handshake."""

    def __init__(self, cert: tuple[str, str], ca: str):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*cert)
        self.context.load_verify_locations(ca)
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes += 1
                    tls.settimeout(2)
                    self.received += len(tls.recv(65536))
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A gateway (plain, TLS and STRICT mTLS listeners) and a STRICT payments instance with its
    sidecar, started after the CA keys were moved out of reach: neither may need them."""
    tmp = tmp_path_factory.mktemp("keys")
    m = Mesh(tmp, {})
    config = sidecar_config(f"{m.net}.1")
    edge = {"cert": "certs/edge.pem", "key": "certs/edge.key"}
    config["gateway"]["listeners"] += [
        {"name": "public-tls", "port": procs.free_port(), "tls": edge},
        {"name": "mesh-mtls", "port": procs.free_port(), "tls": {**edge, "mtls": "STRICT"}}]
    config["services"]["payments"]["mtls"] = "STRICT"
    certs = tmp / "certs"
    pki.init_edge(certs)
    pki.init_mesh(certs, TD)
    m.write(config)
    foreign = ForeignEndpoint(peer_cert(certs, tmp / "ledger", [sid("ledger", "evil.example")]),
                              str(pki.mesh_ca_cert(certs)))
    config["services"]["ledger"] = {"mtls": "STRICT", "versions": {"v1": {
        "endpoints": [f"127.0.0.1:{foreign.port}"]}}}
    config["routes"] += [
        {"name": "payments", "match": {"path": {"prefix": "/payments/"}},
         "forward": {"service": "payments", "rewrite": {"prefix": "/"}}},
        {"name": "ledger", "match": {"path": {"prefix": "/ledger/"}},
         "forward": {"service": "ledger", "rewrite": {"prefix": "/"}}}]
    m.write(config)
    certcmd.rotate(certs, load(m.path))  # every workload certificate, as `mitmesh up` issues them
    attackers = {
        "spiffe-id-from-foreign-trust-domain": peer_cert(certs, tmp / "foreign", [sid("orders", "evil.example")]),
        "spiffe-id-from-lookalike-trust-domain": peer_cert(
            certs, tmp / "lookalike", [sid("orders", f"{TD}.evil.example")]),
        "two-spiffe-ids-in-one-certificate": peer_cert(
            certs, tmp / "two", [sid("orders"), sid("orders", "evil.example")]),
        "certificate-without-spiffe-id": peer_cert(certs, tmp / "none", [], dns=["orders.demo"]),
    }
    away = tmp / "ca-keys-away"
    (certs / pki.CA_DIR).rename(away)
    try:
        m.instances = {s.inst.service: s for s in m.start_instances({"service": "payments"})}
        m.start_gateway()
        m.wait_instances(1)
        m.certs, m.attackers, m.away, m.foreign = certs, attackers, away, foreign
        m.ports = {l["name"]: l["port"] for l in config["gateway"]["listeners"]}
        yield m
    finally:
        m.stop()
        foreign.close()
        if away.exists() and not (certs / pki.CA_DIR).exists():
            away.rename(certs / pki.CA_DIR)


def targets(m) -> dict:
    """Where a peer certificate is checked: the gateway's mTLS listener, payments' sidecar inbound."""
    inbound = m.instances["payments"].inbound.rpartition(":")
    return {"gateway-mtls-listener": ("127.0.0.1", m.ports["mesh-mtls"], m.certs / "edge-ca.pem",
                                      "/payments/charge", m.children["gateway"], "mesh-mtls"),
            "sidecar-inbound": (inbound[0], int(inbound[2]), pki.mesh_ca_cert(m.certs), "/charge",
                                m.instances["payments"].sidecar, "inbound")}


def test_ca_keys_beside_runtime_certificates(tmp_path):
    out = subprocess.run(MITMESH + ["certs", "init", "--dir", str(tmp_path / "certs")], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    certs = tmp_path / "certs"
    assert sorted(p.name for p in certs.glob("*.key")) == ["edge.key"]  # the listener's own key only
    assert stat.S_IMODE((certs / "ca").stat().st_mode) == 0o700
    for key in ("edge-ca.key", "mesh-ca.key"):
        assert stat.S_IMODE((certs / "ca" / key).stat().st_mode) == 0o600


def test_ca_key_readable_by_proxies(keyed):
    """The whole module runs with the CA keys moved away: mTLS at the edge and between proxies works."""
    assert not (keyed.certs / pki.CA_DIR).exists()
    status, body = https("127.0.0.1", keyed.ports["mesh-mtls"],
                         tls_context(keyed.certs / "edge-ca.pem", tuple(map(str, pki.workload_paths(keyed.certs, "orders")))),
                         "POST", "/payments/charge", b'{"amount": 2}')
    assert (status, body["status"]) == (200, "charged")  # the edge checked orders, the gateway called payments over mTLS


def test_ca_key_given_to_a_listener(tmp_path):
    certs = tmp_path / "certs"
    pki.init_edge(certs)
    pki.init_mesh(certs, TD)
    path = tmp_path / "mesh.yaml"
    path.write_text(f"""version: 1
gateway:
  listeners: [{{name: tls, port: {procs.free_port()}, tls: {{cert: certs/mesh-ca.pem, key: certs/ca/mesh-ca.key}}}}]
  admin: {{port: {procs.free_port()}}}
routes: [{{name: health, match: {{path: {{exact: /healthz}}}}, direct: {{status: 200}}}}]
""")
    out = subprocess.run([sys.executable, "-m", "mesh.proxy.master", "--config", str(path)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1
    assert ("mesh.yaml:1: gateway.listeners[0].tls.key: a CA's private key is never given to a proxy (it "
            "could mint any identity); use the listener's own key (got 'certs/ca/mesh-ca.key')") in out.stderr


ATTACKS = ["spiffe-id-from-foreign-trust-domain", "spiffe-id-from-lookalike-trust-domain",
           "two-spiffe-ids-in-one-certificate", "certificate-without-spiffe-id"]
WHY = {"spiffe-id-from-foreign-trust-domain": f"SPIFFE ID {sid('orders', 'evil.example')} is outside "
                                              f"the trust domain {TD}",
       "spiffe-id-from-lookalike-trust-domain": f"SPIFFE ID {sid('orders', TD + '.evil.example')} is "
                                                f"outside the trust domain {TD}",
       "two-spiffe-ids-in-one-certificate": "certificate carries 2 SPIFFE IDs",
       "certificate-without-spiffe-id": "certificate carries no SPIFFE ID"}


@pytest.mark.parametrize("target", ["gateway-mtls-listener", "sidecar-inbound"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_peer_identity_outside_the_mesh(keyed, attack, target):
    host, port, ca, path, proxy, listener = targets(keyed)[target]
    status, why = https(host, port, tls_context(ca, keyed.attackers[attack]), "POST", path, b'{"amount": 1}')
    assert status == "refused", (status, why)  # in the handshake: no request reached a route
    line = f"mTLS handshake refused on listener {listener}: {WHY[attack]}"
    wait_until(lambda: line in proxy.tail(400), timeout=5)


def test_upstream_from_foreign_trust_domain(keyed):
    """An endpoint of a mesh service presenting the right name in another trust domain (signed by a
    CA the gateway trusts) gets the handshake and not one byte of the request."""
    status, body, _ = get(keyed.url + "/ledger/entries")
    assert (status, body["error"]) == (503, "upstream_connect_failure")
    # the endpoint's thread counts the handshake once its side of it returns, which under load can
    # be after the gateway's 503 has reached us: wait for it, then look at the bytes
    wait_until(lambda: keyed.foreign.handshakes >= 1)
    assert keyed.foreign.received == 0
    flows = get(keyed.admin + "/flows")[1]["flows"]
    assert any(f"peer identity {sid('ledger', 'evil.example')} is outside the trust domain {TD}" in what
               for f in flows for _, what in f["decisions"])


@pytest.mark.parametrize("target", ["gateway-mtls-listener", "sidecar-inbound"])
def test_no_client_certificate(keyed, target):
    """Refused with TLS 1.3's certificate_required alert, not a bare reset."""
    host, port, ca, path, _, _ = targets(keyed)[target]
    status, why = https(host, port, tls_context(ca), "POST", path, b"{}")
    assert status == "refused" and why.startswith("TLSV13_ALERT_CERTIFICATE_REQUIRED"), why


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
                                   "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"],
                         ids=lambda s: f"tls12-cbc-suite-{s}")
def test_tls12_non_aead_suite(keyed, suite):
    port = keyed.ports["public-tls"]
    status, why = https("127.0.0.1", port, tls_context(keyed.certs / "edge-ca.pem", tls12=True, ciphers=suite),
                        "GET", "/payments/x")
    assert status == "refused" and why.startswith("SSLV3_ALERT_HANDSHAKE_FAILURE"), why
    aead = tls_context(keyed.certs / "edge-ca.pem", tls12=True, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert https("127.0.0.1", port, aead, "POST", "/payments/charge", b'{"amount": 1}')[0] == 200


def test_renewal_after_ca_keys_moved_apart(keyed):
    """Last: the CA keys come back where only `mitmesh certs` reads them; a renewal reaches the
    running sidecar, whose next handshakes present the new certificate."""
    keyed.away.rename(keyed.certs / pki.CA_DIR)
    inbound = keyed.instances["payments"].inbound.rpartition(":")

    def served() -> bytes:
        context = tls_context(pki.mesh_ca_cert(keyed.certs), tuple(map(str, pki.workload_paths(keyed.certs, "orders"))))
        with socket.create_connection((inbound[0], int(inbound[2])), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                return tls.getpeercert(binary_form=True)

    before = served()
    out = subprocess.run(MITMESH + ["certs", "issue", "payments", "--config", str(keyed.path)],
                         capture_output=True, text=True, cwd=keyed.tmp)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: served() != before, timeout=10)
    shutil.rmtree(keyed.away, ignore_errors=True)
