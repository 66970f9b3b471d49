"""Dispatch: a route runs only the stages its plan uses, in chain order; the others are never
called (counted on the real gateway chain, through mitmproxy's hook dispatch); errors, async stages
and AddonHalt behave as when mitmproxy calls the stages itself."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import exceptions
from mitmproxy.test import tflow

from addons import dispatch
from addons.chain import gateway as gateway_chain
from addons.dispatch import Dispatch
from mesh.core.plan import RoutePlan
from mesh.core.state import MeshState
from mesh.policies import apikeys

KEY = "mk_test_key_for_acme_0123456789abcdef"
POLICY_STAGES = ("Cors", "SizeLimit", "Versioning", "AuthThrottle", "Authn", "Authz", "RateLimit",
                 "Idempotency", "Transform", "Mirror")
EVERY_ROUTE = ("Canary", "Forwarded", "Function")  # stages without plan_fields: every routed flow


def config(upstream: int) -> str:
    return f"""
version: 1
gateway:
  listeners: [{{name: public, port: 18080}}]
services:
  users: {{versions: {{v1: {{endpoints: ["127.0.0.1:{upstream}"]}}}}}}
routes:
  - name: bare
    match: {{path: {{prefix: /bare/}}}}
    forward: {{service: users}}
  - name: guarded
    match: {{path: {{prefix: /guarded/}}}}
    forward: {{service: users}}
    policies: [partners]
policies:
  partners:
    cors: {{allow_origins: ["https://app.example"]}}
    api_key:
      consumers:
        acme: {{key_sha256: {apikeys.digest(KEY)}}}
    rate_limit: {{minute: 100, key: consumer}}
"""


def count_calls(stages: list) -> list[tuple[str, str]]:
    """Wrap every flow hook of every stage (before the first flow: the tables take the wrappers);
    returns the list the calls are appended to, as (stage, hook)."""
    calls: list[tuple[str, str]] = []
    for stage in stages:
        for hook in dispatch.FLOW_HOOKS:
            func = getattr(stage, hook, None)
            if callable(func):
                def counted(flow, func=func, who=type(stage).__name__, hook=hook):
                    calls.append((who, hook))
                    return func(flow)
                setattr(stage, hook, counted)
    return calls


async def test_a_bare_route_calls_no_policy_stage(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users)) as gw:
        route_stages = next(a for a in gw.tctx.master.addons.chain if isinstance(a, Dispatch)).stages
        calls = count_calls(route_stages)
        flow = await gw.send("/bare/x", headers={"origin": "https://app.example"})
        assert flow.response.status_code == 200
        assert not [c for c in calls if c[0] in POLICY_STAGES], calls
        assert {who for who, _ in calls} <= set(EVERY_ROUTE)
        assert ("Forwarded", "requestheaders") in calls and ("Function", "request") in calls
        assert "access-control-allow-origin" not in flow.response.headers  # Cors was not asked


async def test_a_route_with_policies_runs_them_in_chain_order(gateway, upstream_app):
    users = await upstream_app("users")
    async with gateway(config(users)) as gw:
        route_stages = next(a for a in gw.tctx.master.addons.chain if isinstance(a, Dispatch)).stages
        calls = count_calls(route_stages)
        flow = await gw.send("/guarded/x", headers={"x-api-key": KEY, "origin": "https://app.example"})
        assert flow.response.status_code == 200
        assert flow.response.headers["access-control-allow-origin"] == "https://app.example"
        assert "ratelimit-remaining" in {k.lower() for k in flow.response.headers}
        heads = [who for who, hook in calls if hook == "requestheaders"]
        assert heads == ["Cors", "AuthThrottle", "Authn", "Canary", "Forwarded"]
        assert [who for who, hook in calls if hook == "request"] == ["RateLimit", "Function"]
        assert [who for who, hook in calls if hook == "response"] == ["Cors", "AuthThrottle", "RateLimit", "Canary"]
        order = [type(s).__name__ for s in route_stages]
        for hook in dispatch.FLOW_HOOKS:  # each hook's stages in the chain's order
            called = [who for who, h in calls if h == hook]
            assert called == sorted(called, key=order.index)
        # a refused request: the stages after the answer are still called and see flow.response
        calls.clear()
        refused = await gw.send("/guarded/x", headers={"x-api-key": "mk_wrong_key_000000000000"})
        assert refused.response.status_code == 401
        assert [who for who, hook in calls if hook == "request"] == ["RateLimit", "Function"]


def test_tables_follow_the_plan_and_the_stage_list():
    stages = dispatch.stages(gateway_chain(MeshState()))
    d = next(a for a in gateway_chain(MeshState()) if isinstance(a, Dispatch))
    names = lambda t: [f.__self__.__class__.__name__ for f in t]  # noqa: E731
    assert names(d.table(RoutePlan().used)["requestheaders"]) == ["Canary", "Forwarded"]
    assert names(d.table(dispatch.UNROUTED)["request"]) == ["Function"]
    assert names(d.table(frozenset({"rate_limit"}))["request"]) == ["RateLimit", "Function"]
    assert names(d.table(frozenset({"authn"}))["requestheaders"]) == ["AuthThrottle", "Authn", "Canary", "Forwarded"]

    class Plugin:  # as a plugin's Hooks: no plan_fields, so it runs for every routed flow
        def request(self, flow):
            pass
    d.table(frozenset())  # made once ...
    d.stages.insert(0, Plugin())
    d.changed()  # ... and again after a plugin is placed
    assert [f.__self__.__class__.__name__ for f in d.table(frozenset())["request"]] == ["Plugin", "Function"]
    assert [type(s).__name__ for s in stages][-1] == "Recent"


class Recorder:
    def __init__(self, log: list, name: str, plan_fields=None, fail=False, wait=False, halt=False):
        self.log, self.name, self.fail, self.wait, self.halt = log, name, fail, wait, halt
        if plan_fields is not None:
            self.plan_fields = plan_fields

    def request(self, flow):
        if self.wait:
            return self._later()
        self.log.append(self.name)
        if self.halt:
            raise exceptions.AddonHalt()
        if self.fail:
            raise KeyError("boom")

    async def _later(self):
        await asyncio.sleep(0)
        self.log.append(self.name)


async def test_errors_async_stages_and_halt_as_mitmproxy(caplog):
    log: list[str] = []
    d = Dispatch(Recorder(log, "a"), Recorder(log, "b", fail=True), Recorder(log, "c", wait=True),
                 Recorder(log, "d", plan_fields=("rate_limit",)), Recorder(log, "e"))
    flow = tflow.tflow()  # not ours (no flow state): only the stages without plan_fields
    with caplog.at_level(logging.ERROR):
        pending = d.request(flow)
        assert log == ["a", "b"]  # the sync part ran; the rest waits for the async stage
        await pending
    assert log == ["a", "b", "c", "e"]
    assert "Addon error: 'boom'" in caplog.text
    log.clear()
    halting = Dispatch(Recorder(log, "a", halt=True), Recorder(log, "b"))
    with pytest.raises(exceptions.AddonHalt):  # the manager stops the hook for the whole chain
        halting.request(flow)
    assert log == ["a"]


def test_a_stage_with_another_hook_is_refused():
    class Connects:
        def client_connected(self, client):
            pass
    with pytest.raises(ValueError, match="Connects has client_connected"):
        Dispatch(Connects())
