"""The mitmesh command line: validate's errors, and `up` starting and stopping everything it started."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from mesh.runtime import procs

from .conftest import demo_config, get, sidecar_config, wait_until

MITMESH = [sys.executable, "-m", "mesh.cli"]


def test_validate_ok_and_three_mistakes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(demo_config()))
    out = subprocess.run(MITMESH + ["validate", str(good)], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "ok\n")

    text = good.read_text()
    text = text.replace("prefix: /users", "prefx: /users", 1)
    text = text.replace("service: orders", "service: order", 1)
    text = text.replace("app: payments", "app: billing", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = subprocess.run(MITMESH + ["validate", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stdout
    for line in lines:
        assert line.startswith(f"{bad}:")
    assert any("routes[0].match.path.prefx: unknown key" in l for l in lines)
    assert any("routes[3].forward.service: unknown service" in l for l in lines)
    assert any("services.payments.versions.v1.launch.app: expected one of" in l and "(got 'billing')" in l
               for l in lines)
    for line in lines:  # the line number points at the offending key
        number = int(line.split(":")[1])
        assert any(k in text.splitlines()[number - 1] for k in ("prefx", "order", "billing"))


def _pids(output: str) -> dict[str, int]:
    pids = {}
    for line in output.splitlines():
        if line.startswith("service: "):
            parts = line.split()
            pids[parts[1]] = int(parts[-1])
        elif line.startswith("sidecar: "):
            parts = line.split()
            pids[parts[1] + ".sidecar"] = int(parts[-1])
        elif line.startswith("gateway-pid: "):
            pids["gateway"] = int(line.split()[-1])
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _start_up(tmp_path: Path, config: dict) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "up.log"
    proc = subprocess.Popen(MITMESH + ["up", "--config", str(path)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def up_config(tmp_path: Path, services=("users", "catalog", "orders", "payments")) -> dict:
    """The demo's shape, with sidecars: each launched instance on a loopback address of this test."""
    first = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.2"
    config = sidecar_config(first.rsplit(".", 1)[0] + ".1")
    config["gateway"]["listeners"].append({"name": "public-tls", "port": procs.free_port(), "tls": {
        "cert": str(tmp_path / "certs" / "edge.pem"), "key": str(tmp_path / "certs" / "edge.key")}})
    ports = random.sample(range(20000, 60000), 3)
    config["sidecar"].update({"first_address": first, "inbound": {"port": ports[0]},
                              "outbound": {"port": ports[1]}, "admin": {"port": ports[2]}})
    config["services"] = {s: {"versions": {"v1": {"launch": {"app": s}}}} for s in services}
    config["routes"] = [r for r in config["routes"] if r["forward"]["service"] in services]
    return config


def test_up_prints_urls_and_stops_everything_on_sigterm(tmp_path):
    config = up_config(tmp_path)
    proc, log = _start_up(tmp_path, config)
    try:
        wait_until(lambda: "\nready\n" in log.read_text() or proc.poll() is not None, timeout=60)
        out = log.read_text()
        assert proc.poll() is None, out
        port = config["gateway"]["listeners"][0]["port"]
        tls_port = config["gateway"]["listeners"][1]["port"]
        assert f"gateway: http://127.0.0.1:{port}\n" in out
        assert f"gateway-tls: https://127.0.0.1:{tls_port}\n" in out
        first = get(f"http://127.0.0.1:{port}/users/alice")
        assert first[1].get("service") == "users", (first, out)
        pids = _pids(out)
        assert len(pids) == 9 and all(_alive(p) for p in pids.values())  # 4 apps, 4 sidecars, gateway

        # the orders app calls catalog and payments through its sidecar, found over mDNS
        status, body, _ = get(f"http://127.0.0.1:{port}/orders", data=b'{"item_id": 1, "quantity": 1}')
        assert status == 200 and body["order"]["catalog"] == "catalog-v1-1", body
        # every proxy's /status shows its registry: instances, zone, health, weight
        admin = config["gateway"]["admin"]["port"]
        instances = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status"))["registry"]["instances"]
        assert sorted(i["service"] for i in instances) == ["catalog", "orders", "payments", "users"]
        assert all(i["healthy"] is not False and i["weight"] == 1 and "zone" in i for i in instances)
        sidecar_admin = next(l.split()[-3] for l in out.splitlines() if l.startswith("sidecar: orders-v1-1"))
        mine = json.load(urllib.request.urlopen(sidecar_admin))
        assert mine["workload"]["instance"] == "orders-v1-1" and len(mine["registry"]["instances"]) == 4

        # a service that dies is reported, the rest keeps running
        os.kill(pids["users-v1-1"], signal.SIGKILL)
        wait_until(lambda: "exited: users-v1-1" in log.read_text())
        assert get(f"http://127.0.0.1:{port}/catalog/items")[0] == 200

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "stopped" in log.read_text()
        wait_until(lambda: not any(_alive(p) for p in pids.values()), timeout=5)
        assert not procs.port_open("127.0.0.1", port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_killed_launcher_leaves_no_orphans(tmp_path):
    config = up_config(tmp_path, services=("users",))
    config["services"]["catalog"] = demo_config()["services"]["catalog"]  # bare apps too
    proc, log = _start_up(tmp_path, config)
    try:
        wait_until(lambda: "\nready\n" in log.read_text() or proc.poll() is not None, timeout=60)
        pids = _pids(log.read_text())
        assert "users-v1-1.sidecar" in pids and "catalog-v1-2" in pids, log.read_text()
        proc.kill()  # no chance to clean up: children must still go (parent-death signal)
        proc.wait(5)
        wait_until(lambda: not any(_alive(p) for p in pids.values()), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def _bare_mesh(path: Path) -> dict:
    """A small mesh of bare apps (static endpoints, no sidecars) on free ports, written to `path`."""
    config = demo_config()
    config["services"] = {"users": config["services"]["users"]}
    config["routes"] = [r for r in config["routes"] if r["forward"]["service"] == "users"]
    path.write_text(yaml.safe_dump(config))
    return config


def _ready(proc: subprocess.Popen, log: Path) -> str:
    wait_until(lambda: "\nready\n" in log.read_text() or proc.poll() is not None, timeout=60)
    assert proc.poll() is None, log.read_text()
    return log.read_text()


def _logs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.log"))}


def test_two_meshes_from_one_folder_keep_their_own_logs_and_ports(tmp_path):
    """A second `up` of a running config is refused; one that needs a taken address names it and
    its holder and starts nothing; one with ports of its own runs beside the first, each mesh with
    its logs in .mitmesh/<config name>/ (nothing truncated)."""
    first = _bare_mesh(tmp_path / "mesh.yaml")
    a = subprocess.Popen(MITMESH + ["up", "--config", str(tmp_path / "mesh.yaml"), "--workers", "1"],
                         stdout=open(tmp_path / "a.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    procs_started = [a]
    try:
        pids = _pids(_ready(a, tmp_path / "a.log"))
        a_logs = tmp_path / ".mitmesh" / "mesh" / "logs"
        before = _logs(a_logs)
        assert {"gateway.log", "users-v1-1.log"} <= set(before)

        again = subprocess.run(MITMESH + ["up", "--config", str(tmp_path / "mesh.yaml")],
                               capture_output=True, text=True, timeout=30)
        assert again.returncode == 1
        assert f"{tmp_path / 'mesh.yaml'} is already up (pid {a.pid})" in again.stderr

        clash = _bare_mesh(tmp_path / "other.yaml")  # same folder, two of the first mesh's addresses
        gateway_port = first["gateway"]["listeners"][0]["port"]
        app = first["services"]["users"]["versions"]["v1"]["endpoints"][0]
        clash["gateway"]["listeners"][0]["port"] = gateway_port
        clash["services"]["users"]["versions"]["v1"]["endpoints"] = [app]
        (tmp_path / "other.yaml").write_text(yaml.safe_dump(clash))
        refused = subprocess.run(MITMESH + ["up", "--config", str(tmp_path / "other.yaml")],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1, refused.stdout
        assert "mitmesh up: nothing started; these addresses are not free:" in refused.stderr
        assert f"  {app} (users-v1-1 app) is taken (by pid {pids['users-v1-1']}, python -m services.users" \
            in refused.stderr
        assert f"  127.0.0.1:{gateway_port} (gateway listener public) is taken (by pid " in refused.stderr
        assert "service:" not in refused.stdout and not (tmp_path / ".mitmesh" / "other" / "logs").exists()

        second = _bare_mesh(tmp_path / "other.yaml")  # ports of its own: it runs beside the first
        b = subprocess.Popen(MITMESH + ["up", "--config", str(tmp_path / "other.yaml"), "--workers", "1"],
                             stdout=open(tmp_path / "b.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        procs_started.append(b)
        out = _ready(b, tmp_path / "b.log")
        assert f"logs: {tmp_path / '.mitmesh' / 'other' / 'logs'}" in out
        for config in (first, second):
            assert get(f"http://127.0.0.1:{config['gateway']['listeners'][0]['port']}/users/alice")[0] == 200
        after = _logs(a_logs)
        assert all(after[name].startswith(text) for name, text in before.items())  # appended to, never cut
        assert _logs(tmp_path / ".mitmesh" / "other" / "logs").keys() == before.keys()
    finally:
        for proc in procs_started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs_started:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_an_app_is_up_only_if_it_is_ours_that_answers(tmp_path):
    """Another mesh's app on the same address answers /healthz too; `up` checks the pid it reports."""
    from tools import launcher

    port = procs.free_port()
    app = procs.spawn("users", procs.python("-m", "services.users", "--host", "127.0.0.1", "--port", str(port)),
                      log_dir=tmp_path)
    try:
        wait_until(lambda: procs.port_open("127.0.0.1", port), timeout=20)
        assert launcher._healthy("127.0.0.1", port, app.pid)
        assert not launcher._healthy("127.0.0.1", port, app.pid + 100_000)
    finally:
        app.stop()
