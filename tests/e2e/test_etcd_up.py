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
        store = f"etcd://127.0.0.1:{etcd_port}/{config['mesh']['id']}"
        found = re.search(r"^control-plane: (\S+) \(etcd pid (\d+);", out, re.M)
        assert found and found[1] == store, out
        etcd_pid = int(found[2])
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
        r = subprocess.run([sys.executable, "-m", "mesh.cli", "config", "push", str(path), "--store", store],
                           capture_output=True, text=True, timeout=60)
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
