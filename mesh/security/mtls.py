"""Mutual TLS for the mesh: TLS contexts built from certificate files, SPIFFE peer checks, renewal.

A context is rebuilt when one of its files changes, so new handshakes use a renewed certificate
while open connections keep the one they started with: nothing restarts, no request fails.
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, TypeVar

from cryptography import x509
from OpenSSL import SSL

from mesh.config.files import stamp
from mesh.security import pki

T = TypeVar("T")
# how long a first load that fails waits for its files to change: `certs rotate` replaces a key a
# moment before its certificate, and a load between the two finds a pair that does not match
SETTLE = 1.0
# what a build from files that cannot be used (yet) raises: missing, unreadable, not matching
UNUSABLE = (OSError, SSL.Error, ssl.SSLError, ValueError)
MODES = ("STRICT", "PERMISSIVE")
# TLS 1.2 suites: AEAD only, forward secret (Mozilla's "intermediate" list); TLS 1.3's are all AEAD
AEAD_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


def _select_alpn(http2: bool):
    def select(conn: SSL.Connection, offered: list[bytes]):
        if http2 and b"h2" in offered:
            return b"h2"
        if b"http/1.1" in offered:
            return b"http/1.1"
        return SSL.NO_OVERLAPPING_PROTOCOLS
    return select


def trust_domain_of(spiffe: str | None) -> str | None:
    """The trust domain of `spiffe://td/...`, else None."""
    if not spiffe or not spiffe.startswith("spiffe://"):
        return None
    return spiffe[len("spiffe://"):].split("/", 1)[0] or None


def refusal(sans: list[str], trust_domain: str, need_spiffe: bool) -> str | None:
    """Why a verified peer certificate with these URI SANs is refused, or None.

    A SPIFFE ID must be the only one and inside the mesh's trust domain (a CA shared with another
    mesh, or a federated bundle, must not let that mesh's identities in); `need_spiffe`: a
    certificate without one is refused too (listeners trusting the mesh CA)."""
    ids = [u for u in sans if u.startswith("spiffe://")]
    if len(ids) > 1:
        return f"certificate carries {len(ids)} SPIFFE IDs"
    if not ids:
        return "certificate carries no SPIFFE ID" if need_spiffe else None
    domain = trust_domain_of(ids[0])
    if domain != trust_domain:
        return f"SPIFFE ID {ids[0]} is outside the trust domain {trust_domain}"
    return None


def _uri_sans(cert) -> list[str]:
    try:
        ext = cert.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def _verify_peer(trust_domain: str, need_spiffe: bool):
    def verify(conn: SSL.Connection, cert, errno: int, depth: int, ok: int) -> bool:
        if not ok:  # OpenSSL's chain and validity checks said no: keep its words for the log
            why = SSL._ffi.string(SSL._lib.X509_verify_cert_error_string(errno)).decode()
        elif depth != 0:
            return True
        else:
            why = refusal(_uri_sans(cert), trust_domain, need_spiffe)
        if why is not None and isinstance(conn, AlertingConnection):
            conn.refused = why
        return why is None
    return verify


def server_context(cert: str, key: str, *, http2: bool = True, client_ca: str | None = None,
                   mode: str | None = None, trust_domain: str | None = None,
                   need_spiffe: bool = False) -> SSL.Context:
    """A pyOpenSSL server context presenting `cert`; with `mode`, client certificates are verified
    by OpenSSL against `client_ca` (STRICT: required; PERMISSIVE: optional, but checked if sent),
    and, with `trust_domain`, a peer's SPIFFE ID must lie in it (see `refusal`)."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.set_cipher_list(AEAD_CIPHERS.encode())
    context.use_certificate_chain_file(cert)
    context.use_privatekey_file(key)
    context.check_privatekey()
    context.set_alpn_select_callback(_select_alpn(http2))
    if mode is not None:
        if mode not in MODES or client_ca is None:
            raise ValueError(f"mtls needs a mode in {MODES} and a client CA (got {mode!r}, {client_ca!r})")
        context.load_verify_locations(client_ca)
        flags = SSL.VERIFY_PEER
        if mode == "STRICT":
            flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(flags, _verify_peer(trust_domain, need_spiffe) if trust_domain else None)
        # a verifying server must name its session context, or resumed sessions are refused
        context.set_session_id(b"mitmesh-mtls")
    return context


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """An asyncio client context presenting a workload certificate and trusting only `ca`.

    Host names are not checked: the peer is identified by its SPIFFE ID (`check_peer`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(AEAD_CIPHERS)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class AlertingConnection(SSL.Connection):
    """A server-side connection that sends its fatal alert when the handshake fails.

    mitmproxy gives up on a failed handshake without sending what OpenSSL queued, so a client saw
    a bare close instead of the alert saying why (TLS 1.3's certificate_required for a missing
    client certificate, unknown_ca, ...). Here the first failure hands the alert out as if more data
    were awaited (mitmproxy sends pending bytes then); the error is raised on the next call, or the
    client, having read the alert, closes."""

    _alert = b""
    failed: SSL.Error | None = None
    refused: str | None = None  # why the peer's identity was refused (see `refusal`), for logs

    def do_handshake(self) -> None:
        if self.failed is not None:
            raise self.failed
        try:
            return super().do_handshake()
        except SSL.WantReadError:
            raise
        except SSL.Error as e:
            try:
                self._alert = super().bio_read(65536)
            except SSL.Error:
                raise e from None
            self.failed = e
            raise SSL.WantReadError() from None

    def bio_read(self, bufsiz: int) -> bytes:
        if self._alert:
            data, self._alert = self._alert, b""
            return data
        return super().bio_read(bufsiz)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The verified peer's SPIFFE ID, from its certificate's one spiffe:// URI SAN."""
    cert = ssl_object.getpeercert() or {}
    ids = [v for k, v in cert.get("subjectAltName", ()) if k == "URI" and v.startswith("spiffe://")]
    return ids[0] if len(ids) == 1 else None


def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: str) -> str | None:
    """None when the peer is `expected`, else why not."""
    if ssl_object is None:
        return f"no TLS connection to check, expected {expected}"
    got = peer_identity(ssl_object)
    if got == expected:
        return None
    if got is not None and trust_domain_of(got) != trust_domain_of(expected):
        return f"peer identity {got} is outside the trust domain {trust_domain_of(expected)}"
    return f"peer identity is {got or 'missing'}, expected {expected}"


def parse_spiffe(spiffe: str) -> tuple[str, str, str] | None:
    """(trust domain, namespace, name) of `spiffe://td/ns/NS/sa/NAME`, else None."""
    if not spiffe.startswith("spiffe://"):
        return None
    parts = spiffe[len("spiffe://"):].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
        return None
    return parts[0], parts[2], parts[4]


def _stamps(paths: tuple[str, ...]) -> tuple:
    return tuple(stamp(p) for p in paths)


class Watched(Generic[T]):
    """A context built from files; `refresh()` rebuilds it when one of them changed.

    A failed rebuild (a key renewed before its certificate, a file missing for a moment) keeps
    the previous context and is retried on the next refresh."""

    def __init__(self, build: Callable[[], T], paths: tuple[str, ...]):
        self._build = build
        self.paths = paths
        self.context: T = self._first()  # the first build raises: a bad file is a config error
        self.renewals = 0
        self.error: str | None = None

    def _first(self) -> T:
        """The first build. One that fails while every file is there is tried again if a file
        changes within SETTLE seconds (a renewal under way), else its error is raised; a missing
        file fails at once."""
        deadline = time.monotonic() + SETTLE
        while True:
            self.stamps = _stamps(self.paths)
            try:
                return self._build()
            except UNUSABLE:
                if None in self.stamps or not self._changes_before(deadline):
                    raise

    def _changes_before(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if _stamps(self.paths) != self.stamps:
                return True
            time.sleep(0.02)
        return False

    def refresh(self) -> bool:
        stamps = _stamps(self.paths)
        if stamps == self.stamps:
            return False
        try:
            context = self._build()
        except UNUSABLE as e:
            self.error = f"{e.__class__.__name__}: {e}"
            return False
        self.context, self.stamps, self.error = context, stamps, None
        self.renewals += 1
        return True


class NoMtls(Exception):
    """An endpoint must be called over mTLS and cannot be: the reason says why."""


@dataclass(frozen=True)
class Upstreams:
    """How this proxy calls other proxies: which services its config puts under mTLS, and its own
    workload certificate (a client context) to present to them.

    An endpoint is called over mTLS when its service's `mtls` is STRICT or PERMISSIVE, or when
    discovery announced it as `https` (a sidecar whose own config turned mTLS on first). The peer
    must present the service's SPIFFE ID: the identity announced for the endpoint is checked too,
    so an instance announcing another workload's identity is refused (Istio's secure naming).
    """

    services: frozenset[str] = frozenset()  # services whose config says STRICT or PERMISSIVE
    client: Watched[ssl.SSLContext] | None = None
    trust_domain: str = "mitmesh.local"
    namespace: str = "demo"
    missing: str = "no workload certificate is loaded"  # why `client` is None

    def identity(self, service: str) -> str:
        return pki.spiffe_id(self.trust_domain, self.namespace, service)

    def plan(self, service: str, protocol: str = "http",
             announced: str | None = None) -> tuple[ssl.SSLContext, str] | None:
        """(client context, peer SPIFFE ID to require) for one endpoint of `service`, or None for
        plaintext. Raises NoMtls when mTLS is needed and impossible."""
        if service not in self.services and protocol != "https":
            return None
        expected = self.identity(service)
        if announced is not None and announced != expected:
            raise NoMtls(f"endpoint announced identity {announced}, but service {service} runs as "
                         f"{expected}")
        if self.client is None:
            raise NoMtls(f"{service} is called over mTLS and this proxy cannot present a workload "
                         f"certificate: {self.missing}")
        return self.client.context, expected


@dataclass
class CertStore:
    """Every watched context of one proxy, shared by key, so each file set is watched once."""

    items: dict[tuple, Watched] = field(default_factory=dict)

    def server(self, cert: str, key: str, *, http2: bool = True, client_ca: str | None = None,
               mode: str | None = None, trust_domain: str | None = None,
               need_spiffe: bool = False) -> Watched[SSL.Context]:
        k = ("server", cert, key, http2, client_ca, mode, trust_domain, need_spiffe)
        if k not in self.items:
            paths = (cert, key) + ((client_ca,) if client_ca else ())
            self.items[k] = Watched(
                lambda: server_context(cert, key, http2=http2, client_ca=client_ca, mode=mode,
                                       trust_domain=trust_domain, need_spiffe=need_spiffe), paths)
        return self.items[k]

    def client(self, cert: str, key: str, ca: str) -> Watched[ssl.SSLContext]:
        k = ("client", cert, key, ca)
        if k not in self.items:
            self.items[k] = Watched(lambda: client_context(cert, key, ca), (cert, key, ca))
        return self.items[k]

    def retain(self, used: list[Watched]) -> None:
        """Forget contexts no longer used after a config change."""
        keep = {id(w) for w in used}
        self.items = {k: w for k, w in self.items.items() if id(w) in keep}

    def refresh(self) -> list[Watched]:
        """Rebuild what changed on disk; returns the renewed contexts."""
        return [w for w in list(self.items.values()) if w.refresh()]


def workload_files(base: str, identity_dir: str, name: str) -> tuple[str, str, str]:
    """(cert, key, mesh CA) paths of a workload, resolved against the config file's folder."""
    directory = Path(base, identity_dir)
    cert, key = pki.workload_paths(directory, name)
    ca = pki.mesh_ca_cert(directory)
    return str(cert), str(key), str(ca)
