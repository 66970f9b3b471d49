"""End-to-end fixtures: real demo services and a real gateway process on free loopback ports.

Every process is started through mesh.procs (own process group, dies with us) and stopped in a
finally block, also when the test fails.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from mesh import launcher, procs
from mesh.config import load

pytestmark = pytest.mark.e2e


@dataclass
class Mesh:
    tmp: Path
    config: dict
    children: dict[str, procs.Child] = field(default_factory=dict)

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

    def start_services(self) -> None:
        parsed = load(self.path)
        for inst in launcher.plan_instances(parsed):
            argv = launcher.service_argv(inst, parsed, self.url)
            child = procs.spawn(inst.name, argv, log_dir=self.tmp / "logs")
            self.children[inst.name] = child
            child.ports = [(inst.host, inst.port)]
        for child in list(self.children.values()):
            procs.wait_ports(child, child.ports)

    def start_gateway(self, workers: int = 1, mitmdump: bool = False) -> procs.Child:
        """The lean runtime (`mitmesh gateway`), or the same addons inside mitmdump."""
        parsed = load(self.path)
        argv = (launcher.gateway_argv(self.path, parsed) if mitmdump
                else launcher.lean_argv(self.path, workers))
        gw = procs.spawn("gateway", argv, log_dir=self.tmp / "logs", cwd=str(self.tmp))
        self.children["gateway"] = gw
        admin = parsed.gateway.admin
        if mitmdump:
            procs.wait_ports(gw, [(l.address, l.port) for l in parsed.gateway.listeners]
                             + [(admin.address, admin.port)])
        else:
            procs.wait_log(gw, "gateway ready")
        return gw

    def status(self) -> dict:
        with urllib.request.urlopen(self.admin + "/status", timeout=5) as r:
            return json.load(r)

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()


def get(url: str, headers: dict | None = None, data: bytes | None = None, timeout: float = 5.0,
        method: str | None = None) -> tuple[int, dict, dict]:
    """(status, json body, headers) of one request; HTTP errors are results, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), {k.lower(): v for k, v in e.headers.items()}


def demo_config(tls_dir: Path | None = None) -> dict:
    """The demo topology of mesh.yaml, on free ports."""
    p = procs.free_port
    listeners = [{"name": "public", "port": p()}]
    if tls_dir is not None:
        listeners.append({"name": "public-tls", "port": p(),
                          "tls": {"cert": str(tls_dir / "edge.pem"), "key": str(tls_dir / "edge.key")}})
    return {
        "version": 1,
        "gateway": {"listeners": listeners, "admin": {"port": p()}},
        "services": {
            "users": {"versions": {"v1": {"launch": {"app": "users"}, "endpoints": [f"127.0.0.1:{p()}"]}}},
            "catalog": {"versions": {
                "v1": {"launch": {"app": "catalog"}, "endpoints": [f"127.0.0.1:{p()}", f"127.0.0.1:{p()}"]},
                "v2": {"launch": {"app": "catalog"}, "endpoints": [f"127.0.0.1:{p()}"]},
            }},
            "orders": {"versions": {"v1": {"launch": {"app": "orders"}, "endpoints": [f"127.0.0.1:{p()}"]}}},
            "payments": {"versions": {"v1": {"launch": {"app": "payments"}, "endpoints": [f"127.0.0.1:{p()}"]}}},
        },
        "routes": [
            {"name": "users", "match": {"path": {"prefix": "/users"}}, "forward": {"service": "users"}},
            {"name": "catalog-canary", "match": {"path": {"prefix": "/catalog/"}, "headers": {"x-canary": "always"}},
             "forward": {"service": "catalog", "version": "v2", "rewrite": {"prefix": "/"}}},
            {"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
             "forward": {"service": "catalog", "version": "v1", "rewrite": {"prefix": "/"}}},
            {"name": "orders", "match": {"path": {"prefix": "/orders"}}, "forward": {"service": "orders"}},
            {"name": "payments", "match": {"path": {"prefix": "/payments/"}},
             "forward": {"service": "payments", "rewrite": {"prefix": "/"}}},
        ],
    }


@pytest.fixture
def mesh(tmp_path):
    """A started demo: services and a gateway. Cleaned up whatever the test does."""
    from mesh import pki

    pki.init_edge(tmp_path / "certs")
    m = Mesh(tmp_path, demo_config(tmp_path / "certs"))
    m.write()
    try:
        m.start_services()
        m.start_gateway()
        yield m
    finally:
        m.stop()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
