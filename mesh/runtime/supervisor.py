"""`mitmesh gateway --workers N`: N proxy worker processes sharing the listening sockets, supervised.

The supervisor binds each listener once per worker (SO_REUSEPORT) and the admin listener once, and
hands each worker its sockets; a worker that dies is restarted with the same sockets, so no
listener ever closes.
Each worker watches the config file itself, so one edit reaches all of them.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from discovery.etcdwire import EtcdError
from mesh.runtime import forkserver, procs, sockets
from mesh.runtime.store import is_location, load_any
from mesh.config import ConfigError, load
from mesh.core.state import admin_of, listeners_of
from mesh.core.workload import parse_workload


@dataclass
class Worker:
    index: int
    child: procs.Child | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = 0.0
    ready_pipe: int = -1
    ready: bool = False


def worker_argv(config: Path, inherit: list[str], role: str = "gateway",
                verbosity: str = "info", ready_fd: int = -1, workload: str = "",
                announce: bool = True) -> list[str]:
    # -O: mitmproxy type-checks every request and response object under __debug__ (+40 % req/s)
    argv = procs.python("-O", "-m", "mesh.proxy.worker", "--config", str(config), "--role", role,
                        "--verbosity", verbosity, "--ready-fd", str(ready_fd))
    if workload:
        argv += ["--workload", workload]
    if not announce:
        argv.append("--no-announce")
    for spec in inherit:
        argv += ["--inherit", spec]
    return argv


def unavailable(config, workload) -> list[str]:
    """Every listener address of this gateway or sidecar that is taken, naming its holder. All are
    checked before any is bound, so one run names them all."""
    wanted = [admin_of(config, workload)] + [(b.listener.address, b.listener.port)
                                            for b in listeners_of(config, workload)]
    return [t for t in (sockets.taken(a, p) for a, p in wanted) if t]


def serve(config_path: str, workers: int, verbosity: str = "info", role: str = "gateway",
          workload: str = "") -> int:
    path = config_path if is_location(config_path) else Path(config_path).resolve()
    try:
        wl = parse_workload(workload) if role == "sidecar" else None
        config = load_any(str(path), wl.name if wl else "gateway", wl.service if wl else "gateway")
    except (ConfigError, EtcdError, ValueError) as e:
        print(e, file=sys.stderr)
        return 1
    listeners = [(b.listener.address, b.listener.port) for b in listeners_of(config, wl)]
    admin_address, admin_port = admin_of(config, wl)
    drain = config.sidecar.drain if role == "sidecar" else 0.0
    try:
        problems = unavailable(config, wl)
        if problems:
            raise OSError(errno.EADDRINUSE, "; ".join(problems))
        shared = [sockets.listen(admin_address, admin_port)]
        own = [[sockets.listen(a, p, reuse_port=True) for a, p in listeners] for _ in range(workers)]
    except OSError as e:
        print(f"mitmesh {role}: cannot listen: {e.strerror}", file=sys.stderr)
        return 1
    socks = shared + [s for group in own for s in group]
    # shared by the workers: Prometheus multiprocess files and each worker's latest flows and mirror
    # differences (mesh/telemetry/records.py), so /metrics, /status and /flows cover them all; control files
    # such as a running recording
    run = tempfile.mkdtemp(prefix="mitmesh-gateway-")
    os.makedirs(os.path.join(run, "metrics"))
    env = {"MITMESH_RUN_DIR": run, "PROMETHEUS_MULTIPROC_DIR": os.path.join(run, "metrics")}
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pool = [Worker(i) for i in range(workers)]
    # workers are forks of one preloaded engine (mesh/runtime/forkserver.py); a dead fork server's
    # workers become our children and keep serving, and the next start restarts it
    server = forkserver.Server(stdout=sys.stdout) if forkserver.available() else None
    if server is not None:
        forkserver.become_subreaper()

    def start(w: Worker) -> None:
        mine = shared + own[w.index]
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        w.child = (server.spawn if server is not None else procs.spawn)(f"worker-{w.index}",
                              worker_argv(path, [sockets.spec(s) for s in mine], role, verbosity,
                                          write_end, workload, announce=w.index == 0),
                              stdout=sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None,
                              pass_fds=tuple(s.fileno() for s in mine) + (write_end,),
                              env={**env, "MITMESH_WORKER": str(w.index)})
        os.close(write_end)
        w.ready_pipe, w.ready = read_end, False
        w.started = time.monotonic()
        print(f"worker {w.index} started, pid {w.child.pid}", flush=True)

    announced = False

    def poll_ready(w: Worker) -> None:
        nonlocal announced
        if w.ready or w.ready_pipe < 0:
            return
        try:
            data = os.read(w.ready_pipe, 64)
        except BlockingIOError:
            return
        if data.startswith(b"ready"):
            w.ready = True
            print(f"worker {w.index} ready, pid {w.child.pid if w.child else '?'}", flush=True)
        os.close(w.ready_pipe)
        w.ready_pipe = -1
        if not announced and all(x.ready for x in pool):
            announced = True
            print(f"{role} ready: {len(pool)} workers", flush=True)

    for w in pool:
        start(w)
    try:
        while not stopping:
            now = time.monotonic()
            if server is not None and not server.alive():
                print(f"fork server (pid {server.child.pid if server.child else '?'}) exited; "
                      "restarting it", flush=True)
                server.ensure()
                print(f"fork server restarted, pid {server.child.pid}", flush=True)
            for w in pool:
                poll_ready(w)
                if w.child is not None and not w.child.alive():
                    code = w.child.proc.returncode
                    # back off on crash loops; a worker that ran a while starts a fresh count
                    w.restarts = 1 if now - w.started > 60 else w.restarts + 1
                    delay = min(0.5 * 2 ** min(w.restarts - 1, 6), 30.0)
                    print(f"worker {w.index} (pid {w.child.pid}) exited with {code}; "
                          f"restarting in {delay:g}s", flush=True)
                    _forget_metrics(w.child.pid, env["PROMETHEUS_MULTIPROC_DIR"])
                    w.child = None
                    w.next_start = now + delay
                    if w.ready_pipe >= 0:
                        os.close(w.ready_pipe)
                        w.ready_pipe = -1
                if w.child is None and now >= w.next_start:
                    start(w)
            time.sleep(0.05)
    finally:
        for w in pool:
            if w.child is not None:
                w.child.proc.send_signal(signal.SIGTERM)
        for w in pool:
            if w.child is not None:
                w.child.stop(timeout=5 + drain)
        if server is not None:
            server.close()
        for s in socks:
            s.close()
        shutil.rmtree(run, ignore_errors=True)
    return 0


def _forget_metrics(pid: int, path: str) -> None:
    """A dead worker's live gauges must not linger; its counters stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
