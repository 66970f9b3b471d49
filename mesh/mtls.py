"""Mutual TLS for the mesh: TLS contexts built from certificate files, SPIFFE peer checks, renewal.

A context is rebuilt when one of its files changes, so new handshakes use a renewed certificate
while open connections keep the one they started with: nothing restarts, no request fails.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, TypeVar

from OpenSSL import SSL

from . import pki

T = TypeVar("T")
MODES = ("STRICT", "PERMISSIVE")


def _select_alpn(http2: bool):
    def select(conn: SSL.Connection, offered: list[bytes]):
        if http2 and b"h2" in offered:
            return b"h2"
        if b"http/1.1" in offered:
            return b"http/1.1"
        return SSL.NO_OVERLAPPING_PROTOCOLS
    return select


def server_context(cert: str, key: str, *, http2: bool = True, client_ca: str | None = None,
                   mode: str | None = None) -> SSL.Context:
    """A pyOpenSSL server context presenting `cert`; with `mode`, client certificates are verified
    by OpenSSL against `client_ca` (STRICT: required; PERMISSIVE: optional, but checked if sent)."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
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
        context.set_verify(flags)  # no callback: OpenSSL's chain and validity checks decide
        # a verifying server must name its session context, or resumed sessions are refused
        context.set_session_id(b"mitmesh-mtls")
    return context


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """An asyncio client context presenting a workload certificate and trusting only `ca`.

    Host names are not checked: the peer is identified by its SPIFFE ID (`check_peer`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


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
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class Watched(Generic[T]):
    """A context built from files; `refresh()` rebuilds it when one of them changed.

    A failed rebuild (a key renewed before its certificate, a file missing for a moment) keeps
    the previous context and is retried on the next refresh."""

    def __init__(self, build: Callable[[], T], paths: tuple[str, ...]):
        self._build = build
        self.paths = paths
        self.stamps = _stamps(paths)
        self.context: T = build()  # the first build raises: a bad file is a config error
        self.renewals = 0
        self.error: str | None = None

    def refresh(self) -> bool:
        stamps = _stamps(self.paths)
        if stamps == self.stamps:
            return False
        try:
            context = self._build()
        except (OSError, SSL.Error, ssl.SSLError, ValueError) as e:
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
               mode: str | None = None) -> Watched[SSL.Context]:
        k = ("server", cert, key, http2, client_ca, mode)
        if k not in self.items:
            paths = (cert, key) + ((client_ca,) if client_ca else ())
            self.items[k] = Watched(
                lambda: server_context(cert, key, http2=http2, client_ca=client_ca, mode=mode), paths)
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
    ca, _ = pki.mesh_ca_paths(directory)
    return str(cert), str(key), str(ca)
