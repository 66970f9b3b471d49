"""The demo is secure by default: the repository's mesh.yaml through `mitmesh up` (on free ports).
No charge without a JWT scope, no route skipping another route's check of the same service, and
payments' sidecar letting the gateway do nothing but POST /charge."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.parse

import pytest

from mesh.security import pki
from mesh.policies.httpclient import basic_auth
from tools.testbed import get

from .peers import https, tls_context

pytestmark = pytest.mark.e2e

MITMESH = [sys.executable, "-m", "mesh.cli"]
DEMO_KEY = "mk_demo_acme_7Qx2Lr9VfT3pWz8K"


def token(demo, client: str = "demo-app", secret: str = "demo-secret", scope: str | None = None) -> str:
    form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    status, body, _ = get(demo["url"] + "/oauth/token", data=urllib.parse.urlencode(form).encode(),
                          headers={"authorization": basic_auth(client, secret)})
    assert status == 200, body
    return body["access_token"]


def bearer(value: str) -> dict:
    return {"authorization": f"Bearer {value}"}


def charge(demo, headers: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    status, body, _ = get(demo["url"] + "/payments/charge", data=b'{"amount": 5}' if method == "POST" else None,
                          headers=headers, method=method)
    return status, body


def test_charge_without_credentials(demo):
    status, body = charge(demo)
    assert (status, body["error"]) == (401, "missing_credentials") and body.get("status") != "charged"


@pytest.mark.parametrize("credential, expected", [
    ("jwt-without-payments-charge", (403, "insufficient_scope")),
    ("opaque-token", (401, "invalid_token")),
    ("partner-api-key", (401, "missing_credentials")),
], ids=["charge-with-a-token-lacking-the-scope", "charge-with-an-opaque-token",
        "charge-with-a-partner-api-key"])
def test_charge_with_weaker_credentials(demo, credential, expected):
    headers = {"jwt-without-payments-charge": bearer(token(demo, scope="users:read orders:write")),
               "opaque-token": bearer(token(demo, "legacy-app", "legacy-secret")),
               "partner-api-key": {"x-api-key": DEMO_KEY}}[credential]
    status, body = charge(demo, headers)
    assert (status, body["error"]) == expected, body
    status, body = charge(demo, bearer(token(demo, scope="payments:charge")))  # what it takes
    assert (status, body["status"]) == (200, "charged")


def test_charge_through_another_method(demo):
    status, body = charge(demo, bearer(token(demo)), method="GET")
    assert (status, body["error"]) == (404, "no_route")


@pytest.mark.parametrize("path", ["/users/alice", "/users/alice/charge", "/users"],
                         ids=["users-skips-jwt-of-secure-users", "users-charge-skips-jwt", "users-list-skips-jwt"])
def test_users_route_skips_the_jwt_check(demo, path):
    status, body, _ = get(demo["url"] + path, data=b"{}" if path.endswith("charge") else None)
    assert (status, body["error"]) == (401, "missing_credentials")


@pytest.mark.parametrize("path", ["/users/alice", "/secure/users/alice"])
def test_users_with_a_token_lacking_users_read(demo, path):
    headers = bearer(token(demo, scope="orders:write"))
    status, body, _ = get(demo["url"] + path, headers=headers)
    assert (status, body["error"]) == (403, "insufficient_scope")
    status, body, _ = get(demo["url"] + path, headers=bearer(token(demo, scope="users:read")))
    assert (status, body["user"]["name"]) == (200, "Alice")


def test_catalog_route_skips_the_partner_api_key(demo, tmp_path):
    """The partner route that wanted an API key in front of the otherwise open catalog is gone, and
    `mitmesh validate` names such a layout."""
    assert get(demo["url"] + "/partner/catalog/items/1", headers={"x-api-key": DEMO_KEY})[0] == 404
    clean = subprocess.run(MITMESH + ["validate", str(demo["config"])], capture_output=True, text=True)
    assert (clean.returncode, clean.stdout) == (0, "ok\n")
    text = demo["config"].read_text().replace("\npolicies:\n", """
  - name: partner-catalog
    match: {path: {prefix: /partner/catalog/}}
    forward: {service: catalog, version: v1, rewrite: {prefix: /}}
    policies: [partner-keys, public]

policies:
""", 1)
    old = demo["config"].with_name("partner.yaml")  # beside the demo's: its certificate paths resolve
    old.write_text(text)
    out = subprocess.run(MITMESH + ["validate", str(old)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.endswith("ok\n")
    line = text.splitlines().index("  - name: partner-catalog") + 1
    warnings = [w for w in out.stdout.splitlines() if "warning" in w]
    assert len(warnings) == 5  # catalog-api, catalog-canary, catalog-beta, catalog, load
    assert re.match(rf"{old}:\d+: routes\[2\]: warning: route catalog-api exposes service catalog without "
                    rf"authentication, but route partner-catalog \(line {line}\) requires an API key: a "
                    rf"caller can skip that check through route catalog-api$", warnings[0]), warnings[0]


@pytest.mark.parametrize("headers, expected", [
    ({}, (401, "missing_credentials")),
    ({"x-api-key": "mk_demo_acme_guessed00000"}, (401, "invalid_api_key")),
], ids=["order-without-credentials", "order-with-a-guessed-api-key"])
def test_order_without_valid_credentials(demo, headers, expected):
    status, body, _ = get(demo["url"] + "/orders", data=b'{"item_id": 1}', headers=headers)
    assert (status, body["error"]) == expected
    status, body, _ = get(demo["url"] + "/orders", data=b'{"item_id": 1}', headers={"x-api-key": DEMO_KEY})
    assert status == 200 and body["order"]["payment"] and body["caller"] == "acme"


def payments_inbound(demo) -> tuple[str, int]:
    found = re.search(r"sidecar: payments-v1-\d+ inbound https://([\d.]+):(\d+)", demo["log"].read_text())
    return found.group(1), int(found.group(2))


@pytest.mark.parametrize("method, path", [("GET", "/charge"), ("POST", "/refund"), ("DELETE", "/charge")],
                         ids=["gateway-identity-reads-payments", "gateway-identity-refunds",
                              "gateway-identity-deletes-a-charge"])
def test_gateway_identity_beyond_charge(demo, method, path):
    """Whoever holds the gateway's identity reaches payments only as the gateway's routes do."""
    certs = demo["tmp"] / "certs"
    context = tls_context(pki.mesh_ca_cert(certs), tuple(map(str, pki.workload_paths(certs, "gateway"))))
    host, port = payments_inbound(demo)
    status, body = https(host, port, context, method, path, b'{"amount": 1}')
    assert (status, body["error"]) == (403, "access_denied"), body
    status, body = https(host, port, context, "POST", "/charge", b'{"amount": 1}')
    assert (status, body["status"]) == (200, "charged")


def test_users_app_charges_through_its_sidecar(demo):
    status, body, _ = get(demo["url"] + "/users/alice/charge", data=b"{}", headers=bearer(token(demo)))
    assert (status, body["upstream"]["error"]) == (403, "access_denied")
