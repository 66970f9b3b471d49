"""Several hosts (network namespaces on one bridge): the gateway, catalog, payments and orders each
on a host of its own, finding each other over mDNS on their veth addresses. Each instance runs in a
pod inside its host, as `mitmesh up` runs it as root (isolation: pod): a namespace of its own
joined to its host's bridge, its app on the pod's loopback behind nftables capture, so its sidecar
really is the only way in, and the app calls services by name with no proxy setting."""

from __future__ import annotations

import asyncio
import json
import secrets
import os
import signal
import subprocess
import urllib.request

import pytest
import yaml

from discovery import Registry
from discovery.mdns import MdnsSource
from tools import netns, pods
from mesh.config import load
from mesh.core.sidecar import virtual_addresses
from mesh.runtime import admin, procs

from .conftest import get, wait_until

pytestmark = pytest.mark.skipif(netns.why_not() is not None, reason=str(netns.why_not()))

INBOUND, OUTBOUND, ADMIN, APP, GATEWAY, GATEWAY_ADMIN = 15006, 15001, 15000, 8000, 8080, 9901


@pytest.fixture
def hosts(tmp_path):
    net = netns.Network(["edge", "h1", "h2", "h3"], pods=pods.why_not() is None)
    children: list[procs.Child] = []
    net.pods = []
    try:
        try:
            net.create()
        except RuntimeError as e:
            pytest.skip(f"cannot make network namespaces here: {e}")
        net.children = children
        net.tmp = tmp_path
        yield net
    finally:
        procs.stop_all(children)
        for made in net.pods:
            made.close()
        net.close()


def start(net, host: str, name: str, argv: list[str], ready: str) -> procs.Child:
    return spawn(net, name, net.argv(host, argv), ready)


def spawn(net, name: str, argv: list[str], ready: str, cwd: str | None = None) -> procs.Child:
    child = procs.spawn(name, argv, log_dir=net.tmp / "logs", cwd=cwd or str(net.tmp))
    net.children.append(child)
    child.ready = ready
    return child


@pytest.mark.skipif(pods.why_not() is not None, reason=f"pods: {pods.why_not()}")
def test_services_in_pods_on_different_hosts_find_each_other(hosts):
    net = hosts
    edge = net.address("edge")
    mesh_id = f"t-{secrets.token_hex(4)}"
    config = {
        "version": 1,
        "mesh": {"id": mesh_id},
        "gateway": {"listeners": [{"name": "public", "address": edge, "port": GATEWAY}],
                    "admin": {"address": edge, "port": GATEWAY_ADMIN}},
        "discovery": {"mdns": {"interfaces": [edge]}},
        "sidecar": {"inbound": {"port": INBOUND}, "outbound": {"port": OUTBOUND},
                    "admin": {"port": ADMIN}, "drain": "500ms"},
        "services": {s: {"versions": {"v1": {}}} for s in ("catalog", "payments", "orders")},
        "routes": [{"name": "orders", "match": {"path": {"prefix": "/orders"}}, "forward": {"service": "orders"}}],
    }
    path = net.tmp / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    token = admin.token_path(path, load(path), sidecar=True)
    admin.ensure_token(token)  # /flows from another address than loopback: with the token
    auth = {"Authorization": f"Bearer {admin.read_token(token)}"}
    placed = {"catalog": "h1", "payments": "h2", "orders": "h3"}
    vips = virtual_addresses(load(path).services)
    starting, at = [], {}
    for service, host in placed.items():
        in_host = pods.in_host(net, host, net.tmp / f"pods-{host}")
        net.pods.append(in_host)
        in_host.create()
        pod = in_host.add(service, APP, INBOUND, OUTBOUND, ADMIN, vips)
        at[service] = pod.address
        argv = procs.python("-m", f"services.{service}", "--host", "127.0.0.1", "--port", str(APP),
                            "--instance", f"{service}-on-{host}")
        if service == "orders":  # by name, no proxy setting: the pod's nftables capture the calls
            argv += ["--catalog-url", "http://catalog", "--payments-url", "http://payments"]
        starting.append(spawn(net, service, in_host.app_argv(pod, argv), "listening on", cwd=str(pods.ROOT)))
        starting.append(spawn(net, f"{service}.sidecar", in_host.sidecar_argv(pod, procs.python(
            "-m", "mesh.cli", "sidecar", "--config", str(path), "--service", service, "--capture", "transparent",
            "--app", f"127.0.0.1:{APP}", "--address", pod.address, "--instance", f"{service}-on-{host}")),
            "announced "))
    gateway = start(net, "edge", "gateway", procs.python("-m", "mesh.cli", "gateway", "--config", str(path),
                                                         "--workers", "1"), "gateway ready")
    for child in starting + [gateway]:
        procs.wait_log(child, child.ready)

    def registry(admin: str = f"{edge}:{GATEWAY_ADMIN}"):
        status = json.load(urllib.request.urlopen(f"http://{admin}/status", timeout=5))
        return {i["service"]: i for i in status["registry"]["instances"]}

    found = net.call("edge", wait_until, lambda: len(r := registry()) == 3 and r, 10)
    assert {s: i["address"] for s, i in found.items()} == {s: f"{at[s]}:{INBOUND}" for s in placed}
    assert all(net.address("h1") != a for a in at.values())  # the pods' own addresses, not the hosts'
    # every proxy converges on its own (a responder answers a record at most once a second)
    for service, host in placed.items():
        net.call(host, wait_until, lambda a=at[service]: len(registry(f"{a}:{ADMIN}")) == 3, 10)

    # edge → orders' host → its app → its sidecar → catalog's and payments' hosts
    status, body, _ = net.call("edge", get, f"http://{edge}:{GATEWAY}/orders",
                               headers={"x-request-id": "across-hosts"},
                               data=json.dumps({"item_id": 4, "quantity": 1}).encode())
    assert status == 200, body
    assert (body["order"]["catalog"], body["order"]["payments"]) == ("catalog-on-h1", "payments-on-h2")
    flows = net.call("h3", lambda: json.load(urllib.request.urlopen(urllib.request.Request(
        f"http://{at['orders']}:{ADMIN}/flows", headers=auth), timeout=5))["flows"])
    out = {(f["host"], f["endpoint"]) for f in flows
           if f["request_id"] == "across-hosts" and f["direction"] == "outbound"}
    assert out == {("catalog", f"{at['catalog']}:{INBOUND}"), ("payments", f"{at['payments']}:{INBOUND}")}
    # the apps are on their pods' loopback: from another host, a connection to the app's port is
    # taken by its sidecar's inbound (seen in its flows), and the host's own address has nothing on it
    net.call("h3", get, f"http://{at['catalog']}:{APP}/items/1", headers={"x-request-id": "app-port"})
    inbound = net.call("h1", lambda: json.load(urllib.request.urlopen(urllib.request.Request(
        f"http://{at['catalog']}:{ADMIN}/flows", headers=auth), timeout=5))["flows"])
    assert [f["direction"] for f in inbound if f["request_id"] == "app-port"] == ["inbound"]
    with pytest.raises(OSError):
        net.call("h3", urllib.request.urlopen, f"http://{net.address('h1')}:{APP}/healthz", None, 2)

    # a graceful stop on one host is seen on another within a second (the goodbye crosses hosts)
    catalog_sidecar = next(c for c in starting if c.name == "catalog.sidecar")
    catalog_sidecar.proc.send_signal(signal.SIGTERM)
    net.call("edge", wait_until, lambda: "catalog" not in registry(), 1.0)


async def test_nothing_of_the_namespaces_reaches_this_host(hosts):
    """mDNS in the namespaces stays on their bridge: a browser here, on loopback, sees nothing."""
    net = hosts
    mesh_id = f"t-{secrets.token_hex(4)}"
    h1 = net.address("h1")
    path = net.tmp / "mesh.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "mesh": {"id": mesh_id},
        "gateway": {"listeners": [{"name": "public", "address": net.address("edge"), "port": GATEWAY}]},
        "discovery": {"mdns": {"interfaces": [net.address("edge")]}},
        "services": {"users": {"versions": {"v1": {}}}}}))
    start(net, "h1", "users", procs.python("-m", "services.users", "--host", "127.0.0.1", "--port", str(APP)),
          "listening on")
    sidecar = start(net, "h1", "users.sidecar", procs.python(
        "-m", "mesh.cli", "sidecar", "--config", str(path), "--service", "users",
        "--app", f"127.0.0.1:{APP}", "--address", h1), "announced ")
    here = Registry()
    browser = MdnsSource(mesh_id, ["127.0.0.1"])
    await browser.start(here)
    try:
        await asyncio.to_thread(procs.wait_log, sidecar, "announced ")
        await asyncio.sleep(1.0)  # announcements and their repeats are out by now
        assert here.instances == {}
    finally:
        await browser.stop()


def test_namespaces_a_killed_run_left_are_removed_by_the_next_run():
    """A run SIGKILLed (a test's timeout) cannot remove its namespaces; the next Network of the
    same tag removes those whose pid is dead, and leaves a live run's alone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, alive = f"mm4-{gone.pid}-beef-h1", f"mm4-{os.getpid()}-beef-h1"
    for name in (dead, alive):
        subprocess.run(["ip", "netns", "add", name], check=True)
    net = netns.Network(["a"])
    try:
        net.create()
        left = os.listdir("/run/netns")
        assert dead not in left and alive in left
    finally:
        net.close()
        netns.remove([dead, alive])
