"""`mitmesh up`: starts the demo services and the gateway, prints where they are, stops them all."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import certcmd, modes, pki, procs
from .config import ConfigError, load
from .config.schema import MeshConfig

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Instance:
    name: str
    app: str
    service: str
    version: str
    host: str
    port: int
    latency: float = 0.0
    error_rate: float = 0.0


def plan_instances(config: MeshConfig) -> list[Instance]:
    """The demo instances `up` starts: one per static loopback endpoint of each launched version."""
    out = []
    for sname, svc in config.services.items():
        for vname, version in svc.versions.items():
            if version.launch is None:
                continue
            for i, ep in enumerate(version.endpoints, 1):
                if not ep.address.startswith("127."):
                    continue
                out.append(Instance(f"{sname}-{vname}-{i}", version.launch.app, sname, vname,
                                    ep.address, ep.port, version.launch.latency, version.launch.error_rate))
    return out


def service_argv(inst: Instance, config: MeshConfig, gateway_url: str) -> list[str]:
    argv = procs.python("-m", f"services.{inst.app}", "--host", inst.host, "--port", str(inst.port),
                        "--version", inst.version, "--instance", inst.name)
    if inst.latency:
        argv += ["--latency", f"{inst.latency}"]
    if inst.error_rate:
        argv += ["--error-rate", f"{inst.error_rate}"]
    if inst.app == "orders":
        # until sidecars exist, orders reaches its dependencies through the gateway's routes
        argv += ["--catalog-url", f"{gateway_url}/catalog", "--payments-url", f"{gateway_url}/payments"]
    return argv


def gateway_argv(config_path: Path, config: MeshConfig, *, web: bool = False, web_port: int = 8081,
                 web_token: str | None = None, extra: list[str] = ()) -> list[str]:
    script = str(ROOT / "addons" / "gateway.py")
    mode_args = [arg for lst in config.gateway.listeners
             for arg in ("--mode", modes.reverse(lst.address, lst.port))]
    argv = [procs.tool("mitmweb" if web else "mitmdump"), "-s", script, *mode_args,
            "--set", f"mesh_config={config_path}", "--set", "flow_detail=0", "--set", "listen_host=127.0.0.1",
            "--set", f"confdir={ROOT / '.mitmesh' / 'mitmproxy'}"]
    if web:
        argv += ["--set", "web_host=127.0.0.1", "--set", f"web_port={web_port}",
                 "--set", "web_open_browser=false", "--set", f"web_password={web_token}"]
    return argv + list(extra)


def lean_argv(config_path: Path, workers: int = 0, verbosity: str = "info") -> list[str]:
    """The production gateway: `mitmesh gateway` (lean runtime, one worker per core by default)."""
    argv = procs.python("-m", "mesh.cli", "gateway", "--config", str(config_path), "--verbosity", verbosity)
    return argv + (["--workers", str(workers)] if workers else [])


def _healthy(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


def _echo(child: procs.Child, prefix: str) -> None:
    """Copy a child's log to our stdout as it grows (the gateway's, so reload errors show)."""
    def run():
        while child.log is None or not child.log.exists():
            time.sleep(0.1)
        with open(child.log, "r", errors="replace") as f:
            f.seek(0, os.SEEK_END)
            while child.alive():
                line = f.readline()
                if line:
                    print(f"{prefix} {line}", end="", flush=True)
                else:
                    time.sleep(0.1)
    threading.Thread(target=run, daemon=True).start()


def up(config_path: str, web: bool = False, web_port: int = 8081, workers: int = 0) -> int:
    path = Path(config_path).resolve()
    try:
        config = load(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    pki.init_edge(path.parent / "certs")
    run_dir = ROOT / ".mitmesh" / "logs"
    up_state = path.parent / ".mitmesh" / "up.json"
    children: list[procs.Child] = []
    stopping = threading.Event()
    # the mesh CA and a workload certificate per service and for the gateway, renewed before
    # they expire for as long as `up` runs; proxies pick the new files up by themselves
    identity_dir = certcmd.identity_dir(path, config)
    pki.init_mesh(identity_dir, config.mesh.trust_domain)
    certcmd.rotate(identity_dir, config)
    threading.Thread(target=certcmd.rotate, args=(identity_dir, config),
                     kwargs={"watch": True, "stop": stopping}, daemon=True, name="cert-rotation").start()

    def on_signal(signum, _frame):
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    listeners = config.gateway.listeners
    plain = next((l for l in listeners if l.tls is None), None)
    gateway_url = f"http://{plain.address}:{plain.port}" if plain else ""
    try:
        for inst in plan_instances(config):
            child = procs.spawn(inst.name, service_argv(inst, config, gateway_url), log_dir=run_dir)
            children.append(child)
            child.ports = [(inst.host, inst.port)]
        deadline = time.monotonic() + 20
        for child in children:
            host, port = child.ports[0]
            while not _healthy(host, port):
                if not child.alive() or time.monotonic() > deadline or stopping.is_set():
                    raise RuntimeError(f"{child.name} did not become healthy:\n{child.tail()}")
                time.sleep(0.05)
            print(f"service: {child.name} http://{host}:{port} pid {child.pid}", flush=True)
        token = secrets.token_hex(12)
        argv = (gateway_argv(path, config, web=True, web_port=web_port, web_token=token) if web
                else lean_argv(path, workers))
        gw = procs.spawn("gateway", argv, log_dir=run_dir, cwd=str(path.parent))
        children.append(gw)
        _echo(gw, "[gateway]")
        admin = config.gateway.admin
        if web:
            procs.wait_ports(gw, [(l.address, l.port) for l in listeners]
                             + [(admin.address, admin.port), ("127.0.0.1", web_port)])
        else:
            procs.wait_log(gw, "gateway ready")
        for l in listeners:
            scheme, label = (("https", "gateway-mtls" if l.tls.mtls else "gateway-tls") if l.tls
                             else ("http", "gateway"))
            print(f"{label}: {scheme}://{l.address}:{l.port}", flush=True)
        print(f"admin: http://{admin.address}:{admin.port}/status", flush=True)
        if web:
            print(f"web: http://127.0.0.1:{web_port}/?token={token}", flush=True)
        print(f"logs: {run_dir}", flush=True)
        # where `mitmesh record` finds every proxy of this demo
        up_state.parent.mkdir(parents=True, exist_ok=True)
        up_state.write_text(json.dumps({"admins": [f"http://{admin.address}:{admin.port}"]}))
        print(f"gateway-pid: {gw.pid}", flush=True)
        if plain:
            print(f"try: curl {gateway_url}/catalog/items   (Ctrl-C stops everything)", flush=True)
        print("ready", flush=True)
        while not stopping.is_set():
            for child in children:
                if not child.alive() and not getattr(child, "reported", False):
                    child.reported = True
                    print(f"exited: {child.name} with code {child.proc.returncode}", flush=True)
                    if child is gw:
                        print("the gateway died; stopping everything", file=sys.stderr, flush=True)
                        stopping.set()
            stopping.wait(0.2)
        return 0 if gw.alive() else 1
    except RuntimeError as e:
        print(f"mitmesh up: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        up_state.unlink(missing_ok=True)
        print("stopped", flush=True)
