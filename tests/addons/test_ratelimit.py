"""RateLimit: 429 with Retry-After over the limit, RateLimit-* on every response of a limited route
(none with headers: false), keyed by consumer, claim, API key, header or client IP; fail closed
answers 503."""

from __future__ import annotations

import hashlib
import json

import pytest
from aiohttp import web

from addons import keys
from mesh.policies import apikeys
from mesh.runtime import procs


def config(port: int, spec: str, extra: str = "") -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  api: {{versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}}}
routes:
  - {{name: limited, match: {{path: {{prefix: /limited}}}}, forward: {{service: api}}, policies: [rl]}}
  - {{name: free, match: {{path: {{prefix: /free}}}}, forward: {{service: api}}}}
policies:
  rl:
    rate_limit: {spec}{extra}
"""


async def test_over_the_limit_is_json_429_with_retry_after(gateway, upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port, "{minute: 3, key: ip}")) as gw:
        flows = [await gw.send("/limited") for _ in range(4)]
        assert [f.response.status_code for f in flows] == [200, 200, 200, 429]
        assert [f.response.headers["RateLimit-Remaining"] for f in flows] == ["2", "1", "0", "0"]
        assert all(f.response.headers["RateLimit-Limit"] == "3" for f in flows)
        assert flows[0].response.headers["RateLimit-Policy"] == "3;w=60"
        over = flows[-1]
        body = json.loads(over.response.content)
        assert body["error"] == "rate_limited" and body["request_id"] == over.response.headers["x-request-id"]
        assert "3 per minute" in body["reason"]
        assert 1 <= int(over.response.headers["Retry-After"]) <= 60
        assert keys.get(over).decisions[-1][0] == "ratelimit"
        assert over.metadata[keys.RATELIMIT]["RateLimit-Remaining"] == "0"
        free = await gw.send("/free")
        assert free.response.status_code == 200 and "RateLimit-Limit" not in free.response.headers
        other_ip = await gw.send("/limited", client="10.1.1.1")
        assert other_ip.response.status_code == 200


async def test_headers_false_keeps_the_counts_from_clients(gateway, upstream_app):
    # Kong's hide_client_headers: the same counting and 429, no RateLimit-* on any answer; the 429
    # keeps Retry-After, and the decision log and mitmweb's metadata still show the count
    port = await upstream_app("api")
    async with gateway(config(port, "{minute: 2, key: ip, headers: false}")) as gw:
        flows = [await gw.send("/limited") for _ in range(3)]
        assert [f.response.status_code for f in flows] == [200, 200, 429]
        for f in flows:
            ours = [n for n in f.response.headers if n.lower().startswith("ratelimit")]
            assert not ours, f.response.headers
        assert 1 <= int(flows[-1].response.headers["Retry-After"]) <= 60
        assert json.loads(flows[-1].response.content)["error"] == "rate_limited"
        assert flows[0].metadata[keys.RATELIMIT]["RateLimit-Remaining"] == "1"
        decision = ("ratelimit", "ip:127.0.0.1 on route limited: allowed, 0/2 left")
        assert decision in keys.get(flows[1]).decisions
        # an upstream's own RateLimit-* fields are its business: they pass as they came
        async def own_limits(request):
            return web.json_response({}, headers={"RateLimit-Limit": "7"})
        own = await upstream_app("own", handler=own_limits)
    async with gateway(config(own, "{minute: 5, key: ip, headers: false}")) as gw:
        flow = await gw.send("/limited")
        assert flow.response.status_code == 200
        assert flow.response.headers.get_all("RateLimit-Limit") == ["7"]


async def test_ours_replace_an_upstreams_own_fields(gateway, upstream_app):
    """With the fields on (the default), an upstream's own `RateLimit-*` fields (any case) give way
    to ours, one of each; a field that only contains the word (`X-RateLimit-Limit`) is not one."""
    async def own_limits(request):
        return web.json_response({}, headers={"ratelimit-limit": "7", "RateLimit-Policy": "7;w=1",
                                              "X-RateLimit-Limit": "9"})

    async def plain(request):
        return web.json_response({}, headers={"X-RateLimit-Limit": "9"})

    for handler, upstream in ((own_limits, "own"), (plain, "plain")):
        port = await upstream_app(upstream, handler=handler)
        async with gateway(config(port, "{minute: 5, key: ip}")) as gw:
            flow = await gw.send("/limited")
            assert flow.response.status_code == 200
            h = flow.response.headers
            names = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
                     "RateLimit-Policy", "X-RateLimit-Limit")
            assert [h.get_all(n) for n in names] == [
                ["5"], ["4"], [h["RateLimit-Reset"]], ["5;w=60"], ["9"]], (upstream, h)
            assert 0 <= int(h["RateLimit-Reset"]) <= 60


async def test_keys_consumer_claim_api_key_and_header(gateway, upstream_app):
    port = await upstream_app("api")
    for spec, first, second in [
        ("{minute: 1}", dict(principal="alice"), dict(principal="bob")),
        ("{minute: 1, key: claim, claim: org.id}", dict(claims={"org": {"id": "a"}}),
         dict(claims={"org": {"id": "b"}})),
        ("{minute: 1, key: api_key}", dict(credential="api_key:1f2e"),
         dict(credential="api_key:9a8b")),
        ("{minute: 1, key: header, header: x-tenant}", dict(headers={"x-tenant": "t1"}),
         dict(headers={"x-tenant": "t2"})),
    ]:
        async with gateway(config(port, spec)) as gw:
            assert (await gw.send("/limited", **first)).response.status_code == 200
            assert (await gw.send("/limited", **first)).response.status_code == 429, spec
            assert (await gw.send("/limited", **second)).response.status_code == 200, spec
            # without the key, the client IP is counted (as Kong falls back)
            assert (await gw.send("/limited")).response.status_code == 200
            assert (await gw.send("/limited")).response.status_code == 429


async def test_upstream_errors_carry_the_headers_too(gateway):
    dead = procs.free_port()
    async with gateway(config(dead, "{minute: 5, key: ip}")) as gw:
        flow = await gw.send("/limited")
        assert flow.response.status_code == 503 and flow.response.headers["RateLimit-Remaining"] == "4"


async def test_fail_closed_when_redis_is_unreachable(gateway, upstream_app, counters):
    port = await upstream_app("api")
    dead = procs.free_port()
    spec = f"{{minute: 5, key: ip, storage: 'redis://127.0.0.1:{dead}/0', fail_open: false}}"
    async with gateway(config(port, spec)) as gw:
        flow = await gw.send("/limited")
        assert flow.response.status_code == 503
        assert json.loads(flow.response.content)["error"] == "ratelimit_unavailable"
        assert counters["ratelimit_storage_errors"] == 1
    spec = spec.replace("fail_open: false", "fail_open: true")
    async with gateway(config(port, spec)) as gw:
        flow = await gw.send("/limited")
        assert flow.response.status_code == 200 and "RateLimit-Limit" not in flow.response.headers
        assert counters["ratelimit_storage_outages"] == 2  # each gateway saw it go down


KEY, OTHER = "mk_rate_acme_0123456789abcdef", "mk_rate_beta_0123456789abcdef"


def keyed(port: int, spec: str, extra: str = "") -> str:
    """`config` with API keys on the limited route, in the x-api-key header or apikey parameter."""
    return config(port, spec, f"""
    api_key:
      header: x-api-key
      query: apikey{extra}
      consumers:
        acme: {{key_sha256: {apikeys.digest(KEY)}}}
        beta: {{key_sha256: {apikeys.digest(OTHER)}}}""")


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_a_key_limit_counts_the_verified_key_from_any_address(gateway, upstream_app,
                                                                     redis_server, storage):
    """Authn strips the key before the limit counts: the count is the key's as Authn verified it,
    wherever it was sent, never the client's address (and never the key itself)."""
    port = await upstream_app("api")
    where = f", storage: '{redis_server.url}', storage_timeout: 2s" if storage == "redis" else ""
    async with gateway(keyed(port, "{minute: 3, key: api_key%s}" % where)) as gw:
        statuses = []
        for client in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            for i in range(4):
                how = dict(headers={"x-api-key": KEY}) if i % 2 else {}
                path = "/limited" + ("" if i % 2 else f"?apikey={KEY}")
                flow = await gw.send(path, client=client, **how)
                statuses.append(flow.response.status_code)
        assert statuses == [200] * 3 + [429] * 9
        decision = dict(keys.get(flow).decisions)["ratelimit"]
        assert decision.startswith(f"api_key:{apikeys.digest(KEY)[:24]} on route limited"), decision
        assert (await gw.send("/limited", headers={"x-api-key": OTHER})).response.status_code == 200


async def test_a_limit_on_the_key_header_counts_the_verified_key(gateway, upstream_app):
    port = await upstream_app("api")
    for extra in ("", "\n      forward_key: true"):
        async with gateway(keyed(port, "{minute: 2, key: header, header: X-Api-Key}", extra)) as gw:
            key = {"x-api-key": KEY}
            flows = [await gw.send("/limited", client=f"127.0.0.{i}", headers=key) for i in (2, 3, 4)]
            statuses = [f.response.status_code for f in flows]
            assert statuses == [200, 200, 429], extra


async def test_a_key_limit_without_an_api_key_policy_counts_the_address(gateway, upstream_app):
    """No one verified the key: a made-up one per request must not get a fresh quota."""
    port = await upstream_app("api")
    async with gateway(config(port, "{minute: 2, key: api_key}")) as gw:
        flows = [await gw.send("/limited", headers={"x-api-key": f"mk_made_up_{i}"})
                 for i in range(3)]
        statuses = [f.response.status_code for f in flows]
        assert statuses == [200, 200, 429]
        decision = dict(keys.get(await gw.send("/limited")).decisions)["ratelimit"]
        assert decision.startswith("ip:127.0.0.1 on route limited"), decision


async def test_a_limit_on_a_credential_header_no_one_verifies_keeps_no_secret(gateway,
                                                                              upstream_app):
    port = await upstream_app("api")
    async with gateway(config(port, "{minute: 1, key: header, header: authorization}")) as gw:
        flow = await gw.send("/limited", headers={"authorization": "Bearer s3cret-token"})
        decision = dict(keys.get(flow).decisions)["ratelimit"]
        assert "s3cret" not in decision
        hashed = hashlib.sha256(b"Bearer s3cret-token").hexdigest()[:24]
        assert decision.startswith(f"header:{hashed} on route limited"), decision
