"""The demo's security end to end through `mitmesh up`: the repository's mesh.yaml on free ports,
with its demo IdP, API keys, opaque and JWT tokens, the mTLS listener and edge hardening."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
import urllib.parse
import urllib.request

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from mesh.policies.httpclient import basic_auth

from .conftest import get

DEMO_KEY = "mk_demo_acme_7Qx2Lr9VfT3pWz8K"  # the key whose SHA-256 mesh.yaml holds


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def post_form(url: str, form: dict, client: str, secret: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(),
                                 headers={"authorization": basic_auth(client, secret)})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def token(demo, client: str, secret: str) -> str:
    status, body = post_form(demo["url"] + "/oauth/token", {"grant_type": "client_credentials"}, client, secret)
    assert status == 200, body
    return body["access_token"]


def test_api_keys_and_opaque_tokens(demo):
    status, body, headers = get(demo["url"] + "/orders", headers={"x-api-key": DEMO_KEY})
    assert (status, body["service"], body["caller"]) == (200, "orders", "acme")
    assert headers["x-content-type-options"] == "nosniff"  # the demo's hardening defaults
    status, body, headers = get(demo["url"] + "/orders")
    assert (status, body["error"]) == (401, "missing_credentials")
    assert headers["www-authenticate"] == 'Bearer realm="orders", ApiKey realm="orders", header="x-api-key"'
    assert get(demo["url"] + "/orders", headers={"x-api-key": "mk_guess"})[0] == 401

    opaque = token(demo, "legacy-app", "legacy-secret")
    assert "." not in opaque
    for _ in range(3):  # the first is introspected, the others come from the cache
        status, body, _ = get(demo["url"] + "/secure/users/alice", headers={"authorization": f"Bearer {opaque}"})
        assert (status, body["user"]["name"], body["caller"]) == (200, "Alice", "legacy-app")
    stats = json.load(urllib.request.urlopen(demo["idp"] + "/__stats", timeout=5))
    assert stats["introspections"] == 1
    status, body, _ = get(demo["url"] + "/secure/users/alice", headers={"authorization": "Bearer made-up"})
    assert (status, body["reason"]) == (401, "token is not active")


def test_jwts_bad_tokens_and_key_rotation(demo):
    url = demo["url"] + "/secure/users/bob"
    good = token(demo, "demo-app", "demo-secret")
    status, body, _ = get(url, headers={"authorization": f"Bearer {good}"})
    assert (status, body["caller"]) == (200, "demo-app")

    jwks = json.load(urllib.request.urlopen(demo["idp"] + "/.well-known/jwks.json", timeout=5))
    public = RSAAlgorithm.from_jwk(jwks["keys"][0])
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    confused_head = b64(json.dumps({"alg": "HS256", "kid": jwks["keys"][0]["kid"]}).encode())
    confused = f"{confused_head}.{payload}." + b64(hmac.new(pem, f"{confused_head}.{payload}".encode(),
                                                             hashlib.sha256).digest())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "alg none": f"{b64(json.dumps({'alg': 'none'}).encode())}.{payload}.",
        "tampered": f"{head}.{b64(json.dumps({**claims, 'scope': 'admin'}).encode())}.{sig}",
        "unknown kid": jwt.encode(claims, other, algorithm="RS256", headers={"kid": "nope"}),
        "HS256 with the public key": confused,
        "malformed base64": "eyJ!!.e30.x",
        "100 KB": "eyJhbGciOiJSUzI1NiJ9." + "A" * 100_000 + ".sig",
    }
    for name, value in bad.items():
        status, body, headers = get(url, headers={"authorization": f"Bearer {value}"})
        assert status == 401 and body["error"] == "invalid_token" and body["reason"], (name, status, body)
        assert headers["www-authenticate"].startswith('Bearer realm="secure-users"')

    rotated = json.load(urllib.request.urlopen(urllib.request.Request(demo["idp"] + "/__rotate", method="POST"),
                                               timeout=5))
    time.sleep(0.6)  # unknown_kid_refresh of this config
    new = token(demo, "demo-app", "demo-secret")
    assert jwt.get_unverified_header(new)["kid"] == rotated["kid"]
    for t in (new, good):
        status, body, _ = get(url, headers={"authorization": f"Bearer {t}"})
        assert status == 200, body


def test_cors_preflight_and_mtls_listener(demo):
    req = urllib.request.Request(demo["url"] + "/secure/users/alice", method="OPTIONS", headers={
        "origin": "http://localhost:3000", "access-control-request-method": "GET",
        "access-control-request-headers": "authorization"})
    with urllib.request.urlopen(req, timeout=5) as r:  # answered before authentication
        assert r.status == 204 and r.headers["access-control-allow-origin"] == "http://localhost:3000"

    certs = demo["tmp"] / "certs"
    for name, expected in (("orders", 200), ("users", 403)):
        context = ssl.create_default_context(cafile=str(certs / "edge-ca.pem"))
        context.load_cert_chain(str(certs / "workload" / f"{name}.pem"), str(certs / "workload" / f"{name}.key"))
        req = urllib.request.Request(f"https://127.0.0.1:{demo['mtls']}/internal/payments/charge",
                                     data=b'{"amount": 3}', method="POST")
        try:
            with urllib.request.urlopen(req, context=context, timeout=5) as r:
                status, body = r.status, json.load(r)
        except urllib.error.HTTPError as e:
            status, body = e.code, json.load(e)
        assert status == expected, body
        if status == 200:
            assert body["status"] == "charged"
    assert "renewed workload certificate gateway (missing)" in demo["log"].read_text()
    assert get(demo["url"] + "/internal/payments/charge", data=b'{"amount": 3}')[0] == 403


def test_demo_sidecars_only_orders_may_call_payments(demo):
    """mesh.yaml's services are STRICT mTLS and payments' sidecar admits orders (and the gateway
    for POST /charge): an order charges through payments; users' app calling payments through its
    sidecar gets 403."""
    bearer = {"authorization": f"Bearer {token(demo, 'demo-app', 'demo-secret')}"}
    status, body, _ = get(demo["url"] + "/orders", data=b'{"item_id": 3, "quantity": 1}', headers=bearer)
    assert status == 200 and body["order"]["payment"], body
    status, body, _ = get(demo["url"] + "/users/alice/charge", data=b"{}", headers=bearer)
    assert (status, body["upstream"]["error"]) == (403, "access_denied"), body
    assert body["upstream"]["reason"] == ("no allow rule of service payments matches peer "
                                          "spiffe://mitmesh.local/ns/demo/sa/users")
