"""Function instances forked from the function fork server (mesh/runtime/functionforks.py): real
instance processes and a real fork server, through the whole gateway chain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from mesh.runtime import functionforks
from tests.addons.test_function import config, function_addon

HANDLER = '''
import os, sys

GREETING = os.environ["GREETING"]  # the function's config applies before the handler is imported
VERSION = {version}

def handler(event, context):
    if event["rawPath"].endswith("/crash"):
        os._exit(7)
    return {{"pid": os.getpid(), "ppid": os.getppid(), "version": VERSION, "greeting": GREETING,
            "cmdline": open("/proc/self/cmdline", "rb").read().decode().split("\\0"),
            "mesh": sorted(m for m in sys.modules if m.split(".")[0] == "mesh"),
            "optimize": sys.flags.optimize, "isolated": sys.flags.isolated}}
'''

FUNCS = 'hello: {handler: "aws:lambda_handler"}\nfn: {handler: "v:handler", idle: 0.5, environment: {GREETING: hi}}'


@pytest.fixture
def code(tmp_path):
    (tmp_path / "aws.py").write_text("def lambda_handler(event, context):\n    return 'hello'\n")
    (tmp_path / "v.py").write_text(HANDLER.format(version=1))
    return tmp_path


def comm(pid: int) -> bytes:
    return Path(f"/proc/{pid}/comm").read_bytes().strip()


async def call(gw, path: str = "/fn/") -> dict:
    flow = await gw.send(path)
    assert flow.response.status_code == 200, flow.response.content
    return json.loads(flow.response.content)


async def scaled_to_zero(gw) -> None:
    pool = function_addon(gw).pools["fn"]
    for _ in range(50):
        await asyncio.sleep(0.1)
        if not pool.instances:
            return
    raise AssertionError(f"still running: {[i.pid for i in pool.instances]}")


async def test_an_instance_is_a_fork_of_the_function_fork_server_and_imports_the_current_handler(gateway, code):
    async with gateway(config(FUNCS)) as gw:
        first = await call(gw)
        server = functionforks._forks.server
        assert first["ppid"] == server.child.pid and comm(first["ppid"]) == b"mitmesh-fork"
        # a fork: its command line is the fork server's, not `python -I worker.py`
        assert first["cmdline"][1:3] == ["-I", "-m"] and "--preload" in first["cmdline"]
        assert first["cmdline"][first["cmdline"].index("--preload") + 1] == "functions"
        assert (first["version"], first["greeting"]) == (1, "hi")
        assert first["mesh"] == [] and first["isolated"] == 1 and first["optimize"] == 0  # as `python -I worker.py`
        await scaled_to_zero(gw)
        (code / "v.py").write_text(HANDLER.format(version=2))  # the user edits the handler
        second = await call(gw)
        assert second["pid"] != first["pid"] and second["ppid"] == first["ppid"]  # the same fork server
        assert second["version"] == 2


async def test_a_dead_fork_server_takes_no_instance_down_and_is_restarted(gateway, code):
    async with gateway(config(FUNCS)) as gw:
        first = await call(gw)
        os.kill(first["ppid"], signal.SIGKILL)  # the fork server crashes
        for _ in range(50):
            if functionforks._forks.server.child.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        again = await call(gw)
        assert again["pid"] == first["pid"]  # warm: the instance lives on, re-parented
        assert again["ppid"] == os.getpid()  # to us, the child subreaper, which reaps it
        crashed = await gw.send("/fn/crash")  # its exit is still seen: a 502, and a new instance
        assert crashed.response.status_code == 502
        assert json.loads(crashed.response.content)["error"] == "function_crashed"
        fresh = await call(gw)
        assert fresh["pid"] != first["pid"] and fresh["ppid"] != first["ppid"]
        assert comm(fresh["ppid"]) == b"mitmesh-fork"  # a new fork server forked it
        assert not Path(f"/proc/{first['pid']}").exists()  # reaped, no zombie


async def test_no_fork_server_starts_a_fresh_python(gateway, code, monkeypatch):
    monkeypatch.setenv("MITMESH_FORK_SERVER", "0")  # what --no-fork-server sets
    async with gateway(config(FUNCS)) as gw:
        first = await call(gw)
        assert first["ppid"] == os.getpid()
        assert first["cmdline"][1] == "-I" and first["cmdline"][2].endswith("worker.py")
        assert first["version"] == 1 and first["greeting"] == "hi" and first["mesh"] == []


async def test_min_instances_start_the_fork_server_with_the_gateway(gateway, code):
    funcs = FUNCS.replace("idle: 0.5", "idle: 0.5, min_instances: 1")
    async with gateway(config(funcs)) as gw:
        function_addon(gw).running()  # what the proxy calls once it serves
        pool = function_addon(gw).pools["fn"]
        for _ in range(100):  # no call: min_instances starts one, forked
            if pool.instances:
                break
            await asyncio.sleep(0.1)
        [inst] = pool.instances
        server = functionforks._forks.server
        assert server.alive() and Path(f"/proc/{inst.pid}/stat").read_text().rsplit(")", 1)[1].split()[1] \
            == str(server.child.pid)
        assert (await call(gw))["pid"] == inst.pid
