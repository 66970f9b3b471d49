"""The fork server (`python -O -m mesh.proxy.forkserver --fd N`): one preloaded engine that forks proxies.

It imports what every proxy imports (mitmproxy's master, proxy server and layers, mitmesh's addon
chain and mesh packages), freezes those objects out of the collector (`gc.freeze()`, so no
collection writes to their pages and breaks the copy-on-write sharing) and then only forks. Nothing
per-proxy exists in it: no event loop, no socket but its control socket, no TLS context or key, no
config, no thread (checked before every fork). A child starts a new session, puts the descriptors it
was sent at the numbers its argv names, closes the control socket, enters its network namespace,
drops to its uid, restores default signal handling and runs the same `python -m` main as a proxy
started on its own. `random` reseeds itself in every fork child (CPython registers it with
os.register_at_fork); request ids and TLS keys come from os.urandom and OpenSSL, which are fork-safe.
The protocol and the launcher's side: mesh/runtime/forkserver.py.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import importlib
import os
import runpy
import select
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from mesh.runtime import forkserver as protocol

# What every proxy imports anyway (mesh/proxy/master.py builds the Master and the chain). Modules a
# proxy imports only for some configs stay out: a child without tracing must not hold the OTel SDK.
PRELOAD = ("mesh.proxy.master", "addons.chain", "mitmproxy.proxy.layers", "mitmproxy.certs",
           "mitmproxy.net.tls")
# What a function instance (mesh/functions/worker.py, run by path) imports before its handler, and the
# standard library a handler calling other services uses. Never the handler: a child imports the
# current version of the user's code, after its environment is set. Never mitmproxy or mitmesh: an
# instance holds the standard library, the installed packages and its handler (the fork server's own
# few mesh modules are forgotten in the child, see `child`).
FUNCTION_PRELOAD = ("argparse", "ctypes", "importlib.util", "concurrent.futures", "threading", "traceback",
                    "json", "struct", "base64", "urllib.request", "http.client")
OWN = ("mesh",)  # the packages a function child forgets: a handler may have a `mesh` of its own


def preload_functions() -> None:
    for name in FUNCTION_PRELOAD:
        importlib.import_module(name)


def preload() -> None:
    from mesh.proxy.worker import lean

    lean()  # as a worker does: only the mitmproxy addons the lean runtime uses, deferred modules
    # a child runs mesh.proxy.worker as __main__, as `python -m` would: not an imported copy of it
    del sys.modules["mesh.proxy.worker"]
    del sys.modules["mesh.proxy"].worker
    for name in PRELOAD:
        importlib.import_module(name)


def _lifeline(pidfd: int) -> None:
    """The launcher died (its pidfd became readable): stop as PR_SET_PDEATHSIG would have made us."""
    select.select([pidfd], [], [])
    os.kill(os.getpid(), signal.SIGTERM)


def _place(fds: list[int], targets: list[int], keep: list[int]) -> list[int]:
    """Put each received fd at its target number (moving `keep` out of the way first); returns `keep`'s
    new numbers."""
    high = max([*targets, *fds, *keep, 2]) + 1
    moved_keep = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, high) for fd in keep]
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, high) for fd in fds]
    for fd in {*fds, *keep}:
        os.close(fd)
    for src, dst in zip(moved, targets):
        os.dup2(src, dst, inheritable=True)  # as Popen(pass_fds=...) leaves them
        os.close(src)
    return moved_keep


def _shared_metrics() -> None:
    """prometheus_client chooses how it counts when it is imported, here without the workers'
    environment: a worker whose metrics are shared with its siblings through files
    (PROMETHEUS_MULTIPROC_DIR, mesh/runtime/supervisor.py) switches before it counts anything. Its
    labelled metrics make their values on first use; the unlabelled ones made theirs at import."""
    if "prometheus_client" not in sys.modules or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import REGISTRY, values
    from prometheus_client.metrics import MetricWrapperBase

    values.ValueClass = values.get_value_class()
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase) and not collector._labelnames:
            collector._metric_init()


def child(request: dict, fds: list[int], control: socket.socket, lifeline: int) -> int:
    """In the forked child: become the proxy the request describes, then run its main."""
    protocol.forked = True
    os.setsid()  # its own process group, as procs.spawn's start_new_session: stopped by killpg
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    control.close()  # the fork server's socket to the launcher is not the proxy's business
    [lifeline] = _place(fds, request["fds"], [lifeline])
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    _shared_metrics()
    if request.get("netns"):
        with open(f"/run/netns/{request['netns']}") as f:
            os.setns(f.fileno(), os.CLONE_NEWNET)
    if request.get("uid") is not None:
        os.setgroups([])
        os.setgid(request["uid"])
        os.setuid(request["uid"])
    threading.Thread(target=_lifeline, args=(lifeline,), daemon=True, name="lifeline").start()
    if "path" in request:  # a script run by path, as `python -I PATH` (a function instance)
        for name in [m for m in sys.modules if m.split(".")[0] in OWN]:
            del sys.modules[name]
        sys.argv = [request["path"], *request["args"]]
        runpy.run_path(request["path"], run_name="__main__")
        return 0
    sys.argv = [request["module"], *request["args"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    return 0


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def fork(request: dict, fds: list[int], control: socket.socket, lifeline: int, name: bytes) -> int:
    extra = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if extra:  # a thread's locks and state would be copied mid-use into the child
        raise RuntimeError(f"threads in the fork server: {', '.join(extra)}")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            protocol.set_name(name)
            code = child(request, fds, control, lifeline)
        except SystemExit as e:
            code = _exit_code(e)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    return pid


def serve(control: socket.socket, lifeline: int, name: bytes) -> None:
    while True:
        if select.select([control], [], [], 0.2)[0]:
            try:
                request, fds = protocol.receive(control)
            except (EOFError, ConnectionError):
                return  # the launcher closed its end or died: our children live on without us
            try:
                if len(fds) != len(request.get("fds", ())):
                    raise ValueError(f"{len(fds)} descriptors for {len(request.get('fds', ()))} targets")
                pid = fork(request, fds, control, lifeline, name)
                protocol.send(control, {"pid": pid})
                print(f"forked {request.get('name', '?')}: pid {pid}", flush=True)
            except Exception as e:  # a bad request fails alone; the server keeps serving
                protocol.send(control, {"error": f"{type(e).__name__}: {e}"})
            finally:
                for fd in fds:
                    os.close(fd)
        while True:  # report every exit (and reap, so no zombie lingers)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            try:
                protocol.send(control, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
            except OSError:
                return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -O -m mesh.proxy.forkserver", description=__doc__.split("\n")[0])
    p.add_argument("--fd", type=int, required=True, help="our end of the launcher's socketpair")
    p.add_argument("--preload", choices=("proxy", "functions"), default="proxy",
                   help="what the children run: proxies (the engine) or function instances (no engine)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the launcher, which stops us
    interpreter = Path("/proc/self/comm").read_bytes().strip()
    protocol.set_name(protocol.NAME)  # tells it from its children (protocol.proxies_of)
    control = socket.socket(fileno=args.fd)
    lifeline = os.pidfd_open(os.getppid())  # the launcher, watched by every child
    started = time.monotonic()
    cpu = time.process_time()
    (preload_functions if args.preload == "functions" else preload)()
    gc.collect()
    gc.freeze()  # everything so far lives as long as the children: the collector never touches it
    protocol.send(control, {"ready": os.getpid(), "modules": len(sys.modules),
                            "preload_ms": round((time.monotonic() - started) * 1000),
                            "preload_cpu_ms": round((time.process_time() - cpu) * 1000)})
    print(f"fork server ready: pid {os.getpid()}, {len(sys.modules)} modules preloaded", flush=True)
    serve(control, lifeline, interpreter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
