"""Pods (isolation: pod): the demo through `mitmesh up`, every instance in a network namespace of
its own, checked from the places an attacker would stand: this host, the mesh's bridge, and another
pod's app (its own uid, no proxy setting, its traffic captured by its sidecar)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.config import load
from mesh.core import podnet
from mesh.runtime import admin
from tools import launcher, pods
from tools.testbed import running_demo, wait_until

# the first test also starts the demo twice (the first one SIGKILLed): minutes on a loaded machine
pytestmark = [pytest.mark.skipif(pods.why_not() is not None, reason=str(pods.why_not())),
              pytest.mark.timeout(360)]

# what an app runs to call a URL: JSON with the status and body, or the connection's error
CALL = """
import json, sys, urllib.error, urllib.request
url, data = sys.argv[1], (sys.argv[2].encode() if len(sys.argv) > 2 else None)
req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read() or b"null")}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": json.loads(e.read() or b"null")}))
except OSError as e:
    print(json.dumps({"status": None, "error": str(e)}))
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """The demo in pods. A first `up` of the same config is SIGKILLed first: the second one finds
    its namespaces by name and removes them, saying so."""
    tmp = tmp_path_factory.mktemp("pods")
    with running_demo(tmp, isolation="pod") as first:
        prefix = pods.prefix_of(first["config"])
        assert len(pods.stale(prefix)) == 9, first["log"].read_text()  # 8 pods and the mesh's
        out = first["log"].read_text()
        children = [int(p) for p in re.findall(r"^(?:service|sidecar|gateway-pid):.* (\d+)$", out, re.M)]
        assert len(children) == 8 + 2 + 8 + 1, out  # apps (a function among them), bare apps, sidecars, gateway
        first["proc"].send_signal(signal.SIGKILL)
        first["proc"].wait(10)
        # its children stop on their parent's death (the apps too, though they changed uid)
        wait_until(lambda: not any(_alive(p) for p in children), 30)
    assert len(pods.stale(prefix)) == 9  # nobody cleaned up after the SIGKILL
    (tmp / "up.log").rename(tmp / "first.log")
    with running_demo(tmp, isolation="pod") as demo:
        out = demo["log"].read_text()
        demo["out"] = out
        demo["pods"] = {m[0]: (m[1], int(m[2]), int(m[3])) for m in re.findall(
            r"^service: (\S+) http://127\.0\.0\.1:8000 in pod (\S+) as uid (\d+) pid (\d+)$", out, re.M)}
        demo["addresses"] = dict(re.findall(r"^sidecar: (\S+) inbound https://([\d.]+):", out, re.M))
        demo["mesh_ns"] = f"{prefix}-mesh"
        yield demo
    # a clean stop removes every namespace it made
    assert pods.stale(prefix) == [], pods.stale(prefix)
    assert "removed 8 pods and the mesh namespace" in demo["log"].read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, OSError):
        return False


def as_app(mesh: dict, instance: str, *argv: str) -> subprocess.CompletedProcess:
    """Run argv in `instance`'s pod exactly as its app runs: its namespace, hosts file and uid."""
    ns, uid, _ = mesh["pods"][instance]
    state = launcher.state_dir(mesh["config"]) / "pods"
    index = ns.rsplit("-p", 1)[1]
    runner = [sys.executable, "-m", "tools.pods", "--netns", ns, "--hosts", str(state / f"hosts-p{index}"),
              "--uid", str(uid), "--mounts", str(state / "mnt"), "--", *argv]
    return subprocess.run(runner, capture_output=True, text=True, timeout=30, cwd=str(launcher.ROOT))


def call(mesh: dict, instance: str, url: str, data: str | None = None) -> dict:
    done = as_app(mesh, instance, sys.executable, "-c", CALL, url, *([data] if data else []))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def from_bridge(mesh: dict, fn, *args):
    """`fn` run in the mesh namespace, as any process on the pods' bridge would."""
    with podnet.entered(mesh["mesh_ns"]):
        sock = socket.socket()
    try:
        sock.settimeout(2)
        return fn(sock, *args)
    finally:
        sock.close()


def plain_get(sock: socket.socket, address: str, port: int, path: str) -> bytes:
    sock.connect((address, port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-length: 14\r\n\r\n"
                 '{"amount": 5}\n'.encode())
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def test_apps_run_as_uids_of_their_own_and_cannot_read_keys_or_change_rules(mesh):
    uids = {uid for _, uid, _ in mesh["pods"].values()}
    assert len(mesh["pods"]) == 8 and len(uids) == 8 and 0 not in uids
    for _, uid, pid in mesh["pods"].values():
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("Uid:"))
        assert line.split()[1:] == [str(uid)] * 4
    key = mesh["config"].parent / "certs" / "workload" / "orders.key"
    assert key.exists()
    read = as_app(mesh, "users-v1-1", sys.executable, "-c", f"open({str(key)!r}).read()")
    assert read.returncode != 0 and "PermissionError" in read.stderr
    nft = as_app(mesh, "users-v1-1", "nft", "flush", "ruleset")
    assert nft.returncode != 0 and "Operation not permitted" in nft.stderr
    listed = subprocess.run(["ip", "netns", "exec", mesh["pods"]["users-v1-1"][0], "nft", "list", "table",
                             "inet", "mitmesh"], capture_output=True, text=True)
    assert "redirect to :15001" in listed.stdout  # still there


def test_no_direct_way_to_an_app(mesh):
    payments = mesh["addresses"]["payments-v1-1"]
    # from this host: the pods' addresses exist only inside the mesh's namespaces (never connect to
    # them from here: this namespace would route them out of the machine)
    here = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert podnet.SUBNET + "." not in here and "240.240." not in here
    # from the bridge: the app's port leads to the sidecar inbound, which speaks mTLS only
    answer = from_bridge(mesh, plain_get, payments, 8000, "/charge")
    assert b"charged" not in answer and not answer.startswith(b"HTTP/1.1 2"), answer
    # from another pod's app: its own sidecar takes the connection; the pod is no mesh service
    got = call(mesh, "users-v1-1", f"http://{payments}:8000/charge", '{"amount": 5}')
    assert got["status"] == 403 and got["body"]["error"] == "egress_denied", got
    # and the same pod's own app from its bridge address: refused at its pod's door
    assert from_bridge(mesh, lambda s: s.connect_ex((payments, 8001))) != 0


def test_no_pod_reaches_another_pods_outbound_listener(mesh):
    orders = mesh["addresses"]["orders-v1-1"]
    # from the bridge: the outbound listener is on the pod's loopback, its port closed to eth0
    with pytest.raises(OSError):
        from_bridge(mesh, lambda s: s.connect((orders, 15001)))
    # from another pod's app: captured by its own sidecar, which refuses a destination outside the mesh
    got = call(mesh, "users-v1-1", f"http://{orders}:15001/charge", '{"amount": 5}')
    assert got["status"] == 403 and got["body"]["error"] == "egress_denied", got
    # an app's own outbound listener, called directly rather than through the capture: reset
    got = call(mesh, "users-v1-1", "http://127.0.0.1:15001/")
    assert got["status"] is None and ("reset" in got["error"].lower() or "refused" in got["error"].lower()), got


def test_apps_call_services_by_name_with_their_own_identity(mesh):
    hosts = as_app(mesh, "orders-v1-1", "cat", "/etc/hosts").stdout
    assert re.search(r"^240\.240\.\d+\.\d+\tpayments$", hosts, re.M), hosts
    # no proxy setting: `payments` resolves to its virtual address, the sidecar does the rest
    got = call(mesh, "orders-v1-1", "http://payments/charge", '{"amount": 5}')
    assert got["status"] == 200 and got["body"]["service"] == "payments", got
    # users' app is no orders: payments' sidecar refuses its identity
    got = call(mesh, "users-v1-1", "http://payments/charge", '{"amount": 5}')
    assert got["status"] == 403 and got["body"]["error"] != "egress_denied", got
    # the hop between the sidecars was mTLS with the caller's SPIFFE ID (payments' sidecar saw it)
    config = mesh["config"]
    token = admin.read_token(admin.token_path(config, load(config), sidecar=True))
    with podnet.entered(mesh["mesh_ns"]):  # the whole request: its socket is made in there
        conn = http.client.HTTPConnection(mesh["addresses"]["payments-v1-1"], 15000, timeout=5)
        # the recent requests are not for the pod's network neighbours: the token, or loopback
        conn.request("GET", "/flows")
        refused = conn.getresponse()
        assert refused.status == 401 and b"/flows shows traffic" in refused.read()
        conn.request("GET", "/flows", headers={"Authorization": f"Bearer {token}"})
        flows = json.loads(conn.getresponse().read())["flows"]
        conn.request("GET", "/metrics")  # what Prometheus scrapes stays open
        scraped = conn.getresponse()
        assert scraped.status == 200 and b"mitmesh_" in scraped.read()
    peers = {f.get("peer") or f.get("principal") for f in flows if f.get("direction") == "inbound"}
    assert "spiffe://mitmesh.local/ns/demo/sa/orders" in peers, flows[-2:]
    assert "spiffe://mitmesh.local/ns/demo/sa/users" in peers, flows[-2:]


def test_the_gateway_reaches_pods_and_the_orders_app_its_dependencies(mesh):
    status, body, _ = procs_get(f"{mesh['url']}/orders", {"x-api-key": "mk_demo_acme_7Qx2Lr9VfT3pWz8K"},
                                b'{"item_id": 1}')
    assert status == 200 and body["order"]["payments"] == "payments-v1-1", body
    assert "isolation: pod: 8 pods in network namespaces" in mesh["out"]
    # the SIGKILLed first `up` left its namespaces; this one removed them before making its own
    assert "mitmesh up: removed 9 stale namespaces of an earlier up of this config" in mesh["out"]


def test_a_function_in_its_pod_runs_forks_of_its_own_function_fork_server(mesh):
    from tools.testbed import get

    status, body, _ = get(mesh["url"] + "/catalog-view/", timeout=15)
    assert status == 200 and body["items"] == 4, body

    def info(pid: str) -> tuple[str, int, int, str]:
        status = Path(f"/proc/{pid}/status").read_text()
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(), ppid, uid,
                os.readlink(f"/proc/{pid}/ns/net"))

    procs_now = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            procs_now[int(pid)] = info(pid)
        except (OSError, AttributeError):
            pass
    # `mitmesh function catalog-view` in its pod started the fork server; the instance is its child
    servers = [pid for pid, (cmd, ppid, _, _) in procs_now.items() if "--preload functions" in cmd
               and ppid in procs_now and "function catalog-view" in procs_now[ppid][0]]
    assert len(servers) == 1, servers
    server = procs_now[servers[0]]
    host = procs_now[server[1]]
    instances = [p for p, (_, ppid, _, _) in procs_now.items() if ppid == servers[0]]
    assert instances
    for p in instances:  # in the pod's namespace, as the pod's uid, like the function host
        assert procs_now[p][2] == server[2] == host[2] != 0
        assert procs_now[p][3] == server[3] == host[3] != os.readlink("/proc/self/ns/net")


def procs_get(url, headers, data):
    from tools.testbed import get

    return get(url, headers=headers, data=data)


def test_record_reaches_the_sidecars_in_their_pods(mesh, tmp_path):
    """`mitmesh record` finds every proxy of the running demo (up.json) and asks the pods' admin
    listeners through the mesh's namespace, never from this one."""
    out = tmp_path / "flows.mitm"
    rec = subprocess.Popen([sys.executable, "-m", "mesh.cli", "record", "--config", str(mesh["config"]),
                            "--seconds", "8", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, cwd=str(mesh["config"].parent))
    try:
        while rec.poll() is None:  # calls while it records: orders' app → payments, through both sidecars
            assert call(mesh, "orders-v1-1", "http://payments/charge", '{"amount": 1}')["status"] == 200
        text, _ = rec.communicate(timeout=30)
    finally:
        if rec.poll() is None:
            rec.kill()
    assert rec.returncode == 0, text
    started = re.findall(r"^recording at (\S+) ", text, re.M)
    assert len(started) == 9 and sum(podnet.in_subnet(u.split("//")[1].split(":")[0]) for u in started) == 8, text
    assert out.exists() and out.stat().st_size > 0, text
