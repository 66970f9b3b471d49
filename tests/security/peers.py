"""Helpers of the policy half of the battery (admin port, keys, demo routes, auth throttling, leaks):
a running mesh, certificates an attacker would hold, TLS and plain clients with a chosen source."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import ssl
from pathlib import Path
from typing import Iterator

from mesh.security import pki
from tools.testbed import Mesh

TD, NS = "mitmesh.local", "demo"


def sid(name: str, trust_domain: str = TD) -> str:
    return pki.spiffe_id(trust_domain, NS, name)


@contextlib.contextmanager
def running(tmp: Path, config: dict, workers: int = 1) -> Iterator[Mesh]:
    """The config's launched apps and a gateway (lean runtime), stopped whatever happens."""
    m = Mesh(tmp, config)
    m.write()
    try:
        m.start_services()
        m.start_gateway(workers=workers)
        yield m
    finally:
        m.stop()


def peer_cert(certs: Path, out: Path, uris: list[str], dns: list[str] = ()) -> tuple[str, str]:
    """A client certificate signed by the mesh CA itself, carrying exactly these URI SANs: what an
    attacker holding a CA shared with another mesh (or a misissued certificate) would present."""
    ca = pki.read(*pki.mesh_ca_paths(certs))
    issued = pki.issue(ca, "peer", uris=uris, dns=list(dns), lifetime=dt.timedelta(hours=1),
                       server=True, client=True)
    cert, key = out / f"{out.name}.pem", out / f"{out.name}.key"
    pki.write(issued, cert, key, chain=[ca.cert])
    return str(cert), str(key)


def tls_context(ca: Path | str | None, client: tuple[str, str] | None = None, *, tls12: bool = False,
                ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # peers are identified by their SPIFFE ID (or not at all here)
    if ca is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(str(ca))
    if client:
        context.load_cert_chain(*client)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def https(host: str, port: int, context: ssl.SSLContext, method: str = "GET", path: str = "/",
          body: bytes | None = None, headers: dict | None = None) -> tuple[object, object]:
    """(status, JSON body) of one HTTPS request, or ("refused", "<SSL error name>: why") when TLS fails."""
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    except ssl.SSLError as e:
        return "refused", f"{e.reason}: {e}"
    except (ConnectionError, http.client.RemoteDisconnected) as e:
        return "refused", f"{e.__class__.__name__}: {e}"
    finally:
        conn.close()


def request(port: int, method: str = "GET", path: str = "/", *, headers: dict | None = None,
            body: bytes | None = None, source: str = "127.0.0.1") -> tuple[int, dict | None, dict]:
    """(status, JSON body or None, lower-cased headers) of one plain request from `source`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
