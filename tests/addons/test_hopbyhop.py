"""HopByHop: what a client's Connection header nominates goes as the request is received, so the
headers the gateway sets later (consumer, X-Forwarded-*, request id, a transform's) reach the
upstream; refused nominations are JSON 400s."""

from __future__ import annotations

import hashlib
import json

from addons import keys

KEY = "mk_test_acme_0123456789abcdef"


def config(port: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  api: {{versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}}}
routes:
  - name: keyed
    match: {{path: {{prefix: /keyed/}}}}
    forward: {{service: api}}
    policies: [partner, stamp]
policies:
  partner: {{api_key: {{consumers: {{acme: {{key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}}}}}}}
  stamp: {{transform: {{request: {{set: {{headers: {{x-user: "$(claims.consumer|nobody)"}}}}}}}}}}
"""


async def test_nominations_never_remove_what_the_gateway_sets(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port)) as gw:
        flow = await gw.send("/keyed/x", headers={
            "x-api-key": KEY, "x-request-id": "client-id", "x-a": "1",
            "connection": "close, x-consumer, x-user, x-request-id, x-a"})
        assert flow.response.status_code == 200
        seen = json.loads(flow.response.content)["headers"]
        assert seen["x-consumer"] == "acme" and seen["x-user"] == "acme" and "x-a" not in seen
        rid = keys.get(flow).request_id
        assert seen["x-request-id"] == rid != "client-id"  # the client's went with its nomination
        assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-host"] == "example.com"
        assert keys.get(flow).decisions[0] == (
            "hopbyhop", "removed x-a, x-consumer, x-request-id, x-user: nominated by the client's "
                        "Connection header (RFC 9110 §7.6.1)")
        assert flow.request.headers["connection"] == "close"  # what mitmproxy's HTTP/1 layer reads


async def test_host_nominated_is_kept_and_routed_by(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port)) as gw:
        flow = await gw.send("/keyed/x", host="api.example", headers={"x-api-key": KEY, "connection": "host"})
        assert flow.response.status_code == 200
        assert json.loads(flow.response.content)["headers"]["host"] == "api.example"
        assert ("hopbyhop", "kept host though Connection nominates it: the proxy routes and frames by it, "
                            "and sends its own upstream") in keys.get(flow).decisions


async def test_nominating_x_forwarded_for_is_refused_as_envoy_does(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port)) as gw:
        flow = await gw.send("/keyed/x", headers={"x-api-key": KEY, "x-forwarded-for": "10.0.0.1",
                                                  "connection": "close, x-forwarded-for"})
        body = json.loads(flow.response.content)
        assert flow.response.status_code == 400 and body["error"] == "invalid_header"
        assert body["reason"] == ("Connection nominates 'x-forwarded-for', which the proxy does not "
                                  "remove (RFC 9110 §7.6.1)")
        assert body["request_id"] == flow.response.headers["x-request-id"]
        assert keys.get(flow).route is None  # before routing, never forwarded
