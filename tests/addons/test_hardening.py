"""Edge hardening addons: IP filter, CORS, size limits, security headers, authz by claims."""

from __future__ import annotations

import json

from mesh.policies import apikeys

KEY = "mk_hardening_test_key_0123456789"


def config(port: int) -> str:
    return f"""
version: 1
gateway:
  listeners:
    - name: public
      port: 18080
      ip_filter: {{allow: [127.0.0.0/8, 10.0.0.0/8], deny: [10.6.6.0/24]}}
    - {{name: other, port: 18081}}
  policies: [defaults]
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}}}
routes:
  - name: app
    match: {{path: {{prefix: /app/}}, methods: [GET, POST]}}
    forward: {{service: users}}
    policies: [browser, small]
  - name: keyed
    match: {{path: {{prefix: /keyed/}}}}
    forward: {{service: users}}
    policies: [keys, gold-only]
  - name: plain
    match: {{path: {{prefix: /}}}}
    forward: {{service: users}}
policies:
  defaults:
    security_headers: {{}}
    size_limit: {{max_body: 64KiB}}
  browser:
    cors:
      allow_origins: [https://app.example.com, "https://*.example.org"]
      allow_methods: [GET, POST]
      expose_headers: [x-request-id]
      allow_credentials: true
  small:
    size_limit: {{max_body: 10B, max_headers: 2KiB}}
    security_headers: {{hsts: null, frame_options: SAMEORIGIN, headers: {{x-app: demo}}}}
  keys:
    api_key:
      consumers:
        acme: {{key_sha256: {apikeys.digest(KEY)}, claims: {{tier: gold}}}}
        bob: {{key_sha256: {apikeys.digest(KEY + "-bob")}, claims: {{tier: silver}}}}
  gold-only:
    authz: {{deny: [{{methods: [DELETE]}}], allow: [{{claims: {{tier: [gold]}}}}]}}
"""


def body(flow) -> dict:
    return json.loads(flow.response.content)


async def test_ip_filter_per_listener(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users)) as gw:
        assert (await gw.send("/x", listener=18080, client="10.1.1.1")).response.status_code == 200
        flow = await gw.send("/x", listener=18080, client="10.6.6.7")
        assert flow.response.status_code == 403
        assert body(flow)["reason"] == "client address 10.6.6.7 is in the deny list (10.6.6.0/24)"
        flow = await gw.send("/x", listener=18080, client="192.0.2.1")
        assert (flow.response.status_code, body(flow)["error"]) == (403, "ip_denied")
        assert (await gw.send("/x", listener=18081, client="192.0.2.1")).response.status_code == 200


async def test_cors_preflight_is_answered_before_auth_and_by_the_real_requests_route(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users)) as gw:
        pre = {"origin": "https://app.example.com", "access-control-request-method": "POST",
               "access-control-request-headers": "content-type, authorization"}
        flow = await gw.send("/app/x", method="OPTIONS", headers=pre)
        assert flow.response.status_code == 204
        h = flow.response.headers
        assert h["access-control-allow-origin"] == "https://app.example.com" and h["vary"] == "Origin"
        assert h["access-control-allow-methods"] == "GET, POST"
        assert h["access-control-allow-headers"] == "content-type, authorization"
        assert h["access-control-allow-credentials"] == "true" and h["access-control-max-age"] == "600"
        flow = await gw.send("/app/x", method="OPTIONS", headers={**pre, "origin": "https://a.b.example.org"})
        assert flow.response.status_code == 204
        flow = await gw.send("/app/x", method="OPTIONS", headers={**pre, "origin": "https://evil.example"})
        assert (flow.response.status_code, body(flow)["error"]) == (403, "cors_denied")
        flow = await gw.send("/app/x", method="OPTIONS", headers={**pre, "access-control-request-method": "PUT"})
        # PUT /app/x would take route plain, which has no CORS policy: its upstream answers
        assert flow.response.status_code == 200 and body(flow)["method"] == "OPTIONS"
        assert "access-control-allow-origin" not in flow.response.headers
        flow = await gw.send("/app/x", headers={"origin": "https://app.example.com"})
        assert flow.response.status_code == 200
        assert flow.response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert flow.response.headers["access-control-expose-headers"] == "x-request-id"
        flow = await gw.send("/app/x", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in flow.response.headers


async def test_size_limits(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users)) as gw:
        flow = await gw.send("/app/x", method="POST", body=b"0123456789A")
        assert flow.response.status_code == 413
        assert body(flow)["reason"] == "request body of 11 bytes exceeds the limit of 10"
        assert (await gw.send("/app/x", method="POST", body=b"0123456789")).response.status_code == 200
        flow = await gw.send("/app/x", headers={"x-big": "v" * 3000})
        assert (flow.response.status_code, body(flow)["error"]) == (431, "headers_too_large")
        # the gateway-wide default applies where a route sets no limit of its own
        assert (await gw.send("/x", method="POST", body=b"x" * 65537)).response.status_code == 413
        assert (await gw.send("/x", method="POST", body=b"x" * 65536)).response.status_code == 200


async def test_security_headers(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users)) as gw:
        h = (await gw.send("/x", tls=True)).response.headers
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "no-referrer"
        assert h["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        assert "strict-transport-security" not in (await gw.send("/x")).response.headers  # HTTPS only
        h = (await gw.send("/app/x", tls=True)).response.headers
        assert h["x-frame-options"] == "SAMEORIGIN" and h["x-app"] == "demo"
        assert "strict-transport-security" not in h
        h = (await gw.send("/nowhere", host="other.test", tls=True, listener=18081)).response.headers
        assert h["x-frame-options"] == "DENY"  # the proxy's own answers get them too


async def test_authz_by_consumer_claims(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users)) as gw:
        assert (await gw.send("/keyed/x", headers={"x-api-key": KEY})).response.status_code == 200
        flow = await gw.send("/keyed/x", headers={"x-api-key": KEY + "-bob"})
        assert flow.response.status_code == 403
        assert body(flow) | {"request_id": ""} == {
            "error": "access_denied", "reason": "no allow rule of route keyed matches a caller without mTLS identity",
            "request_id": ""}
        flow = await gw.send("/keyed/x", method="DELETE", headers={"x-api-key": KEY})
        assert body(flow)["reason"] == "denied by deny rule 0 of route keyed"
