"""Config addon: a bad file at start is an OptionsError; live edits swap atomically or are rejected."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.config import Config
from mesh.runtime.reload import Watcher
from mesh.core.state import MeshState
from tests.conftest import BASE


def test_bad_config_at_start_names_file_line_and_key(write_config):
    path = write_config(BASE.replace("port: 18080", "port: high"))
    addon = Config(MeshState())
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as e:
            tctx.configure(addon, mesh_config=str(path))
    assert f"{path}:4: gateway.listeners[0].port: expected an integer (got 'high')" in str(e.value)


async def test_reload_swaps_good_and_keeps_old_on_bad(write_config):
    path = write_config()
    state = MeshState()
    addon = Config(state)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, mesh_config=str(path), mesh_reload=False)
        first = state.snapshot
        assert first.version == 1 and tctx.options.mode == ["reverse:http://127.0.0.1:9@127.0.0.1:18080"]
        watcher = Watcher(str(path), addon._build, addon._reloaded, addon._rejected)

        write_config(BASE.replace("port: 18080", "port: 18081"))
        await watcher.check_now()
        assert state.snapshot.version == 2
        assert tctx.options.mode == ["reverse:http://127.0.0.1:9@127.0.0.1:18081"]
        # clusters that stay keep their live endpoint objects
        assert state.snapshot.clusters["catalog/v1"] is first.clusters["catalog/v1"]

        write_config(BASE.replace("forward: {service: users}", "forward: {service: nobody}"))
        await watcher.check_now()
        assert state.snapshot.version == 2 and state.reloads == {"ok": 1, "rejected": 1}
        assert "routes[0].forward.service: unknown service" in state.last_error
        assert tctx.master.addons  # still running


async def test_flows_keep_the_snapshot_they_started_with(gateway):
    async with gateway() as gw:
        from addons import keys
        from mitmproxy.test import tflow
        flow = tflow.tflow()
        gw.addons[0].requestheaders(flow)
        pinned = keys.get(flow).snapshot
        from mesh.core.build import build
        gw.state.install(build(pinned.file))
        assert keys.get(flow).snapshot is pinned and gw.state.snapshot is not pinned
