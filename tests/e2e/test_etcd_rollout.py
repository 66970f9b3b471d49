"""`mitmesh config rollout` against two real gateways (one config, each on a loopback address of
its own, as on two hosts) reading their config from a real etcd, under real load: a revision that
breaks a route is rolled back by the analysis; a good one is promoted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.runtime import procs
from tests.etcd_server import etcd_server, operator_flags, workload_tls  # noqa: F401 (fixture)

from .conftest import Load, Mesh, demo_config, get, wait_until


ROOT = Path(__file__).parents[2]


def mitmesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(300)  # two gateways, the just recipe and two analysis windows: ~70 s idle, 130+ s at load 12
def test_rollout_rolls_back_a_broken_route_and_promotes_a_good_one(tmp_path, etcd_server):
    store = f"etcds://127.0.0.1:{etcd_server.client_port}/rollout"
    # mutual TLS: the operator presents its certificate, the gateways their workload's
    operator = operator_flags(etcd_server)
    workload_tls(etcd_server, "gateway")
    config = demo_config()
    config["mesh"] = {"id": "rollout"}
    m = Mesh(tmp_path, config)
    m.write()
    port, admin = config["gateway"]["listeners"][0]["port"], config["gateway"]["admin"]["port"]
    net = m.net  # this test's own 127.x.y.0/24
    hosts = {"gw-a": f"{net}.21", "gw-b": f"{net}.22"}
    loads: list[Load] = []
    try:
        m.start_services()
        assert mitmesh("config", "push", str(m.path), "--store", store, *operator).returncode == 0
        for name, host in hosts.items():
            gw = procs.spawn(name, procs.python("-m", "mesh.cli", "gateway", "--workers", "1", "--name", name,
                                                "--address", host, "--config", store),
                             log_dir=tmp_path / "logs", cwd=str(tmp_path))
            m.children[name] = gw
        for name in hosts:
            procs.wait_log(m.children[name], "gateway ready", timeout=60)
        loads = [Load(f"http://{h}:{port}/users/alice", threads=2, pace=0.02).start() for h in hosts.values()]

        # revision 2 sends /users to a port where nothing listens: the canary (gw-a) fails it
        broken = demo_config()
        broken.update(mesh={"id": "rollout"}, gateway=config["gateway"])
        broken["services"] = config["services"] | {"users": {"versions": {"v1": {
            "endpoints": [f"127.0.0.1:{procs.free_port()}"]}}}}
        broken["routes"] = config["routes"]
        m.write(broken)
        # through the just recipe, as CI's workflow runs it: validate, policy tests, rollout
        r = subprocess.run([str(Path(sys.executable).with_name("just")), "--justfile", str(ROOT / "justfile"),
                            "rollout", str(m.path), "--canary", "1", "--watch", "8s", "--interval", "2s",
                            "--store", store, *operator],
                           capture_output=True, text=True, timeout=180)
        out = r.stdout
        assert "ok" in out and "2 passed" in out, (out, r.stderr)  # validate, then the policy tests
        assert r.returncode == 1, (out, r.stderr)
        assert "canary: revision 2 on gw-a; baseline: revision 1 on gw-b" in out, out
        assert "the canary runs revision 2" in out and "rolled back: error rate" in out, out
        assert "every proxy runs revision 1" in out and "left out" not in out, out
        wait_until(lambda: get(f"http://{hosts['gw-a']}:{admin}/status")[1]["control_plane"]["config"]["revision"] == 1,
                   timeout=20)
        history = mitmesh("config", "history", "--store", store, *operator).stdout
        assert "(current)" in history.splitlines()[1] and "rollout" in history.splitlines()[2], history

        # revision 3: a harmless change, promoted after a clean window
        config["routes"].insert(0, {"name": "hello", "match": {"path": {"exact": "/hello"}},
                                    "direct": {"body": {"hello": "etcd"}}})
        m.write(config)
        r = mitmesh("config", "rollout", str(m.path), "--watch", "6s", "--interval", "2s",
                    "--store", store, *operator)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "promoted: revision 3 runs on every proxy" in r.stdout, r.stdout
        for host in hosts.values():
            wait_until(lambda h=host: get(f"http://{h}:{port}/hello")[0] == 200, timeout=20)
    finally:
        for load in loads:
            load.stop()
        m.stop()


def test_a_gateway_of_another_identity_is_counted_by_a_rollout(tmp_path, etcd_server):
    """gateway.identity `edge`: certs/workload/edge.pem, no gateway.pem. `mitmesh gateway
    --identity edge` presents it to the etcds:// store before its config says so, and signs its
    presence with it, which a rollout of that config believes (it expects edge's SPIFFE ID)."""
    import asyncio

    from discovery.etcdapi import Etcd
    from mesh.runtime.configcmd import gateway_trust
    from mesh.runtime.store import Store, parse_location
    from mesh.config import load
    from tests.etcd_server import operator_tls

    store = f"etcds://127.0.0.1:{etcd_server.client_port}/edgemesh"
    workload_tls(etcd_server, "edge")
    config = {"version": 1, "mesh": {"id": "edgemesh"},
              "gateway": {"identity": "edge", "listeners": [{"name": "public",
                                                              "port": procs.free_port()}],
                          "admin": {"port": procs.free_port()}},
              "services": {}, "routes": [{"name": "hi", "match": {"path": {"exact": "/hi"}},
                                          "direct": {"status": 200, "body": {"hi": "edge"}}}]}
    path = tmp_path / "mesh.yaml"
    path.write_text(json.dumps(config))
    r = mitmesh("config", "push", str(path), "--store", store, *operator_flags(etcd_server))
    assert r.returncode == 0, r
    gw = procs.spawn("gateway", procs.python("-m", "mesh.cli", "gateway", "--workers", "1",
                                             "--identity", "edge", "--config", store),
                     log_dir=tmp_path / "logs", cwd=str(tmp_path))
    try:
        procs.wait_log(gw, "gateway ready", timeout=60)
        loc = parse_location(store).with_tls(operator_tls(etcd_server))
        trust = gateway_trust(loc, load(path))

        async def records() -> list[dict]:
            etcd = Etcd(list(loc.endpoints), tls=loc.tls)
            try:
                return await Store(etcd, "edgemesh").proxies()
            finally:
                await etcd.close()
        found = wait_until(lambda: asyncio.run(records()), timeout=10)
        for record in found:
            trust.check(record, "edgemesh")  # raises: the rollout would leave it out
        assert {r["role"] for r in found} == {"gateway"}
    finally:
        gw.stop()
