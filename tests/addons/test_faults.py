"""Fault injection on the upstream attempt: Istio's delay and abort, the opt-in header, and the
stateful faults (every Nth call, a failing spell, a slow-drip body, a reset mid-body)."""

from __future__ import annotations

import json
import time

from addons import keys
from tests.addons.test_forward_resilience import config


async def test_abort_and_delay_by_percentage(gateway, upstream_app):
    ports = [await upstream_app("ok")]
    policy = "    fault: {abort: {status: 503, percentage: 50}, delay: {fixed: 20ms, percentage: 100}}"
    async with gateway(config(ports, policy=policy)) as gw:
        start = time.monotonic()
        flows = [await gw.send("/x") for _ in range(200)]
        assert time.monotonic() - start >= 200 * 0.02
    aborted = sum(f.response.status_code == 503 for f in flows)
    assert 70 <= aborted <= 130  # 50 % ± 15 points over 200 requests
    st = keys.get(next(f for f in flows if f.response.status_code == 503))
    assert ("fault", "injected delay 20 ms, abort 503") in st.decisions


async def test_header_faults_only_where_the_route_allows(gateway, upstream_app):
    ports = [await upstream_app("ok")]
    async with gateway(config(ports, policy="    timeout: {request: 2s}")) as gw:
        flow = await gw.send("/x", headers={"x-mitmesh-fault": "abort=500"})
        assert flow.response.status_code == 200  # ignored, and not sent upstream
        assert "x-mitmesh-fault" not in json.loads(flow.response.content)["headers"]
    async with gateway(config(ports, policy="    fault: {header_triggered: true}")) as gw:
        start = time.monotonic()
        flow = await gw.send("/x", headers={"x-mitmesh-fault": "delay=200ms"})
        assert flow.response.status_code == 200 and time.monotonic() - start >= 0.2
        assert (await gw.send("/x", headers={"x-mitmesh-fault": "abort=418"})).response.status_code == 418
        bad = await gw.send("/x", headers={"x-mitmesh-fault": "explode=1"})
        assert bad.response.status_code == 400 and json.loads(bad.response.content)["error"] == "bad_fault_header"


async def test_every_nth_call_and_a_failing_spell(gateway, upstream_app):
    ports = [await upstream_app("ok")]
    async with gateway(config(ports, policy="    fault: {abort: {status: 500, every_nth: 3}}")) as gw:
        statuses = [(await gw.send("/x")).response.status_code for _ in range(6)]
        assert statuses == [200, 200, 500, 200, 200, 500]
    async with gateway(config(ports, policy="    fault: {abort: {status: 503, for_seconds: 300ms}}")) as gw:
        assert (await gw.send("/x")).response.status_code == 503
        time.sleep(0.35)
        assert (await gw.send("/x")).response.status_code == 200  # recovered


async def test_drip_and_reset_mid_body_feed_timeouts_and_retries(gateway, upstream_app):
    ports = [await upstream_app("ok")]
    drip = "    fault: {drip: 100}\n    timeout: {request: 300ms}"
    async with gateway(config(ports, policy=drip)) as gw:
        flow = await gw.send("/x")  # a ~300-byte body at 100 B/s cannot make a 300 ms deadline
        assert flow.response.status_code == 504
    reset = ("    fault: {reset_after: 10}\n"
             "    retries: {attempts: 2, retry_on: [reset], backoff: {base: 1ms, max: 2ms}}")
    async with gateway(config(ports, policy=reset)) as gw:
        flow = await gw.send("/x")
        assert flow.response.status_code == 502
        assert json.loads(flow.response.content)["error"] == "upstream_reset"
        assert flow.response.headers["x-mitmesh-attempts"] == "2"
