"""Forging the headers only the proxy sets (verified claims, the consumer, X-Forwarded-*, the request
id, a transform's), two ways: nominating the proxy's own header in `Connection` so that the header
is removed on its way upstream (RFC 9110 §7.6.1), and spelling it with underscores, which a CGI or
WSGI upstream (wsgiref, uWSGI) reads as the real one (`X_Authenticated_Userid` is
HTTP_X_AUTHENTICATED_USERID). Each attack goes to a real gateway and a real sidecar inbound, over
both HTTP/1.1 engines and, at the gateway, HTTP/2; each asserts what the echo app received, read
as a WSGI server would read it."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from mesh.policies import apikeys

from .conftest import H2, assert_refused, request, targets

ISSUER = "https://idp.test"
KEY = "mk_live_acme_0123456789abcdefghij"
SIGNING = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROUTES = [
    {"name": "jwt", "match": {"path": {"prefix": "/jwt/"}}, "forward": {"service": "edge-echo"},
     "policies": ["tokens"]},
    {"name": "keys", "match": {"path": {"prefix": "/keys/"}}, "forward": {"service": "edge-echo"},
     "policies": ["partners"]},
    {"name": "public", "match": {"path": {"prefix": "/public/"}}, "forward": {"service": "edge-echo"}},
    {"name": "stamp", "match": {"path": {"prefix": "/stamp/"}}, "forward": {"service": "edge-echo"},
     "policies": ["stamp"]},
]
POLICIES = {
    "tokens": {"jwt": {"issuer": ISSUER, "jwks_file": "jwks.json",
                       "forward_claims": {"sub": "x-authenticated-userid", "scope": "x-authenticated-scope"}}},
    "partners": {"api_key": {"consumers": {"acme": {"key_sha256": apikeys.digest(KEY)}}}},
    "stamp": {"transform": {"request": {"set": {"headers": {"x-user": "gateway"}}}}},
}


def token() -> str:
    return jwt.encode({"iss": ISSUER, "sub": "mallory", "scope": "users:read", "exp": int(time.time()) + 600},
                      SIGNING, algorithm="RS256", headers={"kid": "k1"})


def start(tmp, engine: str = "standard", http: dict | None = None):
    jwk = {**RSAAlgorithm.to_jwk(SIGNING.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    return targets(tmp, engine=engine, tls=True, http=http, routes=ROUTES, policies=POLICIES)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, engine):
    with start(tmp_path_factory.mktemp("forged"), engine) as m:
        yield m


def environ(headers: list[list[str]]) -> dict[str, str]:
    """The request headers as a WSGI server puts them in `environ` (wsgiref's way: `-` and `_` are
    both `_`, upper case, repeated names joined with a comma)."""
    env: dict[str, str] = {}
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        env[key] = f"{env[key]},{value}" if key in env else value
    return env


def received(target, path: str, fields: list[tuple[str, str]]) -> dict[str, str]:
    """Send one request with these header fields (any spelling, repeated names kept), and what the
    app behind `target` received, as a WSGI environ."""
    reply = target.send(raw(path, fields))
    assert reply.status == 200, reply.raw[:300]
    return environ(reply.json["headers"])


def raw(path: str, fields: list[tuple[str, str]]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in [("Host", "x"), *fields])
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode("latin-1")


# -- Connection nominates the proxy's own headers ---------------------------------------------------

def test_connection_nominates_the_jwt_claim_headers(mesh):
    env = received(mesh.targets["gateway"], "/jwt/x", [
        ("Authorization", f"Bearer {token()}"),
        ("Connection", "close, x-authenticated-userid, x-authenticated-scope")])
    assert env["HTTP_X_AUTHENTICATED_USERID"] == "mallory"
    assert env["HTTP_X_AUTHENTICATED_SCOPE"] == "users:read"


def test_connection_nominates_the_claims_and_x_forwarded_for_as_reported(mesh):
    """The report's request: refused, as Envoy refuses a nominated X-Forwarded-For."""
    target = mesh.targets["gateway"]
    before = target.hits()
    reply = target.send(request("GET", "/jwt/x", {
        "Authorization": f"Bearer {token()}",
        "Connection": "close, x-authenticated-userid, x-authenticated-scope, x-forwarded-for"}))
    body = assert_refused(reply, 400, "invalid_header")
    assert "x-forwarded-for" in body["reason"]
    assert target.hits() == before


def test_connection_nominates_the_consumer_header(mesh):
    env = received(mesh.targets["gateway"], "/keys/x", [("x-api-key", KEY), ("Connection", "x-consumer")])
    assert env["HTTP_X_CONSUMER"] == "acme"


def test_connection_nominates_a_transform_set_header(mesh):
    env = received(mesh.targets["gateway"], "/stamp/x", [("x-user", "admin"), ("Connection", "x-user")])
    assert env["HTTP_X_USER"] == "gateway"


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_connection_nominates_the_request_id(mesh, where):
    target = mesh.targets[where]
    reply = target.send(request("GET", "/app/x", {"X-Request-Id": "forged-id", "Connection": "x-request-id"}))
    assert reply.status == 200, reply.raw[:300]
    env = environ(reply.json["headers"])
    assert env["HTTP_X_REQUEST_ID"] == reply.header("x-request-id") != "forged-id"


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("nominated", ["x-forwarded-for", "X-Forwarded-Proto", "x-forwarded-host"])
def test_connection_nominates_an_x_forwarded_header(mesh, where, nominated):
    """Without X-Forwarded-Proto a sidecar would set it from its own mTLS connection: a plain-HTTP
    client would look like https. Envoy refuses these nominations; so does mitmesh."""
    target = mesh.targets[where]
    before = target.hits()
    reply = target.send(request("GET", "/app/x", {"Connection": f"close, {nominated}"}), until_closed=True)
    assert_refused(reply, 400, "invalid_header")
    assert reply.closed and target.hits() == before


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_connection_still_removes_what_the_client_nominates(mesh, where):
    """RFC 9110 §7.6.1 still holds for the client's own headers, and `close` still closes."""
    target = mesh.targets[where]
    reply = target.send(request("GET", "/app/x", {"X-Hop": "1", "X-End": "2", "Connection": "close, x-hop"}),
                        until_closed=True)
    env = environ(reply.json["headers"])
    assert "HTTP_X_HOP" not in env and env["HTTP_X_END"] == "2" and "HTTP_CONNECTION" not in env
    assert reply.closed


# -- underscores: a spelling a CGI/WSGI upstream reads as the proxy's header --------------------------

def test_underscore_claim_header_beside_a_valid_jwt(mesh):
    env = received(mesh.targets["gateway"], "/jwt/x", [("Authorization", f"Bearer {token()}"),
                                                        ("X_Authenticated_Userid", "admin")])
    assert env["HTTP_X_AUTHENTICATED_USERID"] == "mallory"


def test_underscore_claim_header_with_the_real_one_nominated(mesh):
    env = received(mesh.targets["gateway"], "/jwt/x", [
        ("Authorization", f"Bearer {token()}"), ("X_Authenticated_Userid", "admin"),
        ("Connection", "x-authenticated-userid")])
    assert env["HTTP_X_AUTHENTICATED_USERID"] == "mallory"


def test_underscore_consumer_header_on_a_public_route(mesh):
    env = received(mesh.targets["gateway"], "/public/x", [("x_consumer", "bigcorp")])
    assert "HTTP_X_CONSUMER" not in env


def test_underscore_transform_set_header(mesh):
    env = received(mesh.targets["gateway"], "/stamp/x", [("x_user", "admin")])
    assert env["HTTP_X_USER"] == "gateway"


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("name", ["X_Forwarded_For", "x_forwarded_for", "X-Forwarded_For"])
def test_underscore_x_forwarded_for_spoofs_the_client_address(mesh, where, name):
    env = received(mesh.targets[where], "/app/x", [(name, "10.0.0.1")])
    assert "10.0.0.1" not in env["HTTP_X_FORWARDED_FOR"] and "," not in env["HTTP_X_FORWARDED_FOR"]


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
@pytest.mark.parametrize("name", ["X_Forwarded_Proto", "x_request_id", "X_User"])
def test_underscore_header_never_reaches_the_app(mesh, where, name):
    reply = mesh.targets[where].send(raw("/app/x", [(name, "forged")]))
    assert reply.status == 200 and all("_" not in k for k, _ in reply.json["headers"])
    assert environ(reply.json["headers"]).get("HTTP_" + name.upper()) != "forged"


def test_underscore_claim_header_over_http2(mesh):
    client = H2(mesh.targets["gateway-tls"])
    try:
        sid = client.headers("/jwt/x", extra=(("authorization", f"Bearer {token()}"),
                                              ("x_authenticated_userid", "admin"), ("x_consumer", "bigcorp")))
        status, _, body = client.response(sid)
    finally:
        client.close()
    assert status == 200, body[:300]
    env = environ(json.loads(body)["headers"])
    assert env["HTTP_X_AUTHENTICATED_USERID"] == "mallory" and "HTTP_X_CONSUMER" not in env


# -- the other two actions: ALLOW still never lets a claim through; REJECT_REQUEST answers 400 -----

@pytest.fixture(scope="module", params=["ALLOW", "REJECT_REQUEST"])
def action(request, tmp_path_factory):
    with start(tmp_path_factory.mktemp("underscores"), http={
            "headers_with_underscores_action": request.param}) as m:
        yield request.param, m


def test_underscore_claim_headers_where_underscores_are_allowed_or_refused(action):
    name, m = action
    gateway = m.targets["gateway"]
    fields = [("Authorization", f"Bearer {token()}"), ("X_Authenticated_Userid", "admin"),
              ("x_consumer", "bigcorp"), ("X-Authenticated_Scope", "admin:all")]
    if name == "REJECT_REQUEST":
        before = gateway.hits()
        assert_refused(gateway.send(raw("/jwt/x", fields)), 400, "invalid_header")
        assert gateway.hits() == before
        return
    reply = gateway.send(raw("/jwt/x", fields))
    env = environ(reply.json["headers"])
    assert env["HTTP_X_AUTHENTICATED_USERID"] == "mallory" and "HTTP_X_CONSUMER" not in env
    assert env["HTTP_X_AUTHENTICATED_SCOPE"] == "users:read"


@pytest.mark.parametrize("where", ["gateway", "sidecar"])
def test_underscore_header_where_underscores_are_allowed_or_refused(action, where):
    name, m = action
    target = m.targets[where]
    reply = target.send(raw("/app/x", [("X_Forwarded_For", "10.0.0.1")]))
    if name == "REJECT_REQUEST":
        body = assert_refused(reply, 400, "invalid_header")
        assert body["reason"] == ("header name 'X_Forwarded_For' holds an underscore "
                                  "(headers_with_underscores_action: REJECT_REQUEST)")
    else:  # ALLOW: what the operator chose (Envoy's default); an app reading XFF should not trust it
        assert reply.status == 200 and ["x_forwarded_for", "10.0.0.1"] in reply.json["headers"]


def test_underscore_header_refused_over_http2(action):
    name, m = action
    client = H2(m.targets["gateway-tls"])
    try:
        sid = client.headers("/app/x", extra=(("x_user", "admin"),))
        status, _, body = client.response(sid)
    finally:
        client.close()
    if name == "REJECT_REQUEST":
        assert status == 400 and json.loads(body)["error"] == "invalid_header"
    else:
        assert status == 200 and ["x_user", "admin"] in json.loads(body)["headers"]
