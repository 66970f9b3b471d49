"""The lean runtime's hook table: same semantics as mitmproxy's AddonManager, one lookup per hook name."""

from __future__ import annotations

import logging

from mitmproxy import exceptions, master, options
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow

from mesh.proxy.master import HookTable, build_master


class Recorder:
    def __init__(self, name, log, fail=False, halt=False, asynchronous=False):
        self.name, self.log, self.fail, self.halt, self.asynchronous = name, log, fail, halt, asynchronous

    def request(self, flow):
        self.log.append(self.name)
        if self.fail:
            raise ValueError(f"{self.name} broke")
        if self.halt:
            raise exceptions.AddonHalt()
        if self.asynchronous:
            async def later():
                self.log.append(f"{self.name}:awaited")
            return later()


class Parent:
    def __init__(self, children):
        self.addons = children


async def test_order_children_errors_and_halt(caplog):
    m = master.Master(options.Options())
    m.addons = HookTable(m)
    calls: list[str] = []
    m.addons.add(Recorder("a", calls, asynchronous=True), Parent([Recorder("b", calls, fail=True)]),
                 Recorder("c", calls, halt=True), Recorder("d", calls))
    with caplog.at_level(logging.ERROR):
        await m.addons.trigger_event(HttpRequestHook(tflow.tflow()))
    assert calls == ["a", "a:awaited", "b", "c"]  # b's error is logged, c halts before d
    assert "Addon error: b broke" in caplog.text


async def test_table_follows_added_and_removed_addons():
    m = master.Master(options.Options())
    m.addons = HookTable(m)
    calls: list[str] = []
    first = Recorder("first", calls)
    m.addons.add(first)
    await m.addons.trigger_event(HttpRequestHook(tflow.tflow()))
    m.addons.add(Recorder("second", calls))
    m.addons.remove(first)
    await m.addons.trigger_event(HttpRequestHook(tflow.tflow()))
    assert calls == ["first", "second"]


async def test_lean_master_holds_few_addons(write_config):
    m = build_master(str(write_config()))
    names = [type(a).__name__ for a in m.addons.chain]
    assert names[:5] == ["TermLog", "Core", "Proxyserver", "NextLayer", "ErrorCheck"]
    # only our chain beyond those five: none of mitmdump's ~50 built-in addons
    assert not {"Dumper", "TlsConfig", "ScriptLoader", "ClientPlayback", "Save"} & set(names)
    from addons import chain
    assert names[5:] == [type(a).__name__ for a in chain.gateway()] + ["Ready"]
    assert m.options.connection_strategy == "lazy" and m.options.mode == [
        "reverse:http://127.0.0.1:9@127.0.0.1:18080"]
