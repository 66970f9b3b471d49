"""`mitmesh up`: starts the demo services and the gateway, prints where they are, stops them all."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mesh.runtime import admin, forkserver, procs, sockets, store, supervisor
from tools import certcmd, etcdserver, pods
from mesh.core import modes, podnet
from mesh.security import pki
from mesh.config import ConfigError, load
from mesh.config.schema import MeshConfig

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sidecar:
    """Where an instance's sidecar listens: its own loopback address, the config's sidecar ports."""

    address: str
    inbound: int
    outbound: int
    admin: int
    zone: str | None = None
    weight: int = 1
    region: str | None = None


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
    sidecar: Sidecar | None = None
    pod: pods.Pod | None = None  # isolation: pod, its namespace (host is then its own loopback)
    function: str | None = None  # app "function": the function it serves


APP_PORT = 8000  # where an app listens inside its pod (each pod has its own loopback)


def isolation(config: MeshConfig, asked: str | None = None) -> tuple[str, str | None]:
    """(pod | loopback, why not pod when pod was wanted but cannot be had here)."""
    wanted = asked or config.sidecar.isolation
    if wanted == "loopback":
        return "loopback", None
    problem = pods.why_not()
    if problem is None:
        return "pod", None
    return "loopback", problem


def plan_instances(config: MeshConfig, in_pods: bool = False) -> list[Instance]:
    """The demo instances `up` starts. A launched version with static endpoints gets one bare app
    listening on each loopback endpoint; one without gets `launch.instances` instances, each with
    its sidecar on its own loopback address (from sidecar.first_address on), found by discovery;
    in pods, on its pod's address, the app on the pod's own loopback."""
    out = []
    sc = config.sidecar
    address = ipaddress.ip_address(f"{podnet.SUBNET}.2" if in_pods else sc.first_address)
    for sname, svc in config.services.items():
        for vname, version in svc.versions.items():
            launch = version.launch
            if launch is None:
                continue
            if version.endpoints:
                for i, ep in enumerate(version.endpoints, 1):
                    if ep.address.startswith("127."):
                        out.append(Instance(f"{sname}-{vname}-{i}", launch.app, sname, vname,
                                            ep.address, ep.port, launch.latency, launch.error_rate,
                                            function=launch.function))
                continue
            for i in range(launch.instances):
                host = str(address)
                address += 1
                zone = launch.zones[i % len(launch.zones)] if launch.zones else None
                app_host, app_port = ("127.0.0.1", APP_PORT) if in_pods else (host, procs.free_port(host))
                out.append(Instance(f"{sname}-{vname}-{i + 1}", launch.app, sname, vname, app_host,
                                    app_port, launch.latency, launch.error_rate,
                                    Sidecar(host, sc.inbound.port, sc.outbound.port, sc.admin.port,
                                            zone, launch.weight), function=launch.function))
    return out


def service_argv(inst: Instance, config: MeshConfig, gateway_url: str, config_path: Path | None = None) -> list[str]:
    if inst.function is not None:  # a function as a mesh service; its calls go out through its sidecar
        argv = procs.python("-m", "mesh.cli", "function", inst.function, "--config", str(config_path),
                            "--host", inst.host, "--port", str(inst.port))
        # in a pod its calls are captured by nftables, as any app's; on loopback they name the proxy
        outbound = inst.sidecar is not None and inst.pod is None
        return argv + (["--proxy", f"{inst.sidecar.address}:{inst.sidecar.outbound}"] if outbound else [])
    argv = procs.python("-m", f"services.{inst.app}", "--host", inst.host, "--port", str(inst.port),
                        "--version", inst.version, "--instance", inst.name)
    if inst.latency:
        argv += ["--latency", f"{inst.latency}"]
    if inst.error_rate:
        argv += ["--error-rate", f"{inst.error_rate}"]
    if inst.sidecar is not None and inst.sidecar.zone:
        argv += ["--zone", inst.sidecar.zone]
    # in a pod, the app calls services by name with no proxy setting: its sidecar captures the calls
    proxy = [] if inst.pod else ["--proxy", f"http://{inst.sidecar.address}:{inst.sidecar.outbound}"] if inst.sidecar else []
    if inst.app == "orders":
        if inst.sidecar is not None:  # calls go out through its sidecar, which finds the services
            argv += [*proxy, "--catalog-url", "http://catalog", "--payments-url", "http://payments"]
        else:  # a bare demo app reaches its dependencies through the gateway's routes
            argv += ["--catalog-url", f"{gateway_url}/catalog", "--payments-url", f"{gateway_url}/payments"]
    if inst.app == "users" and inst.sidecar is not None:  # POST /users/ID/charge calls payments
        argv += [*proxy, "--payments-url", "http://payments"]
    return argv


def sidecar_argv(config_path: Path, inst: Instance, verbosity: str = "info") -> list[str]:
    """`mitmesh sidecar` beside one instance: inbound to the app, outbound for its calls."""
    sc = inst.sidecar
    if sc is None:
        raise ValueError(f"{inst.name} has no sidecar")
    argv = procs.python("-m", "mesh.cli", "sidecar", "--config", str(config_path),
                        "--service", inst.service, "--version", inst.version,
                        "--app", f"{inst.host}:{inst.port}", "--address", sc.address,
                        "--instance", inst.name, "--weight", str(sc.weight),
                        "--inbound-port", str(sc.inbound), "--outbound-port", str(sc.outbound),
                        "--admin-port", str(sc.admin), "--verbosity", verbosity)
    if inst.pod is not None:
        argv += ["--capture", "transparent"]
    return argv + (["--zone", sc.zone] if sc.zone else []) + (["--region", sc.region] if sc.region else [])


def sidecar_worker_argv(config_path: Path | str, inst: Instance, verbosity: str = "info") -> list[str]:
    """The proxy worker `mitmesh sidecar` would exec for this instance: what the fork server runs."""
    sc = inst.sidecar
    if sc is None:
        raise ValueError(f"{inst.name} has no sidecar")
    spec = ",".join(f"{k}={v}" for k, v in (
        ("service", inst.service), ("version", inst.version), ("app", f"{inst.host}:{inst.port}"),
        ("address", sc.address), ("instance", inst.name), ("weight", sc.weight), ("inbound", sc.inbound),
        ("outbound", sc.outbound), ("admin", sc.admin),
        ("capture", "transparent" if inst.pod is not None else ""), ("zone", sc.zone),
        ("region", sc.region)) if v not in (None, ""))
    return supervisor.worker_argv(config_path, [], "sidecar", verbosity, -1, spec)


def start_sidecar(inst: Instance, source: Path | str, run_dir: Path, cwd: str,
                  server: forkserver.Server | None, net: pods.Pods | None) -> procs.Child:
    """An instance's sidecar: forked from the preloaded engine, or (no fork server) its own Python."""
    name = f"{inst.name}.sidecar"
    if server is not None:
        return server.spawn(name, sidecar_worker_argv(source, inst), log_dir=run_dir, cwd=cwd,
                            netns=inst.pod.netns if inst.pod is not None else None)
    argv = sidecar_argv(source, inst)
    if inst.pod is not None:
        argv = net.sidecar_argv(inst.pod, argv)
    return procs.spawn(name, argv, log_dir=run_dir, cwd=cwd)


def gateway_argv(config_path: Path, config: MeshConfig, *, web: bool = False, web_port: int = 8081,
                 web_token: str | None = None, extra: list[str] = (), source: str | None = None) -> list[str]:
    """mitmdump (or mitmweb) with the gateway's addons; `source`: an etcd[s]:// config store instead
    of the file."""
    script = str(ROOT / "addons" / "gateway.py")
    mode_args = [arg for lst in config.gateway.listeners
             for arg in ("--mode", modes.reverse(lst.address, lst.port))]
    argv = [procs.tool("mitmweb" if web else "mitmdump"), "-s", script, *mode_args,
            "--set", f"mesh_config={source or config_path}", "--set", "flow_detail=0", "--set", "listen_host=127.0.0.1",
            "--set", f"confdir={state_dir(config_path) / 'mitmproxy'}"]
    if web:
        argv += ["--set", "web_host=127.0.0.1", "--set", f"web_port={web_port}",
                 "--set", "web_open_browser=false", "--set", f"web_password={web_token}"]
    return argv + list(extra)


def lean_argv(config_path: Path, workers: int = 0, verbosity: str = "info") -> list[str]:
    """The production gateway: `mitmesh gateway` (lean runtime, one worker per core by default)."""
    argv = procs.python("-m", "mesh.cli", "gateway", "--config", str(config_path), "--verbosity", verbosity)
    return argv + (["--workers", str(workers)] if workers else [])


def _healthy(host: str, port: int, pid: int, pod: pods.Pod | None = None) -> bool:
    """The app answers /healthz, and it is ours: another mesh's app on the same address would
    answer too, while ours died of EADDRINUSE. An app in a pod is asked from inside its pod."""
    try:
        with (podnet.entered(pod.netns) if pod else contextlib.nullcontext()), \
                urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=0.5) as r:
            return r.status == 200 and json.load(r).get("pid") == pid
    except (OSError, ValueError):
        return False


def operator_flags(certs: Path) -> str:
    """The --cacert --cert --key of `mitmesh config` for the demo's store, when they are not its
    defaults (certs/ of the folder it is run from)."""
    cert, key = pki.operator_paths(certs)
    files = {"cacert": pki.mesh_ca_cert(certs), "cert": cert, "key": key}
    defaults = store.operator_tls_defaults()
    if all(Path(defaults[k]).resolve() == v.resolve() for k, v in files.items()):
        return ""
    return "".join(f" --{k} {v}" for k, v in files.items())


def state_dir(config_path: Path) -> Path:
    """Where `up` keeps one mesh's logs, lock and state: beside its config file, a folder per file
    (.mitmesh/mesh/ for mesh.yaml), so two meshes from one checkout never share or truncate a file."""
    return config_path.parent / ".mitmesh" / config_path.stem


def _lock(state: Path, config_path: Path) -> int:
    """Hold the mesh's lock for as long as `up` runs; a second `up` of the same config is refused
    before it touches the first one's logs."""
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(f"{config_path} is already up (pid {pid}); stop that one first, or give "
                           f"this mesh a config of its own (other ports, another file)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def addresses(config: MeshConfig, planned: list[Instance], web_port: int | None,
              in_pods: bool = False) -> list[tuple[str, int, str]]:
    """Every (address, port, what) that `up` will listen on here: apps, sidecars, gateway, admin,
    web (in pods, instances with a sidecar listen in namespaces of their own, free by construction)."""
    out = []
    for inst in planned:
        if in_pods and inst.sidecar is not None:
            continue
        out.append((inst.host, inst.port, f"{inst.name} app"))
        if inst.sidecar is not None:
            s = inst.sidecar
            out += [(s.address, s.inbound, f"{inst.name} sidecar inbound"),
                    (s.address, s.outbound, f"{inst.name} sidecar outbound"),
                    (s.address, s.admin, f"{inst.name} sidecar admin")]
    out += [(l.address, l.port, f"gateway listener {l.name}") for l in config.gateway.listeners]
    out.append((config.gateway.admin.address, config.gateway.admin.port, "gateway admin"))
    if web_port is not None:
        out.append(("127.0.0.1", web_port, "mitmweb"))
    return out


def unavailable(wanted: list[tuple[str, int, str]]) -> list[str]:
    """`ADDRESS:PORT (what) is taken (by pid N, command)` for each one that cannot be listened on."""
    out = []
    for address, port, what in wanted:
        problem = sockets.taken(address, port)
        if problem:
            where, _, why = problem.partition(" ")
            out.append(f"{where} ({what}) {why}")
    return out


def _wait_discovered(admins: list[tuple[str, int, int]], count: int, stopping: procs.Stop,
                     timeout: float = 10.0, netns: str | None = None) -> None:
    """Wait until the gateway's and every sidecar's registry hold every instance `up` started
    (a newcomer's questions are answered at once, or at most a second later). Each entry is
    (address, port, processes): the gateway's admin port is answered by whichever of its workers
    accepts, and each worker browses on its own, so every one of them must have been seen ready."""
    deadline = time.monotonic() + timeout
    ready: dict[tuple[str, int], set[int]] = {(a, p): set() for a, p, _ in admins}
    pending = list(admins)
    while pending and time.monotonic() < deadline and not stopping.is_set():
        for address, port, _ in pending:
            pid, found = _discovered(address, port, netns if address.startswith(podnet.SUBNET + ".") else None)
            if found >= count:
                ready[(address, port)].add(pid)
        pending = [a for a in pending if len(ready[a[:2]]) < a[2]]
        if pending:
            time.sleep(0.05)
    if pending:
        print(f"mitmesh up: {len(pending)} proxies have not discovered all {count} instances yet", flush=True)


def _make_pods(net: pods.Pods, config: MeshConfig, planned: list[Instance]) -> None:
    """Remove the pods a SIGKILLed `up` of this config left, then make one per instance (what is
    made is in `net` at once, so the caller removes it even if this fails half way)."""
    prefix = net.prefix
    left = pods.stale(prefix)
    if left:
        pods.remove(left)
        print(f"mitmesh up: removed {len(left)} stale namespaces of an earlier up of this config "
              f"that did not stop cleanly: {', '.join(left)}", flush=True)
    net.create()
    from mesh.core.sidecar import virtual_addresses
    vips = virtual_addresses(config.services)
    for inst in planned:
        if inst.sidecar is not None:
            s = inst.sidecar
            inst.pod = net.add(inst.name, inst.port, s.inbound, s.outbound, s.admin, vips)
            inst.sidecar.address = inst.pod.address
    print(f"isolation: pod: {len(net.pods)} pods in network namespaces {prefix}-p*, joined by a bridge "
          f"in {net.mesh}; an app is reachable only through its sidecar (docs/howto/pods.md)", flush=True)


def _discovered(address: str, port: int, netns: str | None = None) -> tuple[int, int]:
    """(pid of the process that answered, instances it found over mDNS), asked from `netns`."""
    try:
        with (podnet.entered(netns) if netns else contextlib.nullcontext()), \
                urllib.request.urlopen(f"http://{address}:{port}/status", timeout=1) as r:
            status = json.load(r)
            return status.get("pid", 0), sum(1 for i in status["registry"]["instances"] if i["source"] == "mdns")
    except (OSError, ValueError, KeyError):
        return 0, 0


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


def up(config_path: str, web: bool = False, web_port: int = 8081, workers: int = 0,
       isolation_mode: str | None = None, control_plane: str = "file", etcd_port: int | None = None) -> int:
    path = Path(config_path).resolve()
    try:
        config = load(path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    state = state_dir(path)
    run_dir = state / "logs"
    up_state = state / "up.json"
    mode, why_not_pods = isolation(config, isolation_mode)
    if why_not_pods and (isolation_mode or config.sidecar.isolation) == "pod":
        print(f"mitmesh up: isolation: pod is not possible here: {why_not_pods}", file=sys.stderr, flush=True)
        return 1
    # pods for the instances with a sidecar; bare apps (static endpoints) stay on loopback
    in_pods = mode == "pod" and any(i.sidecar for i in plan_instances(config))
    if in_pods and control_plane == "etcd":  # the local etcd listens on the host's loopback, out of a pod's reach
        if isolation_mode == "pod" or config.sidecar.isolation == "pod":
            print("mitmesh up: --control-plane etcd runs with isolation loopback only (its etcd is on the "
                  "host's loopback, which pods cannot reach)", file=sys.stderr, flush=True)
            return 1
        in_pods, why_not_pods = False, "--control-plane etcd (its etcd is on the host's loopback)"
    planned = plan_instances(config, in_pods)
    # before anything starts or any file is opened: this config is not up already, and every
    # address it needs is free (all of them named at once, with who holds them)
    try:
        lock = _lock(state, path)
    except RuntimeError as e:
        print(f"mitmesh up: {e}", file=sys.stderr, flush=True)
        return 1
    taken = unavailable(addresses(config, planned, web_port if web else None, in_pods))
    if taken:
        os.close(lock)
        print("mitmesh up: nothing started; " + ("these addresses are" if len(taken) > 1 else "this address is")
              + " not free:\n" + "\n".join(f"  {t}" for t in taken), file=sys.stderr, flush=True)
        return 1
    pki.init_edge(path.parent / "certs")
    children: list[procs.Child] = []
    stopping = procs.Stop().on_signals(signal.SIGINT, signal.SIGTERM)
    # the mesh CA and a workload certificate per service and for the gateway, renewed before
    # they expire for as long as `up` runs; proxies pick the new files up by themselves
    identity_dir = certcmd.identity_dir(path, config)
    pki.init_mesh(identity_dir, config.mesh.trust_domain)
    tokens = admin.token_paths(path, config)
    for token in tokens:  # mutating admin requests (mitmesh record) present it
        admin.ensure_token(token)
    certcmd.rotate(identity_dir, config)
    threading.Thread(target=certcmd.rotate, args=(identity_dir, config),
                     kwargs={"watch": True, "stop": stopping}, daemon=True, name="cert-rotation").start()

    net: pods.Pods | None = None
    listeners = config.gateway.listeners
    plain = next((l for l in listeners if l.tls is None), None)
    gateway_url = f"http://{plain.address}:{plain.port}" if plain else ""
    source: Path | str = path  # where every proxy reads its config: the file, or etcd
    etcd_child: procs.Child | None = None
    server: forkserver.Server | None = None  # forks the sidecars (mesh/runtime/forkserver.py)
    forkserver.become_subreaper()  # a dead fork server's sidecars become ours, not init's
    try:
        if in_pods:
            net = pods.Pods(pods.prefix_of(path), state / "pods")
            _make_pods(net, config, planned)
        elif any(i.sidecar for i in planned):
            print("isolation: loopback: every app listens on a loopback address that any local process "
                  "can reach directly, without its sidecar (docs/howto/pods.md)"
                  + (f"; no pods here: {why_not_pods}" if why_not_pods else ""), flush=True)
        if control_plane == "etcd":
            member, source = etcdserver.control_plane(state / "etcd", run_dir, identity_dir,
                                                      path.read_text(), path.name, config.mesh.id,
                                                      etcd_port)
            etcd_child = member.child  # stopped last: sidecars revoke their leases while stopping
            flags = operator_flags(identity_dir)
            print(f"control-plane: {source} (etcd pid {member.child.pid}; mutual TLS, mesh CA; "
                  f"`mitmesh config push|history|rollback --store {source}{flags}`)", flush=True)
            # every proxy presents its workload certificate to etcd: they find it here (their
            # children, the fork server's sidecars too, inherit it)
            os.environ[store.IDENTITY_ENV] = str(identity_dir)
            for name in store.TLS_ENV.values():  # an operator's own files are no proxy's identity
                os.environ.pop(name, None)
        apps: list[tuple[Instance, procs.Child]] = []
        for inst in planned:
            argv = service_argv(inst, config, gateway_url, path)
            if inst.pod is not None:
                # a function reads its handler's settings from the config, wherever it lies
                argv = net.app_argv(inst.pod, argv, expose=(str(path),) if inst.function else ())
            child = procs.spawn(inst.name, argv, log_dir=run_dir, cwd=str(ROOT) if inst.pod else None)
            children.append(child)
            child.ports = [(inst.host, inst.port)]
            apps.append((inst, child))
        deadline = time.monotonic() + 20
        for inst, child in apps:
            while not _healthy(inst.host, inst.port, child.pid, inst.pod):
                if not child.alive() or time.monotonic() > deadline or stopping.is_set():
                    raise RuntimeError(f"{child.name} did not become healthy:\n{child.tail()}")
                time.sleep(0.05)
            where = f" in pod {inst.pod.netns} as uid {inst.pod.uid}" if inst.pod else ""
            print(f"service: {child.name} http://{inst.host}:{inst.port}{where} pid {child.pid}", flush=True)
        sidecars = []
        if forkserver.available() and any(inst.sidecar for inst, _ in apps):
            server = forkserver.Server(run_dir)
            server.start()
            print(f"fork-server: pid {server.child.pid}, {server.info.get('modules')} modules preloaded "
                  f"in {server.info.get('preload_ms')} ms", flush=True)
        for inst, _ in apps:
            if inst.sidecar is not None:
                sc = start_sidecar(inst, source, run_dir, str(path.parent), server, net)
                children.append(sc)
                sidecars.append((inst, sc))
        for inst, sc in sidecars:  # announced: its app answered, and the mesh can find it
            procs.wait_log(sc, "announced ", timeout=60)  # starting many at once on few cores is slow
            s = inst.sidecar
            mode = config.services[inst.service].mtls
            scheme = "https" if mode != "DISABLE" else "http"  # mTLS, with the service's certificate
            outbound = (f"captured to 127.0.0.1:{s.outbound} in pod {inst.pod.netns}" if inst.pod
                        else f"http://{s.address}:{s.outbound}")
            print(f"sidecar: {inst.name} inbound {scheme}://{s.address}:{s.inbound} outbound {outbound} "
                  f"admin http://{s.address}:{s.admin}/status pid {sc.pid}", flush=True)
        token = secrets.token_hex(12)
        argv = (gateway_argv(path, config, web=True, web_port=web_port, web_token=token,
                             source=None if source == path else str(source)) if web
                else lean_argv(source, workers))
        env = {podnet.ENV: net.mesh} if net else {}
        if control_plane == "etcd":  # it reads etcd before its config names gateway.identity
            cert, key = pki.workload_paths(identity_dir, config.gateway.identity)
            env |= {store.TLS_ENV["cert"]: str(cert), store.TLS_ENV["key"]: str(key)}
        gw = procs.spawn("gateway", argv, log_dir=run_dir, cwd=str(path.parent), env=env)
        children.append(gw)
        _echo(gw, "[gateway]")
        admin_cfg = config.gateway.admin
        if web:
            procs.wait_ports(gw, [(l.address, l.port) for l in listeners]
                             + [(admin_cfg.address, admin_cfg.port), ("127.0.0.1", web_port)])
        else:
            procs.wait_log(gw, "gateway ready", timeout=60)  # as the sidecars: a loaded machine is slow
        if sidecars and config.discovery.mdns is not None:
            found = re.search(r"gateway ready: (\d+) worker", gw.log.read_text(errors="replace")) if not web else None
            _wait_discovered([(admin_cfg.address, admin_cfg.port, int(found.group(1)) if found else 1)]
                             + [(i.sidecar.address, i.sidecar.admin, 1) for i, _ in sidecars],
                             len(sidecars), stopping, netns=net.mesh if net else None)
        for l in listeners:
            scheme, label = (("https", "gateway-mtls" if l.tls.mtls else "gateway-tls") if l.tls
                             else ("http", "gateway"))
            print(f"{label}: {scheme}://{l.address}:{l.port}", flush=True)
        print(f"admin: http://{admin_cfg.address}:{admin_cfg.port}/status", flush=True)
        print(f"admin token: {', '.join(map(str, tokens))} (mode 0600; POST /record needs "
              "Authorization: Bearer <token>, which `mitmesh record` sends)", flush=True)
        if web:
            print(f"web: http://127.0.0.1:{web_port}/?token={token}", flush=True)
        print(f"logs: {run_dir}", flush=True)
        # where `mitmesh record` finds every proxy of this demo
        up_state.parent.mkdir(parents=True, exist_ok=True)
        up_state.write_text(json.dumps({"admins": [f"http://{admin_cfg.address}:{admin_cfg.port}"] + [
            f"http://{i.sidecar.address}:{i.sidecar.admin}" for i, _ in sidecars],
            **({"netns": net.mesh} if net else {})}))  # where the pods' admin listeners are reached
        print(f"gateway-pid: {gw.pid}", flush=True)
        if plain:
            print(f"try: curl {gateway_url}/catalog/items   (Ctrl-C stops everything)", flush=True)
        print("ready", flush=True)
        while not stopping.is_set():
            if server is not None and not server.alive():  # its proxies live on, re-parented to us
                print(f"fork-server: pid {server.child.pid} exited with {server.child.proc.returncode}; "
                      "restarting it", flush=True)
                server.ensure()
                print(f"fork-server: pid {server.child.pid}", flush=True)
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
        if children and children[-1].name == "gateway":  # stop sending first, then the rest at once
            children.pop().stop()
        procs.stop_all(children)
        if server is not None:
            server.close()
        if etcd_child is not None:
            etcd_child.stop()
        up_state.unlink(missing_ok=True)
        if net is not None:
            net.close()
            print(f"removed {len(net.pods)} pods and the mesh namespace {net.mesh}", flush=True)
        os.close(lock)
        print("stopped", flush=True)
