"""`mitmesh up --control-plane etcd`: a local etcd holds the config and the instances; a push
reaches the running demo; Ctrl-C stops etcd too."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import yaml

from mesh.runtime import procs

from .conftest import get, wait_until
from .test_cli import MITMESH, _alive, up_config


def test_up_with_etcd_control_plane(tmp_path):
    config = up_config(tmp_path, services=("users", "catalog"))
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    etcd_port = procs.free_port()
    log = tmp_path / "up.log"
    proc = subprocess.Popen(MITMESH + ["up", "--config", str(path), "--control-plane", "etcd",
                                       "--etcd-port", str(etcd_port), "--workers", "1"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    etcd_pid = None
    try:
        wait_until(lambda: "\nready\n" in log.read_text() or proc.poll() is not None, timeout=90)
        out = log.read_text()
        assert proc.poll() is None, out
        store = f"etcds://127.0.0.1:{etcd_port}/{config['mesh']['id']}"
        found = re.search(r"^control-plane: (\S+) \(etcd pid (\d+); mutual TLS, mesh CA; "
                          r"`mitmesh config push\|history\|rollback "
                          r"--store (\S+)((?: --\S+ \S+)*)`\)$", out, re.M)
        assert found and found[1] == found[3] == store, out
        etcd_pid = int(found[2])
        # run from another folder than the demo's, the operator's files are named in the line
        operator = found[4].split()
        certs = tmp_path / "certs"
        assert operator == ["--cacert", str(certs / "mesh-ca.pem"), "--cert",
                            str(certs / "operator.pem"), "--key", str(certs / "operator.key")], out
        port = config["gateway"]["listeners"][0]["port"]
        assert get(f"http://127.0.0.1:{port}/users/alice")[0] == 200
        admin = f"http://127.0.0.1:{config['gateway']['admin']['port']}/status"
        status = json.load(urllib.request.urlopen(admin))
        assert status["control_plane"]["config"]["revision"] == 1
        assert status["control_plane"]["stale"] is False
        etcd_found = {i["service"] for i in status["registry"]["instances"] if i["source"] == "etcd"}
        assert etcd_found == {"users", "catalog"}

        config["routes"].insert(0, {"name": "hello", "match": {"path": {"exact": "/hello"}},
                                    "direct": {"body": {"hello": "etcd"}}})
        path.write_text(yaml.safe_dump(config))
        push = [sys.executable, "-m", "mesh.cli", "config", "push", str(path), "--store", store]
        # the demo's etcd refuses a client without a certificate of the mesh CA
        r = subprocess.run(push, capture_output=True, text=True, timeout=60, cwd=tmp_path.parent)
        missing = "--cacert: no such file (got 'certs/mesh-ca.pem')"
        assert r.returncode == 2 and missing in r.stderr, r
        plain = push[:-1] + [store.replace("etcds://", "etcd://")]
        r = subprocess.run(plain, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "revision" not in r.stdout, r  # refused: the next one is 2
        r = subprocess.run(push + operator, capture_output=True, text=True, timeout=60)
        assert "revision 2 " in r.stdout, r
        wait_until(lambda: get(f"http://127.0.0.1:{port}/hello")[0] == 200, timeout=20)
        # the pushed file names no discovery.etcd: proxies keep discovering through the store's etcd
        status = json.load(urllib.request.urlopen(admin))
        assert status["control_plane"]["config"]["revision"] == 2
        assert {i["service"] for i in status["registry"]["instances"] if i["source"] == "etcd"} == etcd_found

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        wait_until(lambda: not _alive(etcd_pid), timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if etcd_pid and _alive(etcd_pid):
            os.kill(etcd_pid, signal.SIGKILL)
