"""A throwaway mesh of real processes (demo apps, sidecars, a gateway) on a loopback /24 of its own,
and a steady, bounded load against it: what failure scenarios and end-to-end tests are built from.

Every process is started through mesh.runtime.procs (own process group, dies with us); `Mesh.stop()` stops
them all. Each mesh has its own 127.x.y.0/24 for instance addresses and, with `sidecar_config`, its
own mesh id, so meshes running side by side never see each other over mDNS.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import yaml

from mesh.core import podnet
from mesh.runtime import admin, procs
from tools import launcher, pods
from mesh.config import ConfigError, load

T = TypeVar("T")


@dataclass
class Sidecared:
    """One service instance: its app and its sidecar (inbound, outbound and admin listeners)."""

    inst: launcher.Instance
    app: procs.Child
    sidecar: procs.Child | None
    announced: float = 0.0  # wall-clock time of the mDNS announcement, from the sidecar's log
    netns: str | None = None  # in a pod: the mesh namespace, from which its sidecar is reached
    stopping: bool = False  # its sidecar was sent the SIGTERM of a graceful stop (Mesh.begin_stop)
    token: str = ""  # its admin token: /flows, read from a pod's neighbour, needs it

    @property
    def name(self) -> str:
        return self.inst.name

    @property
    def inbound(self) -> str:
        return f"{self.inst.sidecar.address}:{self.inst.sidecar.inbound}"

    @property
    def outbound(self) -> str:
        return f"http://{self.inst.sidecar.address}:{self.inst.sidecar.outbound}"

    @property
    def admin(self) -> str:
        return f"http://{self.inst.sidecar.address}:{self.inst.sidecar.admin}"

    def flows(self) -> list[dict]:
        req = urllib.request.Request(self.admin + "/flows",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with reach(self.admin, self.netns), urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)["flows"]

    def knobs(self, **values) -> dict:
        """The app's fault knobs (latency, error_rate, error_status) and its hit count; sets the
        given ones first (health checks are never faulted). An app in a pod is asked from inside
        its pod (from anywhere else only its sidecar answers)."""
        data = json.dumps(values).encode() if values else None
        with podnet.entered(self.inst.pod.netns) if self.inst.pod else contextlib.nullcontext():
            status, body, _ = get(f"http://{self.inst.host}:{self.inst.port}/__knobs", data=data)
        if status != 200:
            raise RuntimeError(f"{self.name}: /__knobs answered {status}: {body}")
        return body


@dataclass
class Mesh:
    tmp: Path
    config: dict
    children: dict[str, procs.Child] = field(default_factory=dict)
    net: str = field(default_factory=lambda: f"127.{random.randint(1, 254)}.{random.randint(1, 254)}")
    hosts: int = 1  # .1 is the gateway's mDNS address
    progress: Callable[[str], None] | None = None  # told each step of a start (a scenario prints it)
    # pod: every instance, app plus sidecar, in a pod of its own (tools/pods.py), as `mitmesh up` runs
    # them as root; the gateway stays here and reaches the pods through the mesh namespace
    isolation: str = "loopback"
    pods: pods.Pods | None = None

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    @property
    def path(self) -> Path:
        return self.tmp / "mesh.yaml"

    @property
    def url(self) -> str:
        lst = self.config["gateway"]["listeners"][0]
        return f"http://127.0.0.1:{lst['port']}"

    @property
    def tls_url(self) -> str:
        lst = next(l for l in self.config["gateway"]["listeners"] if "tls" in l)
        return f"https://127.0.0.1:{lst['port']}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.config['gateway']['admin']['port']}"

    def write(self, config: dict | None = None) -> None:
        if config is not None:
            self.config = config
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config, sort_keys=False))
        tmp.replace(self.path)
        try:
            parsed = load(self.path)
        except ConfigError:
            return  # a test writing a broken config on purpose
        for token in admin.token_paths(self.path, parsed):  # as `mitmesh up` does
            admin.ensure_token(token)

    def admin_token(self) -> str:
        """The token mutating admin requests of this mesh's proxies present."""
        return admin.read_token(admin.token_path(self.path, load(self.path))) or ""

    def start_services(self) -> None:
        parsed = load(self.path)
        for inst in launcher.plan_instances(parsed):
            argv = launcher.service_argv(inst, parsed, self.url)
            child = procs.spawn(inst.name, argv, log_dir=self.tmp / "logs")
            self.children[inst.name] = child
            child.ports = [(inst.host, inst.port)]
        for child in list(self.children.values()):
            procs.wait_ports(child, child.ports)

    def start_gateway(self, workers: int = 1, mitmdump: bool = False, wait: bool = True) -> procs.Child:
        """The lean runtime (`mitmesh gateway`), or the same addons inside mitmdump; `wait=False`
        returns at once (start instances meanwhile, then `wait_gateway()`)."""
        parsed = load(self.path)
        argv = (launcher.gateway_argv(self.path, parsed) if mitmdump
                else launcher.lean_argv(self.path, workers))
        env = {podnet.ENV: self._pods().mesh} if self.isolation == "pod" else None
        gw = procs.spawn("gateway", argv, log_dir=self.tmp / "logs", cwd=str(self.tmp), env=env)
        self.children["gateway"] = gw
        admin = parsed.gateway.admin
        if not wait:
            return gw
        if mitmdump:
            procs.wait_ports(gw, [(l.address, l.port) for l in parsed.gateway.listeners]
                             + [(admin.address, admin.port)])
        else:
            procs.wait_log(gw, "gateway ready")
        return gw

    def wait_gateway(self) -> None:
        self.say("waiting for the gateway to serve (its workers load the config and bind)")
        procs.wait_log(self.children["gateway"], "gateway ready")
        self.say("gateway ready")

    def status(self) -> dict:
        with urllib.request.urlopen(self.admin + "/status", timeout=5) as r:
            return json.load(r)

    def stop(self) -> None:
        children = list(self.children.values())
        gateway = self.children.get("gateway")
        try:
            if gateway is not None:  # stop sending first, then everything else at once
                gateway.stop()
            procs.stop_all([c for c in children if c is not gateway])
        finally:
            if self.pods is not None:
                self.pods.close()

    def _pods(self) -> pods.Pods:
        """The mesh namespace with its bridge, made on first use; pods a killed run of this kind
        left (named by its pid, now dead) are removed first."""
        if self.pods is None:
            left = pods.stale_of_dead("mmt")
            if left:
                pods.remove(left)
                self.say(f"removed {len(left)} stale namespaces of a run that was killed: {', '.join(left)}")
            self.pods = pods.Pods(f"mmt{os.getpid():x}-{secrets.token_hex(2)}", self.tmp / "pods")
            self.pods.create()  # what it made is removed by stop(), even if this fails half way
        return self.pods

    def reach(self, where: str):
        """The namespace a connection to `where` (URL or address) is made from: see `reach`."""
        return reach(where, self.pods.mesh if self.pods else None)

    def via(self, fn: Callable[[], T]) -> T:
        """Call `fn` with this thread in the mesh namespace (where the pods' addresses are reached)."""
        with podnet.entered(self.pods.mesh) if self.pods else contextlib.nullcontext():
            return fn()

    # sidecars: every instance is an app plus its sidecar, on an address of its own

    def host(self) -> str:
        """The next instance address, in a 127.x.y.0/24 of this mesh's own."""
        self.hosts += 1
        return f"{self.net}.{self.hosts}"

    def start_instances(self, *specs: dict) -> list[Sidecared]:
        """Start instances in parallel: each spec names service, app, and optionally version,
        zone, weight, name. Returns once every sidecar has announced its instance."""
        config = load(self.path)
        started = []
        for spec in specs:
            service, version = spec["service"], spec.get("version", "v1")
            name = spec.get("name") or f"{service}-{version}-{self.hosts + 1}"
            zone, weight, region = spec.get("zone"), spec.get("weight", 1), spec.get("region")
            if self.isolation == "pod":  # its own namespace: the config's ports, the app on its loopback
                net, c = self._pods(), config.sidecar
                from mesh.core.sidecar import virtual_addresses
                pod = net.add(name, launcher.APP_PORT, c.inbound.port, c.outbound.port, c.admin.port,
                              virtual_addresses(config.services))
                sc = launcher.Sidecar(pod.address, c.inbound.port, c.outbound.port, c.admin.port, zone, weight, region)
                inst = launcher.Instance(name, spec.get("app", service), service, version, "127.0.0.1",
                                         launcher.APP_PORT, sidecar=sc, pod=pod)
                argv, cwd = net.app_argv(pod, launcher.service_argv(inst, config, self.url)), str(launcher.ROOT)
            else:
                host = self.host()
                sc = launcher.Sidecar(host, procs.free_port(host), procs.free_port(host), procs.free_port(host),
                                      zone, weight, region)
                inst = launcher.Instance(name, spec.get("app", service), service, version, host,
                                         procs.free_port(host), sidecar=sc)
                argv, cwd = launcher.service_argv(inst, config, self.url), None
            app = procs.spawn(name, argv, log_dir=self.tmp / "logs", cwd=cwd)
            self.children[name] = app
            started.append(Sidecared(inst, app, None, netns=self.pods.mesh if inst.pod else None,
                                     token=admin.read_token(admin.token_path(self.path, config,
                                                                             sidecar=True)) or ""))
        for s in started:  # at once: a sidecar announces its instance only once the app answers
            argv = launcher.sidecar_argv(self.path, s.inst)
            if s.inst.pod is not None:
                argv = self.pods.sidecar_argv(s.inst.pod, argv)
            s.sidecar = procs.spawn(f"{s.inst.name}.sidecar", argv, log_dir=self.tmp / "logs", cwd=str(self.tmp))
            self.children[s.sidecar.name] = s.sidecar
        names = ", ".join(s.name for s in started)
        self.say(f"started {len(started)} apps and their sidecars ({names}); waiting for the apps to listen")
        for s in started:
            with podnet.entered(s.inst.pod.netns) if s.inst.pod else contextlib.nullcontext():
                procs.wait_ports(s.app, [(s.inst.host, s.inst.port)])
        self.say("apps listening; waiting for each sidecar to announce its instance over mDNS")
        for s in started:
            procs.wait_log(s.sidecar, "announced ")
            s.announced = announced_at(s.sidecar)
            self.say(f"{s.name} announced by its sidecar (pid {s.sidecar.pid})")
        return started

    def start_rotator(self, name: str = "rotator") -> procs.Child:
        """`mitmesh certs rotate --watch` on this mesh's config, as the launcher runs it: issues every
        workload certificate, then renews each when due."""
        child = procs.spawn(name, procs.python("-m", "mesh.cli", "certs", "rotate", "--watch", "--config",
                                               str(self.path)), log_dir=self.tmp / "logs", cwd=str(self.tmp))
        self.children[name] = child
        return child

    def begin_stop(self, s: Sidecared) -> None:
        """A graceful stop's start: SIGTERM to the sidecar, which says goodbye, then drains. Sent
        once: a second SIGTERM stops a draining sidecar at once (as a second Ctrl-C would), which
        cuts off the requests still in flight through it."""
        if not s.stopping:
            s.stopping = True
            s.sidecar.proc.send_signal(signal.SIGTERM)

    def stop_instance(self, s: Sidecared) -> None:
        """Graceful: the sidecar says goodbye, drains, exits; then the app stops. After
        `begin_stop`, it waits for the stop begun there."""
        self.begin_stop(s)
        s.sidecar.proc.wait(15)
        s.app.stop()

    def kill_instance(self, s: Sidecared) -> float:
        """A crash: SIGKILL to the sidecar and the app, no goodbye. Returns the wall-clock time the
        sidecar was dead (reaped): a request sent before then may have reached it, even one sent
        after the signal, since a killed process dies only once the kernel runs it again (its
        listening socket still takes connections until then)."""
        s.sidecar.kill()
        dead = time.time()
        s.app.kill()
        return dead

    def registry(self, admin: str | None = None) -> list[dict]:
        with self.reach(admin or self.admin), urllib.request.urlopen((admin or self.admin) + "/status", timeout=5) as r:
            return json.load(r)["registry"]["instances"]

    def wait_converged(self, instances: list[Sidecared], count: int, timeout: float = 10.0) -> None:
        """Wait until the gateway and every given sidecar know `count` instances (each proxy
        converges on its own: a responder answers for a record at most once a second)."""
        for admin in [self.admin] + [s.admin for s in instances]:
            self.wait_instances(count, timeout=timeout, admin=admin)

    def wait_instances(self, count: int, service: str | None = None, healthy: bool | None = None,
                       timeout: float = 10.0, admin: str | None = None, source: str = "mdns",
                       pending: bool | None = None) -> list[dict]:
        """Wait until the gateway's (or `admin`'s) registry holds `count` matching instances
        (`pending`: awaiting their first health check, or not; such an instance is not healthy)."""
        def matching():
            found = [i for i in self.registry(admin) if i["source"] == source
                     and (service is None or i["service"] == service)
                     and (healthy is None or i["healthy"] == healthy)
                     and (pending is None or i.get("pending", False) == pending)]
            return found if len(found) == count else None
        who = "the gateway" if admin is None else admin
        self.say(f"waiting for {who} to find {count} {service or ''} instances over {source}".replace("  ", " "))
        found = wait_until(matching, timeout=timeout, interval=0.05)
        self.say(f"{who} knows the {count} instances")
        return found


def reach(where: str, netns: str | None):
    """Where a connection to `where` (a URL, or an address with or without its port) is made from:
    inside `netns` (the pods' mesh namespace) for a pod's address, here for any other. A pod's
    address is never connected to from this namespace: it is no local address here, and the
    default route would take it off the machine."""
    host = urllib.parse.urlsplit(where).hostname if "://" in where else (where.rpartition(":")[0] or where)
    if not podnet.in_subnet(host):
        return contextlib.nullcontext()
    if netns is None:
        raise RuntimeError(f"{where} is a pod's address, and there are no pods to reach it through")
    return podnet.entered(netns)


def get(url: str, headers: dict | None = None, data: bytes | None = None, timeout: float = 5.0,
        method: str | None = None) -> tuple[int, dict, dict]:
    """(status, json body, headers) of one request; HTTP errors are results, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), {k.lower(): v for k, v in e.headers.items()}


def sidecar_config(mdns_address: str) -> dict:
    """A mesh of sidecars found over mDNS: a gateway (zone a) with routes to four services whose
    instances the caller starts; a mesh id of its own, so no other mesh on this machine is seen."""
    p = procs.free_port
    return {
        "version": 1,
        "mesh": {"id": f"t-{secrets.token_hex(4)}"},
        "gateway": {"listeners": [{"name": "public", "port": p()}], "admin": {"port": p()}, "zone": "a"},
        "discovery": {"mdns": {"interfaces": [mdns_address]}},
        "sidecar": {"drain": "1s"},
        "services": {
            "catalog": {"versions": {"v1": {}}},
            "orders": {"versions": {"v1": {}}},
            "payments": {"versions": {"v1": {}}},
            "users": {"versions": {"v1": {}}},
        },
        "routes": [
            {"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
             "forward": {"service": "catalog", "rewrite": {"prefix": "/"}}},
            {"name": "orders", "match": {"path": {"prefix": "/orders"}}, "forward": {"service": "orders"}},
            {"name": "users", "match": {"path": {"prefix": "/users"}}, "forward": {"service": "users"}},
        ],
    }


_STAMP = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\.(\d{3})\] (?:etcd: )?announced ", re.M)


def announced_at(sidecar: procs.Child) -> float:
    """The wall-clock time a sidecar logged its announcement (termlog stamps local HH:MM:SS.mmm)."""
    m = _STAMP.search(sidecar.log.read_text(errors="replace"))
    if not m:
        raise RuntimeError(f"{sidecar.name} logged no announcement:\n{sidecar.tail()}")
    now = datetime.datetime.now()
    stamp = now.replace(hour=int(m[1]), minute=int(m[2]), second=int(m[3]), microsecond=int(m[4]) * 1000)
    if stamp > now + datetime.timedelta(hours=12):  # logged before midnight, read after
        stamp -= datetime.timedelta(days=1)
    return stamp.timestamp()


@dataclass
class Sample:
    start: float  # wall-clock time the request was sent
    end: float
    status: int  # 0: no HTTP response at all
    instance: str | None
    reason: str = ""
    body: dict | None = None  # the JSON answer (None when it was not a JSON object)
    attempts: int = 1  # x-mitmesh-attempts of the answer: upstream tries the proxy made

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def latency(self) -> float:
        return self.end - self.start


class Load:
    """Steady, bounded load: a few threads, each on its own keep-alive connection, recording every
    request. Paced by `pace` (seconds between one answer and the next request of a thread), or at a
    fixed total `rate` (requests per second, spread over the threads; a late thread does not burst
    to catch up). Through a proxy when `proxy` is given (the request line then carries the URL);
    from inside a network namespace when `netns` names one (Linux, root)."""

    def __init__(self, url: str, threads: int = 3, pace: float = 0.02, proxy: str | None = None,
                 headers: dict | None = None, limit: int = 20_000, *, rate: float | None = None,
                 method: str = "GET", body: bytes | None = None, timeout: float = 10.0,
                 netns: str | None = None):
        self.url, self.threads, self.pace, self.proxy = url, threads, pace, proxy
        self.headers = headers or {}
        self.limit = limit
        self.rate, self.method, self.body, self.timeout, self.netns = rate, method, body, timeout, netns
        self.samples: list[Sample] = []
        self.started = 0.0
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> Load:
        self.started = time.time()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        for t in self._workers:
            t.join(30)
        return sorted(self.samples, key=lambda s: s.start)

    def seen(self, instance: str) -> Sample | None:
        return next((s for s in sorted(self.samples, key=lambda s: s.start)
                     if s.instance == instance and s.status == 200), None)

    def _run(self, index: int = 0) -> None:
        if self.netns:  # this thread's sockets are made inside the namespace
            with open(f"/run/netns/{self.netns}") as f:
                os.setns(f.fileno(), os.CLONE_NEWNET)
        parsed = urllib.parse.urlsplit(self.proxy or self.url)
        target = self.url if self.proxy else (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        headers = dict(self.headers)
        if self.body is not None:
            headers.setdefault("content-type", "application/json")
        interval = self.threads / self.rate if self.rate else None
        next_at = time.monotonic() + (interval * index / self.threads if interval else 0.0)
        conn = None
        while not self._stop.is_set() and len(self.samples) < self.limit:
            if interval:
                if self._stop.wait(max(next_at - time.monotonic(), 0.0)):
                    break
                next_at = max(next_at + interval, time.monotonic() - interval)
            if conn is None:
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=self.timeout)
            start = time.time()
            try:
                conn.request(self.method, target, body=self.body, headers=headers)
                r = conn.getresponse()
                raw = r.read()
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                body = body if isinstance(body, dict) else None
                attempts = r.getheader("x-mitmesh-attempts", "1")
                self.samples.append(Sample(start, time.time(), r.status, (body or {}).get("instance"),
                                           (body or {}).get("reason", "") if r.status != 200 else "",
                                           body, int(attempts) if attempts.isdigit() else 1))
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                self.samples.append(Sample(start, time.time(), 0, None, repr(e)))
                conn.close()
                conn = None
            if not interval:
                self._stop.wait(self.pace)
        if conn is not None:
            conn.close()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# ---------------------------------------------------------------------------------------------
# the repository's demo (mesh.yaml) through `mitmesh up`, on free ports


def demo_on_free_ports(tmp: Path) -> tuple[Path, dict[int, int]]:
    """mesh.yaml with every port replaced by a free one (URLs included), its sidecars and mDNS on
    a 127.x.y.0/24 and a mesh id of its own."""
    text = (launcher.ROOT / "mesh.yaml").read_text()
    data = yaml.safe_load(text)
    ports = [l["port"] for l in data["gateway"]["listeners"]] + [data["gateway"]["admin"]["port"]]
    for svc in data["services"].values():
        for version in svc["versions"].values():
            ports += [int(e.rsplit(":", 1)[1]) for e in version.get("endpoints", [])]
    moved = {old: procs.free_port() for old in ports}
    for old, new in moved.items():
        text = text.replace(f"port: {old}\n", f"port: {new}\n").replace(f":{old}", f":{new}")
    net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    text = text.replace("  id: demo ", f"  id: t{random.randint(0, 1 << 30):x} ")
    text = text.replace("    interfaces: [127.0.0.1]", f"    interfaces: [{net}.1]")
    text = text.replace("  admin: {port: 15000}", f"  admin: {{port: 15000}}\n  first_address: {net}.2")
    # a token with a new key id (the IdP rotated) refetches the keys after 500 ms, not the default 5 s
    claims = "      forward_claims: {sub: x-authenticated-userid, scope: x-authenticated-scope}\n"
    if claims + "  idp-opaque:" not in text:
        raise RuntimeError("mesh.yaml's idp-jwt policy changed: update demo_on_free_ports")
    text = text.replace(claims + "  idp-opaque:", claims + "      unknown_kid_refresh: 500ms\n"
                        "  idp-opaque:")
    text = text.replace(", code: .,", f", code: {launcher.ROOT},")  # the demo functions' folder
    path = tmp / "mesh.yaml"
    path.write_text(text)
    return path, moved


@contextlib.contextmanager
def running_demo(tmp: Path, isolation: str = "loopback") -> Iterator[dict]:
    """`mitmesh up` of the demo on free ports, until `ready`; stopped (its whole group) on the way out.
    Yields its URLs, the mTLS listener's port, the IdP's URL, the folder and the log. Loopback
    isolation unless told (tests reach the sidecars directly); tests/e2e/test_pods.py runs pods."""
    path, ports = demo_on_free_ports(tmp)
    log = tmp / "up.log"
    proc = subprocess.Popen([sys.executable, "-m", "mesh.cli", "up", "--config", str(path), "--workers", "1",
                             "--isolation", isolation],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=procs.die_with_parent)  # a killed test run stops its demo too
    try:
        wait_until(lambda: "\nready\n" in log.read_text() or proc.poll() is not None, timeout=120)
        if proc.poll() is not None:
            raise RuntimeError(f"mitmesh up exited with {proc.returncode}:\n{log.read_text()}")
        yield {"url": f"http://127.0.0.1:{ports[8080]}", "tls": f"https://127.0.0.1:{ports[8443]}",
               "mtls": ports[8444], "idp": f"http://127.0.0.1:{ports[9401]}", "tmp": tmp, "log": log,
               "config": path, "admin": f"http://127.0.0.1:{ports[9901]}", "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
