"""The decision log reads as a complete explanation: of a retried, a rate-limited and a denied
request (and each refusal is counted in the metrics)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import REGISTRY

from addons import keys


def config(bad: int, good: int) -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  cat:
    versions: {{v1: {{endpoints: ["127.0.0.1:{bad}", "127.0.0.1:{good}"]}}}}
    lb: {{policy: round_robin}}
routes:
  - name: retried
    match: {{path: {{prefix: /retried}}}}
    forward: {{service: cat}}
    policies: [retries]
  - name: limited
    match: {{path: {{prefix: /limited}}}}
    forward: {{service: cat, version: v1}}
    policies: [one-per-minute]
  - name: denied
    match: {{path: {{prefix: /denied}}}}
    forward: {{service: cat}}
    policies: [nobody]
policies:
  retries:
    retries: {{attempts: 2, retry_on: [5xx], backoff: {{base: 1ms, max: 1ms}}}}
  one-per-minute:
    rate_limit: {{minute: 1, key: ip}}
  nobody:
    authz: {{deny: [{{paths: ["/denied*"]}}]}}
"""


def explain(flow) -> str:
    return "\n".join(f"{who}: {what}" for who, what in keys.get(flow).decisions)


def sample(name, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_retried_rate_limited_and_denied_requests_explain_themselves(gateway, upstream_app):
    async def bad(request):
        return web.json_response({"error": "bad"}, status=503)

    ports = (await upstream_app("bad", handler=bad), await upstream_app("good"))
    limited_before = sample("mitmesh_ratelimit_rejections_total", route="limited")
    denied_before = sample("mitmesh_auth_failures_total", reason="access_denied")
    async with gateway(config(*ports)) as gw:
        retried = await gw.send("/retried")
        while retried.response.headers.get("x-mitmesh-attempts") != "2":  # until one met the bad one first
            retried = await gw.send("/retried")
        await gw.send("/limited")
        limited = await gw.send("/limited")
        denied = await gw.send("/denied/x")

    text = explain(retried)
    assert retried.response.status_code == 200
    assert "router: route retried matched GET /retried" in text
    assert f"forward: attempt 1: cat/v1 endpoint 127.0.0.1:{ports[0]} (round_robin) → status 503" in text
    assert "retry: attempt 1 got status 503; retrying after" in text and "on another endpoint (2 of 2)" in text
    assert f"forward: attempt 2: cat/v1 endpoint 127.0.0.1:{ports[1]} (round_robin) → status 200" in text

    text = explain(limited)
    assert limited.response.status_code == 429
    assert "router: route limited matched GET /limited" in text
    assert "ratelimit: ip:127.0.0.1 on route limited: over 1 per minute, retry after 60s" in text
    assert sample("mitmesh_ratelimit_rejections_total", route="limited") == limited_before + 1

    text = explain(denied)
    assert denied.response.status_code == 403
    assert "router: route denied matched GET /denied/x" in text
    assert "authz: denied by deny rule 0 of route denied" in text, text
    assert sample("mitmesh_auth_failures_total", reason="access_denied") == denied_before + 1
    # the same explanations travel with the flows (mitmweb's Comment tab, saved flows)
    assert denied.comment == "#denied\n" + explain(denied)  # the outcome tag, then one line each
