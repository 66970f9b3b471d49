"""Nothing done twice (issue 20): a recording upstream counts how often each request ran while it
resets, hangs or answers 502/503 after acting; 20 requests per case, each counted by its id.

Before issue 20 the pool re-sent an idempotent request on a reused connection unseen (a PUT ran twice
with `x-mitmesh-attempts: 1`, four times with three attempts said), and a POST on a pooled
connection the upstream was closing got a 502 without ever running."""

from __future__ import annotations

import asyncio
import collections
import contextlib

import pytest
from prometheus_client import REGISTRY

from addons import keys

N = 20


class Recording:
    """A keep-alive HTTP/1.1 upstream that records each request id (x-rid) it acts on, then does
    what x-mode says: ok, reset (RST, no answer), hang, 502 or 503. A request arriving on a connection
    idle for `keepalive` seconds or more is dropped unread: the upstream closed it just then."""

    def __init__(self, keepalive: float | None = None, hint: bool = False):
        self.keepalive, self.hint = keepalive, hint
        self.ran: collections.Counter[str] = collections.Counter()
        self.connections = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        with contextlib.suppress(Exception):
            self.server.close_clients()

    async def _serve(self, reader, writer):
        self.connections += 1
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.keepalive is not None and loop.time() - idle_since >= self.keepalive:
                    writer.transport.abort()  # closed as the request arrived: it never ran
                    return
                headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
                length = int(headers.get(b"content-length", b"0"))
                if length:
                    await reader.readexactly(length)
                self.ran[headers.get(b"x-rid", b"").decode()] += 1
                mode = headers.get(b"x-mode", b"ok").decode()
                if mode == "reset":
                    writer.transport.abort()
                    return
                if mode == "hang":
                    await asyncio.sleep(30)
                    return
                status = {"ok": 200, "502": 502, "503": 503}[mode]
                extra = b"keep-alive: timeout=1\r\n" if self.hint else b""
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 2\r\n%s\r\nok" % (status, extra))
                await writer.drain()
                idle_since = loop.time()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()


def config(port: int, policy: str = "", service: str = "") -> str:
    return f"""
version: 1
gateway: {{listeners: [{{name: public, port: 18080}}]}}
services:
  svc:
    versions: {{v1: {{endpoints: ["127.0.0.1:{port}"]}}}}
    outlier_detection: null
{service}
routes:
  - name: svc
    match: {{path: {{prefix: /}}}}
    forward: {{service: svc}}
    policies: [{'p' if policy else ''}]
policies:
  p:
{policy or "    timeout: {request: 15s}"}
"""


async def case(gw, method: str, mode: str, *, warm: bool = True) -> list:
    """N requests, each on a pooled connection (warmed by a GET first): (runs, attempts header, status)."""
    out = []
    for i in range(N):
        if warm:
            await gw.send("/warm", headers={"x-rid": f"warm-{mode}-{i}"})
        rid = f"{method}-{mode}-{i}"
        flow = await gw.send("/x", method=method, headers={"x-rid": rid, "x-mode": mode}, body=b"{}")
        out.append((rid, flow))
    return out


def retries() -> float:
    return REGISTRY.get_sample_value("mitmesh_retries_total", {"cluster": "svc/v1"}) or 0.0


def runs(up: Recording, flows) -> collections.Counter:
    return collections.Counter(up.ran[rid] for rid, _ in flows)


def said(flows) -> collections.Counter:
    return collections.Counter(int(f.response.headers.get("x-mitmesh-attempts", 0)) for _, f in flows)


@pytest.mark.parametrize("method", ["PUT", "GET"])
async def test_stale_connection_resend_is_a_counted_attempt(gateway, method):
    before = retries()
    async with Recording() as up, gateway(config(up.port)) as gw:
        flows = await case(gw, method, "reset")
        budget = gw.state.guards["svc/v1"].budget
    # the upstream acted, then reset its reused connection: sent once more on a new one, and said
    assert runs(up, flows) == {2: N} and said(flows) == {2: N}
    assert all(f.response.status_code == 502 for _, f in flows)
    assert retries() - before == N and budget.retries == N
    st = keys.get(flows[0][1])
    assert any(who == "retry" and "reused keep-alive connection" in what for who, what in st.decisions)


async def test_retry_stale_connection_never(gateway):
    policy = "    retries: {attempts: 1, retry_stale_connection: never}"
    async with Recording() as up, gateway(config(up.port, policy)) as gw:
        flows = await case(gw, "PUT", "reset")
    assert runs(up, flows) == {1: N} and said(flows) == {1: N}


async def test_readme_retry_policy_counts_every_run(gateway):
    policy = "    retries: {attempts: 3, retry_on: [5xx, reset], backoff: {base: 1ms, max: 2ms}}"
    svc = "    retry_budget: {ratio: 1.0, min_per_second: 1000}"
    async with Recording() as up, gateway(config(up.port, policy, svc)) as gw:
        flows = await case(gw, "PUT", "reset")
    # three attempts by the policy plus the stale connection's re-send: four runs, four said
    assert runs(up, flows) == {4: N} and said(flows) == {4: N}


@pytest.mark.parametrize("mode, status", [("reset", 502), ("hang", 504), ("502", 502), ("503", 503)])
async def test_post_that_may_have_run_is_not_sent_again_by_default(gateway, mode, status):
    per_try = "100ms" if mode == "hang" else "5s"  # a loaded machine may take 50 ms to answer at all
    policy = (f"    timeout: {{request: 10s, per_try: {per_try}}}\n"
              "    retries: {attempts: 3, retry_on: [5xx, reset, reset-before-request, connect-failure],"
              " backoff: {base: 1ms, max: 2ms}}")
    svc = "    retry_budget: {ratio: 1.0, min_per_second: 1000}"
    async with Recording() as up, gateway(config(up.port, policy, svc)) as gw:
        flows = await case(gw, "POST", mode, warm=mode == "reset")
    # a hung upstream may not have read a request by the per-try timeout: at most once, then
    assert (max(runs(up, flows)) == 1 if mode == "hang" else runs(up, flows) == {1: N}) and said(flows) == {1: N}
    assert all(f.response.status_code == status for _, f in flows)
    assert all(keys.get(f).sent for _, f in flows)


async def test_non_idempotent_true_is_the_routes_explicit_choice(gateway):
    """What the payments scenario used: every run after the first is one the upstream may repeat,
    and the header says so."""
    policy = "    retries: {attempts: 3, retry_on: [5xx], non_idempotent: true, backoff: {base: 1ms, max: 2ms}}"
    svc = "    retry_budget: {ratio: 1.0, min_per_second: 1000}"
    async with Recording() as up, gateway(config(up.port, policy, svc)) as gw:
        flows = await case(gw, "POST", "503", warm=False)
    assert runs(up, flows) == {3: N} and said(flows) == {3: N}


@pytest.mark.parametrize("hint, idle", [(False, "idle_timeout: 500ms"), (True, "")])
async def test_post_is_not_lost_to_a_pooled_connection_the_upstream_is_closing(gateway, hint, idle):
    """The upstream keeps idle connections 1s (and may say so in Keep-Alive: timeout=1); the proxy's
    idle timeout below it, or the hint, keeps the POST off a connection it is closing."""
    svc = f"    {idle}" if idle else ""
    async with Recording(keepalive=1.0, hint=hint) as up, gateway(config(up.port, service=svc)) as gw:
        flows = []
        for i in range(3):  # each waits past the upstream's keep-alive: bounded to a few seconds
            await gw.send("/warm", headers={"x-rid": f"warm-{i}"})
            await asyncio.sleep(1.05)
            flow = await gw.send("/x", method="POST", headers={"x-rid": f"post-{i}"}, body=b"{}")
            flows.append((f"post-{i}", flow))
    assert [f.response.status_code for _, f in flows] == [200] * 3
    assert runs(up, flows) == {1: 3} and said(flows) == {1: 3}
