"""User plugins in the chain: placement, dispatch by route, isolation, hot reload, visibility."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest
from mitmproxy.test import taddons

from addons import chain, decisions as decisions_addon, dispatch
from addons.plugins import Plugins
from mesh.config.plugins import GATEWAY_STAGES, SIDECAR_STAGES
from mesh.core.state import MeshState
from mesh.telemetry import metrics
from mitmesh.testing import body, decisions, sidecar_mode

# a plugin that records the stages it runs between, and misbehaves when asked to
RECORDER = '''
import asyncio, time
from pydantic import BaseModel
from mitmesh import plugin

class Options(BaseModel):
    tag: str = "v1"

class Recorder:
    Options = Options

    def __init__(self, options):
        self.tag = options.tag

    def request(self, flow):
        if flow.request.path.endswith("/raise"):
            raise ValueError("bad input")
        if flow.request.path.endswith("/slow"):
            time.sleep(0.08)
        flow.request.headers["x-seen-" + self.tag] = plugin.route(flow) or "-"
        plugin.decide(flow, f"saw {plugin.route(flow)} as {plugin.identity(flow)}")

    def response(self, flow):
        flow.response.headers["x-plugin"] = self.tag
'''

ASYNC = '''
import asyncio

class Waiter:
    async def request(self, flow):
        await asyncio.sleep(float(flow.request.headers.get("x-wait", "0")))
        flow.request.headers["x-waited"] = "yes"
'''


def line_of(text: str, code: str = RECORDER) -> int:
    return next(i for i, line in enumerate(textwrap.dedent(code).splitlines(), 1) if text in line)


def config(tmp_path: Path, code: str = RECORDER, cls: str = "Recorder", **block) -> str:
    (tmp_path / "rec.py").write_text(textwrap.dedent(code))
    plugin = {"plugin": f"{tmp_path}/rec.py:{cls}", "after": "authn", **block}
    import json
    return textwrap.dedent(f"""
        services:
          users: {{versions: {{v1: {{endpoints: ["127.0.0.1:9"]}}}}}}
        routes:
          - {{name: with, match: {{path: {{prefix: /with/}}}}, forward: {{service: users}}, plugins: [rec]}}
          - {{name: without, match: {{path: {{prefix: /other/}}}}, forward: {{service: users}}}}
        plugins:
          rec: {json.dumps(plugin)}
        """)


def test_stage_names_are_the_chains():
    gw = [getattr(a, "name", type(a).__name__.lower()) for a in dispatch.stages(chain.gateway(MeshState()))]
    sc = [getattr(a, "name", type(a).__name__.lower()) for a in dispatch.stages(chain.sidecar(MeshState()))]
    assert [n for n in gw if n in GATEWAY_STAGES] == list(GATEWAY_STAGES)
    assert [n for n in sc if n in SIDECAR_STAGES] == list(SIDECAR_STAGES)
    assert gw[gw.index("hopbyhop"):gw.index("securityheaders") + 1] == list(GATEWAY_STAGES)


async def test_runs_where_placed_for_the_routes_that_list_it(mitmesh_chain, tmp_path):
    async with mitmesh_chain(config(tmp_path)) as c:
        names = [getattr(a, "name", type(a).__name__.lower()) for a in dispatch.stages(c.tctx.master.addons.chain)]
        assert names.index("plugin:rec") == names.index("authz") - 1
        used = await c.send("/with/x", identity="alice")
        unused = await c.send("/other/x", identity="alice")
    assert body(used)["headers"]["x-seen-v1"] == "with"
    assert used.response.headers["x-plugin"] == "v1"
    assert "plugin rec: saw with as alice" in decisions(used)
    assert "x-seen-v1" not in body(unused)["headers"] and "x-plugin" not in unused.response.headers


async def test_all_routes_and_order_within_a_position(mitmesh_chain, tmp_path):
    text = config(tmp_path, all_routes=True, before="forward").replace('"after": "authn", ', "")
    text += '  second: {"plugin": "%s/rec.py:Recorder", "before": "forward", "all_routes": true, ' \
            '"options": {"tag": "v2"}}\n' % tmp_path
    async with mitmesh_chain(text) as c:
        names = [getattr(a, "name", type(a).__name__.lower()) for a in dispatch.stages(c.tctx.master.addons.chain)]
        flow = await c.send("/other/x")
    assert names[names.index("forward") - 2:names.index("forward")] == ["plugin:rec", "plugin:second"]
    assert {"x-seen-v1", "x-seen-v2"} <= set(body(flow)["headers"])
    assert flow.response.headers["x-plugin"] == "v2"  # response hooks run in chain order too


async def test_an_exception_answers_500_naming_the_plugin_and_counts(mitmesh_chain, tmp_path):
    errors = metrics.PLUGIN_ERRORS.labels("rec", "request", "exception")
    before = errors._value.get()
    async with mitmesh_chain(config(tmp_path)) as c:
        flow = await c.send("/with/raise")
        after = await c.send("/with/fine")  # the next request is served
    assert flow.response.status_code == 500
    assert body(flow)["error"] == "plugin_failed" and body(flow)["plugin"] == "rec"
    assert body(flow)["reason"] == "plugin rec failed in its request hook"
    assert any(line.startswith("plugin rec: request raised ValueError: bad input (") and f"rec.py:{line_of('raise ValueError')})" in line
               for line in decisions(flow))
    assert errors._value.get() == before + 1
    assert after.response.status_code == 200
    decisions_addon.Decisions()._keep(flow)  # what mitmweb shows: the marker and the comment
    assert flow.marked == ":jigsaw:" and flow.comment.startswith("#plugin_failed\n")


async def test_a_hook_over_budget_is_reported(mitmesh_chain, tmp_path):
    slow = metrics.PLUGIN_SLOW.labels("rec", "request")
    before = slow._value.get()
    async with mitmesh_chain(config(tmp_path, budget="20ms")) as c:
        flow = await c.send("/with/slow")  # sleeps 80 ms in its request hook
    assert flow.response.status_code == 200
    assert any(line.startswith("plugin rec: request took ") and line.endswith("over its 20 ms budget")
               for line in decisions(flow))
    assert slow._value.get() >= before + 1
    decisions_addon.Decisions()._keep(flow)  # what mitmweb shows: the marker and the comment
    assert flow.marked == ":snail:" and "#slow_plugin" in flow.comment


async def test_an_async_hook_past_its_timeout_is_cancelled_with_504(mitmesh_chain, tmp_path):
    async with mitmesh_chain(config(tmp_path, ASYNC, "Waiter", timeout="1s")) as c:
        slow = await c.send("/with/x", headers={"x-wait": "60"})
        fine = await c.send("/with/x")
    assert slow.response.status_code == 504 and body(slow)["error"] == "plugin_timeout"
    assert body(fine)["headers"]["x-waited"] == "yes"


async def test_an_edit_reloads_and_a_broken_one_keeps_the_previous_version(mitmesh_chain, tmp_path):
    async with mitmesh_chain(config(tmp_path)) as c:
        file = tmp_path / "rec.py"
        file.write_text(file.read_text().replace('tag: str = "v1"', 'tag: str = "v2"'))
        os.utime(file, ns=(1, 1))  # a new stamp even within the same clock tick
        c.plugins.check()
        assert body(await c.send("/with/x"))["headers"].get("x-seen-v2") == "with"
        [entry] = c.status()["plugins"]
        assert entry["version"] == 2 and entry["last_error"] is None

        file.write_text(file.read_text() + "\n\ndef broken(:\n")
        os.utime(file, ns=(2, 2))
        c.plugins.check()
        flow = await c.send("/with/x")
        assert body(flow)["headers"].get("x-seen-v2") == "with"  # the previous version serves
        [entry] = c.status()["plugins"]
        assert entry["version"] == 2
        broken = len(file.read_text().splitlines())
        assert entry["last_error"]["line"] == broken
        assert "plugins.rec.plugin: import failed: " in entry["last_error"]["error"]
        assert f"rec.py:{broken}: SyntaxError" in entry["last_error"]["error"]


async def test_a_config_whose_plugin_fails_is_refused_and_nothing_changes(mitmesh_chain, tmp_path):
    async with mitmesh_chain(config(tmp_path)) as c:
        path = Path(c.state.snapshot.file)
        config_mod = next(a for a in c.addons if type(a).__name__ == "Config")
        version = c.state.version
        path.write_text(path.read_text().replace("after: authn", "after: authn\n    options: {tag: 3}"))
        from mesh.core.build import build
        config_mod._reloaded(build(str(path)))
        assert c.state.version == version
        assert "plugins.rec.options.tag: expected a string (got 3)" in c.state.last_error
        assert body(await c.send("/with/x"))["headers"]["x-seen-v1"] == "with"


async def test_sidecar_inbound_and_outbound(mitmesh_chain, tmp_path):
    (tmp_path / "rec.py").write_text(textwrap.dedent(RECORDER))
    text = f"""
        services:
          catalog: {{versions: {{v1: {{endpoints: ["127.0.0.1:9"]}}}}, plugins: [in, out]}}
          users: {{versions: {{v1: {{endpoints: ["127.0.0.1:9"]}}}}}}
        plugins:
          in: {{plugin: "{tmp_path}/rec.py:Recorder", chain: sidecar_inbound, after: inbound, options: {{tag: in}}}}
          out: {{plugin: "{tmp_path}/rec.py:Recorder", chain: sidecar_outbound, before: forward, options: {{tag: out}}}}
        """
    async with mitmesh_chain(text, role="sidecar", workload="service=catalog,app=127.0.0.1:9") as c:
        snap = c.state.snapshot
        inbound = await c.send("/x", mode=sidecar_mode(snap, "inbound"))
        to_catalog = await c.send("/x", mode=sidecar_mode(snap, "outbound"), host="catalog", target="catalog")
        to_users = await c.send("/x", mode=sidecar_mode(snap, "outbound"), host="users", target="users")
    assert body(inbound)["headers"].get("x-seen-in") == "inbound" and "x-seen-out" not in body(inbound)["headers"]
    assert body(to_catalog)["headers"].get("x-seen-out") == "outbound.catalog"
    assert "x-seen-in" not in body(to_catalog)["headers"]
    assert not any(h.startswith("x-seen") for h in body(to_users)["headers"])


async def test_status_lists_plugins(mitmesh_chain, tmp_path):
    async with mitmesh_chain(config(tmp_path)) as c:
        [entry] = c.status()["plugins"]
    assert entry["name"] == "rec" and entry["chain"] == "gateway"
    assert entry["position"] == "before authz" and entry["routes"] == ["with"]
    assert entry["budget_ms"] == 50 and entry["version"] == 1


def test_no_plugins_no_hooks(tmp_path, write_config):
    """A proxy without plugins has no plugin hook in its chain at all."""
    state = MeshState()
    addons = chain.gateway(state)
    with taddons.context(*addons) as tctx:
        tctx.options.update(mesh_config=str(write_config()), mesh_reload=False)
        plugins = next(a for a in addons if isinstance(a, Plugins))
        assert plugins.active == {}
        assert not any(getattr(a, "name", "").startswith("plugin:") for a in dispatch.stages(tctx.master.addons.chain))


RESPONSE_FAILS = '''
class Late:
    def response(self, flow):
        raise KeyError("no such field")

    def error(self, flow):
        raise KeyError("also broken")
'''


async def test_an_exception_in_the_response_hook_replaces_the_answer(mitmesh_chain, tmp_path):
    async with mitmesh_chain(config(tmp_path, RESPONSE_FAILS, "Late", before="securityheaders")
                             .replace('"after": "authn", ', "")) as c:
        flow = await c.send("/with/x")
    assert flow.response.status_code == 500 and body(flow)["plugin"] == "rec"
    assert body(flow)["reason"] == "plugin rec failed in its response hook"
    assert any(line.startswith("plugin rec: response raised KeyError") for line in decisions(flow))
    assert flow.metadata["mitmesh.outcomes"] == ["plugin_failed"]  # Decisions, after it, still ran
