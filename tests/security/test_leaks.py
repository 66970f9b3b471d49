"""Small leaks: CORS preflights only where a route has CORS, no endpoint addresses, library messages
or upstream Server headers in what clients see, string dates in JWTs, and mDNS bound only where
configured (checked with `ss` against real proxy processes)."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from mesh.runtime import procs
from tools.testbed import Mesh, get, sidecar_config

from .peers import request, running

pytestmark = pytest.mark.e2e

ISSUER = "https://idp.test"
# what must never reach a client: socket errors, Python exception names, OpenSSL or aiohttp words
LIBRARY_WORDS = re.compile(r"Errno|errno|refused|reset by peer|Connect call failed|ClientConnector|"
                           r"Exception|Error\(|Traceback|aiohttp|OpenSSL")


class Resetting:
    """An endpoint that accepts a connection and resets it (RST) without answering."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leaks")
    p = procs.free_port
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(signing.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    resetting = Resetting()
    catalog, echo, dead, idp = p(), p(), p(), p()

    def route(name, service, *policies, methods=None):
        match = {"path": {"prefix": f"/{name}/"}, **({"methods": methods} if methods else {})}
        return {"name": name, "match": match, "forward": {"service": service, "rewrite": {"prefix": "/"}},
                "policies": list(policies)}

    config = {
        "version": 1,
        "gateway": {"listeners": [{"name": "public", "port": p()}], "admin": {"port": p()}},
        "services": {
            "catalog": {"versions": {"v1": {"launch": {"app": "catalog"}, "endpoints": [f"127.0.0.1:{catalog}"]}}},
            "echo": {"versions": {"v1": {"launch": {"app": "echo"}, "endpoints": [f"127.0.0.1:{echo}"]}}},
            "dead": {"versions": {"v1": {"endpoints": [f"127.0.0.1:{dead}"]}}},
            "resetting": {"versions": {"v1": {"endpoints": [f"127.0.0.1:{resetting.port}"]}}},
        },
        "routes": [route("restricted", "catalog", methods=["GET"]),
                   route("cors", "catalog", "web-app", methods=["GET"]),
                   route("echo", "echo"), route("dead", "dead"), route("reset", "resetting"),
                   route("jwt", "echo", "tokens"), route("introspect", "echo", "opaque")],
        "policies": {
            "web-app": {"cors": {"allow_origins": ["https://app.example"]}},
            "tokens": {"jwt": {"issuer": ISSUER, "jwks_file": "jwks.json"}},
            "opaque": {"oauth2": {"introspection_url": f"http://127.0.0.1:{idp}/introspect",
                                  "client_id": "gateway", "client_secret": "s3cret"}},
        },
    }
    try:
        with running(tmp, config) as m:
            m.port = config["gateway"]["listeners"][0]["port"]
            m.catalog, m.echo, m.dead, m.idp, m.signing = catalog, echo, dead, idp, signing
            m.reset_port = resetting.port
            yield m
    finally:
        resetting.sock.close()


def hits(port: int) -> int:
    return get(f"http://127.0.0.1:{port}/__knobs")[1]["hits"]


def preflight(port: int, path: str) -> tuple[int, dict | None, dict]:
    return request(port, "OPTIONS", path, headers={"origin": "https://evil.example",
                                                   "access-control-request-method": "GET"})


def test_cors_preflight_on_a_route_without_cors(leaky):
    """A method-restricted route without CORS answers a preflight as it answers any OPTIONS (no
    route for it); the app never sees it."""
    before = hits(leaky.catalog)
    status, body, headers = preflight(leaky.port, "/restricted/items")
    assert (status, body["error"]) == (404, "no_route")
    assert "access-control-allow-origin" not in headers
    assert hits(leaky.catalog) == before
    # the route with a CORS policy answers it itself (refusing an origin it does not allow)
    status, body, _ = preflight(leaky.port, "/cors/items")
    assert (status, body["error"]) == (403, "cors_denied") and hits(leaky.catalog) == before
    status, _, headers = request(leaky.port, "OPTIONS", "/cors/items", headers={
        "origin": "https://app.example", "access-control-request-method": "GET"})
    assert status == 204 and headers["access-control-allow-origin"] == "https://app.example"
    # a route open to every method and without CORS passes the OPTIONS on, as it would any other
    status, body, _ = preflight(leaky.port, "/echo/items")
    assert (status, body["method"]) == (200, "OPTIONS")


@pytest.mark.parametrize("path, status, error", [
    ("/dead/items", 503, "upstream_connect_failure"),
    ("/reset/items", 502, "upstream_reset"),
], ids=["refused-upstream-reveals-its-address", "reset-upstream-reveals-library-message"])
def test_upstream_failure_reveals_internals(leaky, path, status, error):
    got, body, headers = request(leaky.port, "GET", path)
    assert (got, body["error"]) == (status, error), body
    text = json.dumps(body) + json.dumps(headers)
    port = leaky.dead if path.startswith("/dead") else leaky.reset_port
    assert "127.0.0.1" not in text and str(port) not in text, text
    assert not LIBRARY_WORDS.search(text), text
    flows = get(leaky.admin + "/flows")[1]["flows"]  # the operator still sees where and why
    assert any(f"127.0.0.1:{port}" in what for f in flows if f["path"] == path for _, what in f["decisions"])


def test_introspection_down_reveals_its_address(leaky):
    status, body, _ = request(leaky.port, "GET", "/introspect/x", headers={"authorization": "Bearer opaque-123"})
    assert (status, body["error"], body["reason"]) == (503, "authn_unavailable", "token introspection is unavailable")
    assert str(leaky.idp) not in json.dumps(body) and not LIBRARY_WORDS.search(json.dumps(body))


@pytest.mark.parametrize("header", ["server", "x-powered-by"], ids=["upstream-server-header", "upstream-x-powered-by"])
def test_upstream_software_header(leaky, header):
    status, _, headers = request(leaky.port, "GET", "/echo/x?respond=x-powered-by:PHP/5.4.1&respond=server:Apache/2.2")
    assert status == 200 and header not in headers, headers
    direct = request(leaky.echo, "GET", "/x?respond=x-powered-by:PHP/5.4.1")[2]
    assert header in direct  # the app does send it; the gateway keeps it to itself


def test_upstream_error_with_server_header(leaky):
    get(f"http://127.0.0.1:{leaky.echo}/__knobs", data=b'{"error_rate": 1.0, "error_status": 500}')
    try:
        status, _, headers = request(leaky.port, "GET", "/echo/x")
    finally:
        get(f"http://127.0.0.1:{leaky.echo}/__knobs", data=b'{"error_rate": 0.0}')
    assert status == 500 and "server" not in headers


@pytest.mark.parametrize("claims, reason", [  # claims from the time of the request
    (lambda now: {"exp": "999999"}, "token expired"),
    (lambda now: {"exp": str(now + 86400)}, "claim exp is not a number of seconds (RFC 7519 NumericDate)"),
    (lambda now: {"exp": now + 60, "nbf": "0"}, "claim nbf is not a number of seconds (RFC 7519 NumericDate)"),
], ids=["jwt-exp-999999-as-a-string", "jwt-future-exp-as-a-string", "jwt-nbf-as-a-string"])
def test_jwt_date_as_a_string(leaky, claims, reason):
    token = jwt.encode({"iss": ISSUER, "sub": "mallory", **claims(int(time.time()))}, leaky.signing,
                       algorithm="RS256", headers={"kid": "k1"})
    status, body, headers = request(leaky.port, "GET", "/jwt/x", headers={"authorization": f"Bearer {token}"})
    assert (status, body["error"], body["reason"]) == (401, "invalid_token", reason)
    assert headers["content-type"] == "application/json"


@pytest.fixture(scope="module")
def announced(tmp_path_factory):
    """A gateway and one sidecar, both on mDNS (the gateway on 127.x.y.1, the sidecar on its address)."""
    m = Mesh(tmp_path_factory.mktemp("mdns"), {})
    m.write(sidecar_config(f"{m.net}.1"))
    try:
        m.instance = m.start_instances({"service": "catalog"})[0]
        m.start_gateway()
        m.wait_instances(1)
        yield m
    finally:
        m.stop()


def udp_sockets(pids: set[int]) -> list[str]:
    """Local addresses of the UDP sockets these processes hold, from `ss -ulpn`."""
    out = subprocess.run(["ss", "-ulpnH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append(line.split()[3])
    return found


@pytest.mark.parametrize("proxy", ["gateway", "sidecar"])
def test_mdns_on_every_interface(announced, proxy):
    if proxy == "sidecar":
        pids, address = {announced.instance.sidecar.pid}, announced.instance.inst.sidecar.address
    else:
        log = announced.children["gateway"].log.read_text()
        pids, address = {int(p) for p in re.findall(r"worker \d+ started, pid (\d+)", log)}, f"{announced.net}.1"
    assert pids
    bound = udp_sockets(pids)
    mdns = sorted(set(a for a in bound if a.endswith(":5353")))
    assert mdns == sorted({f"{address}:5353", "224.0.0.251:5353"}), bound
    assert not [a for a in bound if a.startswith(("0.0.0.0:", "*:", "[::]:"))], bound
