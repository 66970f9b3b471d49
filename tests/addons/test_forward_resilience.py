"""Forward's resilience against real loopback upstreams: retries to other endpoints, method rules,
per-try timeouts and deadlines, breakers, the retry budget, outlier ejection and Retry-After."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from addons import keys


def config(ports: list[int], *, policy: str, service: str = "", method_route: str = "") -> str:
    eps = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  cat:
    versions: {{v1: {{endpoints: [{eps}]}}}}
{service}
routes:
  - name: cat
    match: {{path: {{prefix: /}}}}
    forward: {{service: cat}}
    policies: [p]
policies:
  p:
{policy}
"""


def failing(status=503, headers=None, calls=None):
    async def handler(request):
        if calls is not None:
            calls.append(request.path)
        await request.read()
        return web.json_response({"error": "bad"}, status=status, headers=headers)
    return handler


RETRY_5XX = """    retries: {attempts: 3, retry_on: [5xx], backoff: {base: 1ms, max: 5ms}}"""


async def test_retries_go_to_other_endpoints_until_one_answers(gateway, upstream_app):
    bad_calls: list = []
    ports = [await upstream_app("bad", handler=failing(calls=bad_calls)), await upstream_app("good1"),
             await upstream_app("good2")]
    async with gateway(config(ports, policy=RETRY_5XX)) as gw:
        flows = [await gw.send("/x") for _ in range(30)]
    assert all(f.response.status_code == 200 for f in flows)
    retried = [f for f in flows if f.response.headers["x-mitmesh-attempts"] == "2"]
    assert retried and len(bad_calls) == len(retried)  # the bad endpoint never got a second try
    st = keys.get(retried[0])
    assert any(who == "retry" and "attempt 1 got status 503; retrying" in what for who, what in st.decisions)
    assert retried[0].metadata[keys.ATTEMPTS] == 2


async def test_the_attempts_header_is_this_proxys_count_only(gateway, upstream_app):
    """Behind another proxy (a sidecar), the upstream's own x-mitmesh-attempts is replaced, not
    repeated: the client sees one header, the count of the proxy it talks to."""
    async def sidecar_like(request):
        return web.json_response({}, headers={"x-mitmesh-attempts": "1"})

    ports = [await upstream_app("bad", handler=failing()), await upstream_app("ok", handler=sidecar_like)]
    async with gateway(config(ports, policy=RETRY_5XX)) as gw:
        flows = [await gw.send("/x") for _ in range(4)]
    counts = [f.response.headers.get_all("x-mitmesh-attempts") for f in flows]
    assert sorted(counts) == [["1"], ["1"], ["2"], ["2"]], counts


async def test_post_is_not_retried_unless_the_route_opts_in(gateway, upstream_app):
    calls: list = []
    ports = [await upstream_app("bad", handler=failing(calls=calls))]
    ports.append(await upstream_app("bad2", handler=failing(calls=calls)))
    async with gateway(config(ports, policy=RETRY_5XX)) as gw:
        flow = await gw.send("/x", method="POST", body=b"{}")
        assert flow.response.status_code == 503 and len(calls) == 1
    opted = RETRY_5XX.replace("max: 5ms}", "max: 5ms}, non_idempotent: true")
    async with gateway(config(ports, policy=opted)) as gw:
        flow = await gw.send("/x", method="POST", body=b"{}")
        # three tries over two endpoints: each once, then one again (no third endpoint is left)
        assert flow.response.headers["x-mitmesh-attempts"] == "3" and len(calls) == 1 + 3


async def test_per_try_timeout_retries_and_the_deadline_gives_504(gateway, upstream_app):
    async def slow(request):
        await asyncio.sleep(1)
        return web.json_response({})

    ports = [await upstream_app("slow", handler=slow), await upstream_app("fast")]
    policy = RETRY_5XX + "\n    timeout: {request: 2s, per_try: 150ms}"
    async with gateway(config(ports, policy=policy)) as gw:
        start = time.monotonic()
        flows = [await gw.send("/x") for _ in range(4)]
        assert all(f.response.status_code == 200 for f in flows)
        assert time.monotonic() - start < 2
    ports = [await upstream_app("slow2", handler=slow), await upstream_app("slow3", handler=slow)]
    policy = RETRY_5XX + "\n    timeout: {request: 300ms, per_try: 200ms}"
    async with gateway(config(ports, policy=policy)) as gw:
        start = time.monotonic()
        flow = await gw.send("/x")
        took = time.monotonic() - start
        body = json.loads(flow.response.content)
        assert flow.response.status_code == 504 and body["error"] == "upstream_timeout"
        assert "deadline of 0.3s" in body["reason"] and took < 0.6
        assert flow.response.headers["x-mitmesh-attempts"] == "2"


async def test_breaker_opens_fast_503_then_recovers(gateway, upstream_app):
    healthy = {"ok": False}

    async def flaky(request):
        return web.json_response({}, status=200 if healthy["ok"] else 500)

    ports = [await upstream_app("flaky", handler=flaky)]
    service = "    circuit_breaker: {fail_max: 3, reset_timeout: 300ms}\n    outlier_detection: null"
    async with gateway(config(ports, policy="    timeout: {request: 2s}", service=service)) as gw:
        statuses = [(await gw.send("/x")).response.status_code for _ in range(5)]
        assert statuses[:3] == [500, 500, 500]
        assert statuses[3:] == [503, 503]
        flow = await gw.send("/x")
        body = json.loads(flow.response.content)
        assert body["error"] == "circuit_open" and body["cluster"] == "cat/v1"
        status = gw.state.status()["clusters"]["cat/v1"]
        assert status["breakers"] == {f"127.0.0.1:{ports[0]}": "open"}
        healthy["ok"] = True
        await asyncio.sleep(0.35)
        assert (await gw.send("/x")).response.status_code == 200  # the half-open probe closes it
        assert gw.state.status()["clusters"]["cat/v1"]["breakers"] == {f"127.0.0.1:{ports[0]}": "closed"}


async def test_retry_budget_caps_attempts_when_everything_fails(gateway, upstream_app):
    calls: list = []
    ports = [await upstream_app(f"bad{i}", handler=failing(calls=calls)) for i in range(3)]
    service = "    retry_budget: {ratio: 0.2, min_per_second: 1, ttl: 10s}\n    outlier_detection: null"
    async with gateway(config(ports, policy=RETRY_5XX, service=service)) as gw:
        for _ in range(100):
            await gw.send("/x")
    assert len(calls) <= 100 * 1.2 + 10  # ratio 0.2 plus the floor of 1/s over 10 s
    assert len(calls) >= 100 + 20  # and the budget was used


async def test_outlier_ejection(gateway, upstream_app):
    calls: list = []
    ports = [await upstream_app("bad", handler=failing(calls=calls)), await upstream_app("good")]
    service = ("    outlier_detection: {consecutive_5xx: 2, base_ejection_time: 10s, "
               "max_ejection_percent: 50}")
    async with gateway(config(ports, policy="    timeout: {request: 2s}", service=service)) as gw:
        statuses = [(await gw.send("/x")).response.status_code for _ in range(20)]
        assert len(calls) == 2 and statuses.count(503) == 2  # ejected after its second failure
        assert gw.state.status()["clusters"]["cat/v1"]["ejected"] == [f"127.0.0.1:{ports[0]}"]


async def test_retry_after_is_honoured(gateway, upstream_app):
    ports = [await upstream_app("busy", handler=failing(503, {"retry-after": "1"})), await upstream_app("ok")]
    async with gateway(config(ports, policy=RETRY_5XX + "\n    timeout: {request: 5s}")) as gw:
        start = time.monotonic()
        while True:  # until a request meets the busy endpoint first
            flow = await gw.send("/x")
            if flow.response.headers["x-mitmesh-attempts"] == "2":
                break
        assert time.monotonic() - start >= 1.0
    ports2 = [await upstream_app("busy2", handler=failing(503, {"retry-after": "30"})), await upstream_app("ok2")]
    async with gateway(config(ports2, policy=RETRY_5XX + "\n    timeout: {request: 2s}")) as gw:
        flows = [await gw.send("/x") for _ in range(4)]
        # waiting 30 s would pass the deadline: the 503 is answered instead
        assert any(f.response.status_code == 503 for f in flows)
        assert any("would pass the deadline" in what for f in flows for _, what in keys.get(f).decisions)
