"""mTLS from the client side: the pool presents a workload certificate, checks the server's SPIFFE
ID, and moves to a renewed certificate without failing a request. Real handshakes on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
import time

import pytest
from OpenSSL import SSL

from mesh.security import mtls, pki
from mesh.core import upstream

TD, NS = "mitmesh.local", "demo"


def sid(name: str) -> str:
    return pki.spiffe_id(TD, NS, name)


@pytest.fixture
def certs(tmp_path):
    pki.init_mesh(tmp_path, TD)
    for name in ("orders", "payments"):
        pki.issue_workload(tmp_path, name, sid(name))
    return tmp_path


def files(directory, name):
    return mtls.workload_files(str(directory), ".", name)


class MeshServer:
    """A TLS server requiring a mesh client certificate; answers with the client's SPIFFE ID."""

    def __init__(self, directory, name="payments"):
        cert, key, ca = files(directory, name)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.peers: list[tuple[str | None, int]] = []  # (identity, certificate serial)

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _handle(self, reader, writer):
        obj = writer.get_extra_info("ssl_object")
        peer = mtls.peer_identity(obj)
        self.peers.append((peer, int(obj.getpeercert()["serialNumber"], 16)))
        body = (peer or "-").encode()
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def call(pool, port, client, identity):
    return await pool.request("127.0.0.1", port, b"GET", b"/", [(b"host", b"payments")],
                              timeout=2.0, ssl=client.context, peer_identity=identity)


async def test_pool_presents_its_identity_and_checks_the_servers(certs):
    client = mtls.CertStore().client(*files(certs, "orders"))
    pool = upstream.Pool()
    async with MeshServer(certs) as server:
        resp = await call(pool, server.port, client, sid("payments"))
        assert (resp.status, resp.body) == (200, sid("orders").encode())
        await call(pool, server.port, client, sid("payments"))
        assert pool.opened == 1  # kept alive and reused
        with pytest.raises(upstream.ConnectFailure) as e:
            await call(pool, server.port, client, sid("users"))
        assert str(e.value) == (f"TLS peer 127.0.0.1:{server.port} refused: peer identity is "
                                f"{sid('payments')}, expected {sid('users')}")
    await pool.close()


async def test_server_from_another_ca_or_expired_is_a_connect_failure(certs, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    pki.init_mesh(other, TD)
    pki.issue_workload(other, "payments", sid("payments"))
    client = mtls.CertStore().client(*files(certs, "orders"))
    pool = upstream.Pool()
    async with MeshServer(other) as server:
        with pytest.raises(upstream.ConnectFailure, match="failed: self-signed certificate in certificate chain"):
            await call(pool, server.port, client, sid("payments"))
    ca = pki.read(*pki.mesh_ca_paths(certs))
    old = pki.issue(ca, "payments", uris=[sid("payments")], lifetime=dt.timedelta(hours=1),
                    not_before=pki._now() - dt.timedelta(hours=3), client=True)
    pki.write(old, *pki.workload_paths(certs, "payments"))
    async with MeshServer(certs) as server:
        with pytest.raises(upstream.ConnectFailure, match="failed: certificate has expired"):
            await call(pool, server.port, client, sid("payments"))


async def test_renewed_certificate_is_used_for_new_connections_without_a_failure(certs):
    store = mtls.CertStore()
    client = store.client(*files(certs, "orders"))
    pool = upstream.Pool()
    async with MeshServer(certs) as server:
        async def steady(n):
            for _ in range(n):
                resp = await call(pool, server.port, client, sid("payments"))
                assert resp.status == 200
                await asyncio.sleep(0)
        first = asyncio.gather(*(steady(30) for _ in range(4)))
        await asyncio.sleep(0.05)
        pki.issue_workload(certs, "orders", sid("orders"))  # renewal, as `certs rotate` does
        assert [w.paths[0] for w in store.refresh()] == [files(certs, "orders")[0]]
        await first
        await steady(5)
        serials = {serial for _, serial in server.peers}
        assert len(serials) == 2  # connections after the renewal present the new certificate
        assert server.peers[-1][1] != server.peers[0][1]
    await pool.close()


def _new_key_only(certs, name="orders"):
    """The first half of a renewal (`certs rotate` writes the key, then the certificate): the new
    pair, with only its key on disk."""
    cert, key, _ = files(certs, name)
    new = pki.issue(pki.read(*pki.mesh_ca_paths(certs)), name, uris=[sid(name)], client=True)
    pki._atomic(pki.Path(key), new.key.private_bytes(
        pki.serialization.Encoding.PEM, pki.serialization.PrivateFormat.PKCS8,
        pki.serialization.NoEncryption()), 0o600)
    return new, pki.Path(cert), pki.Path(key)


async def test_half_written_renewal_keeps_the_old_context(certs):
    client = mtls.CertStore().client(*files(certs, "orders"))
    before = client.context
    new, cert, key = _new_key_only(certs)  # the key lands first...
    assert client.refresh() is False and client.context is before and "SSLError" in client.error
    pki.write(new, cert, key)  # ...then the certificate
    assert client.refresh() is True and client.context is not before and client.error is None


def test_a_first_load_during_a_renewal_waits_for_its_certificate(certs):
    new, cert, key = _new_key_only(certs)
    with pytest.raises(ssl.SSLError):  # what a load between the two writes finds
        mtls.client_context(*files(certs, "orders"))
    writer = threading.Timer(0.2, pki.write, (new, cert, key))
    writer.start()
    try:
        client = mtls.CertStore().client(*files(certs, "orders"))  # the proxy starting meanwhile
    finally:
        writer.join()
    assert client.stamps == mtls._stamps(client.paths)  # built from the renewed pair
    assert client.refresh() is False and client.error is None


def test_a_pair_that_does_not_match_is_still_a_config_error(certs):
    _new_key_only(certs)  # and no certificate follows
    started = time.monotonic()
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        mtls.CertStore().client(*files(certs, "orders"))
    assert mtls.SETTLE <= time.monotonic() - started < mtls.SETTLE + 2
    cert, key, ca = files(certs, "orders")
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):  # a missing file: at once
        mtls.CertStore().client(cert + ".missing", key, ca)
    assert time.monotonic() - started < mtls.SETTLE / 2


def test_server_context_modes(certs):
    cert, key, ca = files(certs, "payments")
    strict = mtls.server_context(cert, key, client_ca=ca, mode="STRICT")
    assert strict.get_verify_mode() == SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    assert mtls.server_context(cert, key, client_ca=ca, mode="PERMISSIVE").get_verify_mode() == SSL.VERIFY_PEER
    assert mtls.server_context(cert, key).get_verify_mode() == SSL.VERIFY_NONE


@pytest.mark.parametrize("spiffe, parsed", [
    ("spiffe://mitmesh.local/ns/demo/sa/orders", ("mitmesh.local", "demo", "orders")),
    ("spiffe://mitmesh.local/ns/demo/orders", None),
    ("https://mitmesh.local/ns/demo/sa/orders", None),
    ("spiffe://mitmesh.local/ns//sa/orders", None),
])
def test_parse_spiffe(spiffe, parsed):
    assert mtls.parse_spiffe(spiffe) == parsed


def test_clients_offer_aead_suites_only_below_tls13(certs):
    client = mtls.client_context(*files(certs, "orders"))
    tls12 = [c["name"] for c in client.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all("GCM" in c or "CHACHA20" in c for c in tls12), tls12


@pytest.mark.parametrize("sans, need, why", [
    ([sid("orders")], True, None),
    (["spiffe://evil.example/ns/demo/sa/orders"], True,
     f"SPIFFE ID spiffe://evil.example/ns/demo/sa/orders is outside the trust domain {TD}"),
    ([f"spiffe://{TD}.evil.example/ns/demo/sa/orders"], False,
     f"SPIFFE ID spiffe://{TD}.evil.example/ns/demo/sa/orders is outside the trust domain {TD}"),
    ([sid("orders"), sid("users")], True, "certificate carries 2 SPIFFE IDs"),
    ([], True, "certificate carries no SPIFFE ID"),
    (["https://partner.example/id"], False, None),  # a listener with its own client CA: no SPIFFE needed
])
def test_refusal(sans, need, why):
    assert mtls.refusal(sans, TD, need) == why
