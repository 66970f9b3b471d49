"""Credential handling: a per-key quota holds however the key is sent and wherever it comes from,
and a credential no one verified never reaches the upstream beside one that was (OWASP API2, API4).
Against a real gateway in front of the echo app (which answers what it received), on both HTTP/1.1
engines; each attack comes from loopback addresses of its own."""

from __future__ import annotations

import json
import socket
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from mesh.policies import apikeys
from mesh.runtime import procs

from .peers import request, running

pytestmark = pytest.mark.e2e

KEY = "mk_live_acme_0123456789abcdefghij"
ISSUER = "https://idp.test"
SIGNING = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def config(tmp, engine: str) -> dict:
    p = procs.free_port
    jwk = {**RSAAlgorithm.to_jwk(SIGNING.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    consumers = {"acme": {"key_sha256": apikeys.digest(KEY)}}

    def route(name: str, *policies: str) -> dict:
        return {"name": name, "match": {"path": {"prefix": f"/{name}/"}},
                "forward": {"service": "echo"}, "policies": list(policies)}

    return {
        "version": 1,
        "gateway": {"listeners": [{"name": "public", "port": p()}], "admin": {"port": p()},
                    "engine": engine},
        "services": {"echo": {"versions": {"v1": {"launch": {"app": "echo"},
                                                  "endpoints": [f"127.0.0.1:{p()}"]}}}},
        # orders as the demo's: a JWT or a partner's key
        "routes": [route("rlkey", "keys", "per-key"), route("rlquery", "keys-or-query", "per-key"),
                   route("orders", "tokens", "keys"),
                   route("passthrough", "tokens-forwarded", "keys-forwarded")],
        "policies": {
            "keys": {"api_key": {"consumers": consumers}},
            "keys-or-query": {"api_key": {"query": "apikey", "consumers": consumers}},
            "keys-forwarded": {"api_key": {"consumers": consumers, "forward_key": True}},
            "per-key": {"rate_limit": {"minute": 3, "key": "api_key"}},
            "tokens": {"jwt": {"issuer": ISSUER, "jwks_file": "jwks.json",
                               "forward_claims": {"sub": "x-authenticated-userid",
                                                  "scope": "x-authenticated-scope"}}},
            "tokens-forwarded": {"jwt": {"issuer": ISSUER, "jwks_file": "jwks.json",
                                         "forward_token": True}},
        },
    }


@pytest.fixture(scope="module", params=["standard", "fast"])
def gateway(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("credentials")
    with running(tmp, config(tmp, request.param)) as m:
        m.port = m.config["gateway"]["listeners"][0]["port"]
        yield m


def upstream_saw(body: dict) -> dict[str, str]:
    return {k: v for k, v in body["headers"]}


def token(key, **claims) -> str:
    return jwt.encode({"iss": ISSUER, "sub": "alice", "exp": int(time.time()) + 60, **claims}, key,
                      algorithm="RS256" if key is SIGNING else "HS256", headers={"kid": "k1"})


@pytest.mark.parametrize("where", ["header", "query"])
def test_per_key_quota_spread_over_source_addresses(gateway, where):
    """One key, three source addresses, 4 requests each: the key's 3 a minute hold in all; the
    decision log names the key's hash, not an address."""
    path, headers = (("/rlkey/x", {"x-api-key": KEY}) if where == "header"
                     else (f"/rlquery/x?apikey={KEY}", {}))
    statuses = [request(gateway.port, "GET", path, headers=headers, source=source)[0]
                for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4") for _ in range(4)]
    assert statuses == [200] * 3 + [429] * 9


def test_forged_bearer_token_beside_a_valid_api_key(gateway):
    forged = token("junk" * 8, sub="admin", scope="payments:charge")
    status, body, _ = request(gateway.port, "GET", "/orders/1", source="127.0.0.5",
                              headers={"x-api-key": KEY, "authorization": f"Bearer {forged}"})
    assert status == 200
    seen = upstream_saw(body)
    assert "authorization" not in seen and "x-api-key" not in seen, seen
    assert seen["x-authenticated-userid"] == "acme" and "x-authenticated-scope" not in seen


def test_api_key_beside_a_valid_jwt(gateway):
    """The symmetric case: a key that is there is checked even beside a valid JWT (a wrong one is
    refused), and an empty one that authenticated nothing is not passed on."""
    valid = token(SIGNING, scope="orders:write")
    status, body, _ = request(gateway.port, "GET", "/orders/1", source="127.0.0.6",
                              headers={"x-api-key": "mk_guess_0001",
                                       "authorization": f"Bearer {valid}"})
    assert (status, body["error"]) == (401, "invalid_api_key")
    status, body, _ = request(gateway.port, "GET", "/orders/1", source="127.0.0.6",
                              headers={"x-api-key": "", "authorization": f"Bearer {valid}"})
    assert status == 200
    seen = upstream_saw(body)
    assert "x-api-key" not in seen and "authorization" not in seen, seen
    assert seen["x-authenticated-userid"] == "alice"


def test_forward_token_keeps_only_a_token_that_authenticated(gateway):
    """forward_token and forward_key keep the credential that verified the caller: a forged token
    beside a valid key (or an empty key beside a valid token) was checked by no one and is not
    passed on, where the upstream would read the forged token's claims as the gateway's word."""
    forged = token("junk" * 8, sub="admin", scope="payments:charge")
    status, body, _ = request(gateway.port, "GET", "/passthrough/1", source="127.0.0.7",
                              headers={"x-api-key": KEY, "authorization": f"Bearer {forged}"})
    assert status == 200
    seen = upstream_saw(body)
    assert "authorization" not in seen and seen["x-api-key"] == KEY, seen
    valid = token(SIGNING)
    status, body, _ = request(gateway.port, "GET", "/passthrough/1", source="127.0.0.7",
                              headers={"x-api-key": "", "authorization": f"Bearer {valid}"})
    assert status == 200
    seen = upstream_saw(body)
    assert "x-api-key" not in seen and seen["authorization"] == f"Bearer {valid}", seen


@pytest.mark.parametrize("path, field, error", [
    ("/rlkey/x", b"X-Api-Key: mk_\xff\xfe", "invalid_api_key"),
    ("/orders/x", b"Authorization: Bearer ab\xffcd.ef.gh", "invalid_token"),
], ids=["api-key-of-bytes-that-are-not-utf8", "bearer-token-of-bytes-that-are-not-utf8"])
def test_credential_bytes_that_are_not_text(gateway, path, field, error):
    """A credential of raw bytes: the 401 of a wrong credential, not an exception (it was a 401
    naming no reason, and a traceback in the log per request)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + field
                  + b"\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), raw[:200]
    assert json.loads(body)["error"] == error
    assert "Traceback" not in gateway.children["gateway"].log.read_text(errors="replace")
