"""Config from etcd with a real etcd, real gateway and real services: push validates before it
stores, the gateway hot reloads each revision and reports it (/status, metric), a revision it
cannot apply leaves it on its own and says why, history and rollback."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request

import yaml

from discovery.etcdapi import Etcd
from mesh.runtime import procs
from mesh.runtime.store import Store
from mesh.security import pki
from mesh.security.signing import Signer
from tests.etcd_server import etcd_server, operator_tls, workload_tls  # noqa: F401 (fixture)

from .conftest import Mesh, demo_config, get, wait_until


def mitmesh(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def metrics_text(m: Mesh) -> str:
    with urllib.request.urlopen(m.admin + "/metrics", timeout=5) as r:
        return r.read().decode()


def control(m: Mesh) -> dict:
    return m.status()["control_plane"]["config"]


def test_push_reload_refuse_history_rollback(tmp_path, etcd_server):
    # mutual TLS: `mitmesh config` finds the operator's files in certs/ of its working folder, the
    # gateway its workload certificate there
    store = f"etcds://127.0.0.1:{etcd_server.client_port}"
    workload_tls(etcd_server, "gateway")
    config = demo_config()
    config["mesh"] = {"id": "cfgtest"}
    m = Mesh(tmp_path, config)
    m.write()
    try:
        m.start_services()
        # a config that fails validation is never stored
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**config, "routes": [{"name": "x", "match": {"path": {"prefix": "/x"}},
                                                             "forward": {"service": "nowhere"}}]}))
        r = mitmesh("config", "push", str(bad), "--store", store, cwd=tmp_path)
        assert r.returncode == 1 and "bad.yaml:" in r.stdout + r.stderr and "nowhere" in r.stdout + r.stderr, r
        r = mitmesh("config", "history", "--store", f"{store}/cfgtest", cwd=tmp_path)
        assert "no config pushed yet" in r.stdout, r

        r = mitmesh("config", "push", str(m.path), "--store", store, "-m", "first", cwd=tmp_path)
        assert r.returncode == 0 and "revision 1 " in r.stdout, r
        # a proxy without a certificate of the mesh CA reads nothing: none at all, or another mesh's
        gateway = ["gateway", "--workers", "1", "--config", f"{store}/cfgtest"]
        lost = mitmesh(*gateway, cwd=tmp_path.parent)
        missing = ("the workload certificate of gateway for etcd: ca: no such file "
                   "(got 'certs/mesh-ca.pem')")
        assert lost.returncode == 1 and missing in lost.stderr, lost
        rogue = tmp_path / "rogue"
        pki.init_mesh(rogue / "certs", "mitmesh.local")
        spiffe = pki.spiffe_id("mitmesh.local", "demo", "gateway")
        pki.issue_workload(rogue / "certs", "gateway", spiffe)
        lost = mitmesh(*gateway, cwd=rogue)
        assert lost.returncode == 1 and "cannot read the config" in lost.stderr, lost
        # the gateway reads its config from etcd
        m.children["gateway"] = gw = procs.spawn(
            "gateway", procs.python("-m", "mesh.cli", "gateway", "--workers", "1", "--config",
                                    f"{store}/cfgtest"), log_dir=tmp_path / "logs", cwd=str(tmp_path))
        procs.wait_log(gw, "gateway ready", timeout=60)
        assert get(m.url + "/users")[0] == 200
        assert get(m.url + "/hello")[0] == 404
        got = control(m)
        assert (got["revision"], got["stale"], got["source"]) == (1, False, f"{store}/cfgtest")
        assert "mitmesh_config_revision 1.0" in metrics_text(m)
        # when the operator certificate that signed it expires: a proxy starting later refuses it
        until = float(re.search(r"^mitmesh_config_signature_expiry_timestamp_seconds (\S+)$",
                                metrics_text(m), re.M).group(1))
        assert 89 * 86400 < until - time.time() <= 90 * 86400
        assert got["signed_until"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))

        # revision 2: a new route, applied live
        config["routes"].insert(0, {"name": "hello", "match": {"path": {"exact": "/hello"}},
                                    "direct": {"status": 200, "body": {"hello": "etcd"}}})
        m.write(config)
        r = mitmesh("config", "push", str(m.path), "--store", store, cwd=tmp_path)
        assert "revision 2 " in r.stdout, r
        wait_until(lambda: control(m)["revision"] == 2, timeout=20)
        assert get(m.url + "/hello")[0] == 200
        assert "mitmesh_config_revision 2.0" in metrics_text(m)

        # revision 3 written around the CLI (signed by the operator), invalid: the gateway keeps
        # 2 and says why
        async def sneak():
            tls = operator_tls(etcd_server)
            etcd = Etcd([etcd_server.client_url], tls=tls)
            try:
                await Store(etcd, "cfgtest", Signer.load(tls.cert, tls.key)).push(
                    "version: 1\nroutes: [{name: x}]\n", "mesh.yaml")
            finally:
                await etcd.close()
        asyncio.run(sneak())
        refused = wait_until(lambda: control(m)["refused"], timeout=20)
        got = control(m)
        assert (got["revision"], got["wanted"]) == (2, 3)
        assert "mesh.yaml@r3:" in refused and "revision 3 not applied, still running 2" in refused, refused
        assert get(m.url + "/hello")[0] == 200

        # rollback to 1: stored again as revision 4, applied; the route added in 2 is gone
        r = mitmesh("config", "rollback", "1", "--store", f"{store}/cfgtest", cwd=tmp_path)
        assert r.returncode == 0 and "revision 4 " in r.stdout, r
        wait_until(lambda: control(m)["revision"] == 4, timeout=20)
        assert get(m.url + "/hello")[0] == 404
        assert control(m)["refused"] is None
        r = mitmesh("config", "history", "--store", f"{store}/cfgtest", cwd=tmp_path)
        lines = r.stdout.splitlines()
        assert len(lines) == 5 and lines[-1].startswith("*") and "rollback to 1" in lines[-1], r.stdout
        assert "first" in lines[1]
        r = mitmesh("config", "rollback", "9", "--store", f"{store}/cfgtest", cwd=tmp_path)
        assert r.returncode == 2 and "no revision 9" in r.stderr, r
    finally:
        m.stop()
