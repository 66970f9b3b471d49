"""Starting proxies by forking one preloaded engine (mesh/proxy/forkserver.py) instead of a fresh Python each.

A proxy process costs ~100 MB and 1-4 s of CPU when it imports mitmproxy and mitmesh itself; forked
from a parent that imported them once (and froze them, `gc.freeze()`), it shares those pages
copy-on-write and serves in milliseconds, as gunicorn `--preload` and CPython's multiprocessing
`forkserver` do. This module is the launcher's side: the request protocol (one JSON message per
request on a SOCK_SEQPACKET socketpair, the child's descriptors passed with SCM_RIGHTS), `Server`
(starts the fork server, restarts it when it died) and `ForkedProc`, a `subprocess.Popen` look-alike
for a proxy that is the fork server's child, not ours. It does not import mitmproxy.

Supervision: the launcher marks itself a child subreaper, so when the fork server dies its proxies
are re-parented to the launcher (not to init) and keep serving; the launcher learns of an exit from
the proxy's pidfd and reads the code from the fork server's report or, once re-parented, waitpid.
A proxy dies with the launcher (its lifeline: a pidfd of the launcher it watches), never with the
fork server. `MITMESH_FORK_SERVER=0` (or `--no-fork-server`) starts every proxy as its own Python.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from mesh.runtime import procs

ENV = "MITMESH_FORK_SERVER"  # "0": no fork server, every proxy is a fresh Python (the fallback)
MODULES = ("mesh.proxy.worker",)  # the entry points a request may run (`python -m ...`)
MAX_MESSAGE = 1 << 20
MAX_FDS = 64
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NAME = 15

forked = False  # true in a process the fork server made (set by the child before it runs its main)


def available() -> bool:
    """Linux (pidfds, subreapers, SCM_RIGHTS), and not switched off."""
    return (sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
            and os.environ.get(ENV, "1") not in ("0", "no", "false"))


def become_subreaper() -> None:
    """Orphans below us (a dead fork server's proxies) become our children, not init's."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


NAME = b"mitmesh-fork"  # the fork server's process name (comm); its children take back the interpreter's


def set_name(name: bytes) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def proxies_of(pid: int) -> list[int]:
    """The proxy processes a launcher or supervisor `pid` runs: its children other than its fork
    server, and the fork server's children."""
    out = []
    for child in _children(pid):
        try:
            comm = Path(f"/proc/{child}/comm").read_bytes().strip()
        except OSError:
            continue
        out += _children(child) if comm == NAME else [child]
    return sorted(out)


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        raise EOFError("the other end closed")
    return json.loads(data), fds


def entry(argv: list[str]) -> tuple[str, list[str]] | None:
    """`python [-O] -m MODULE ARGS...` with a MODULE the fork server runs: (MODULE, ARGS), else None."""
    if "-m" not in argv[:3]:
        return None
    i = argv.index("-m")
    if i + 1 >= len(argv) or argv[i + 1] not in MODULES:
        return None
    return argv[i + 1], argv[i + 2:]


class ForkedProc:
    """The `subprocess.Popen` surface procs.Child uses, for a proxy the fork server forked."""

    def __init__(self, server: Server, pid: int, args: list[str]):
        self.server = server
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self.pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:  # ours once the fork server died (we are its subreaper)
            got, status = os.waitpid(self.pid, os.WNOHANG)
            if got:
                return self._exited(os.waitstatus_to_exitcode(status))
        except ChildProcessError:
            pass
        if not select.select([self.pidfd], [], [], 0)[0]:
            return None
        code = self.server.exit_code(self.pid, timeout=1.0)
        if code is None:  # exited as the fork server died: re-parented to us, or reaped by it
            try:
                got, status = os.waitpid(self.pid, os.WNOHANG)
                code = os.waitstatus_to_exitcode(status) if got else -1
            except ChildProcessError:
                code = -1
        return self._exited(code)

    def _exited(self, code: int) -> int:
        self.returncode = code
        os.close(self.pidfd)
        return code

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            select.select([self.pidfd], [], [], 0.05 if deadline is None else
                          max(min(deadline - time.monotonic(), 0.05), 0))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self.pidfd, sig)  # by pidfd: never a recycled pid

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Server:
    """One fork server, started on first use and again whenever it died."""

    def __init__(self, log_dir: Path | None = None, name: str = "fork-server", stdout=None,
                 preload: str = "proxy", flags: tuple[str, ...] = ("-O",)):
        """`preload`: "proxy" (the engine, children run MODULES) or "functions" (function instances,
        run by path); `flags`: the interpreter's, which every child inherits (-O as every worker,
        mesh/runtime/supervisor.py worker_argv; -I for function instances, as spec.argv)."""
        self.log_dir = log_dir
        self.name = name
        self.stdout = stdout
        self.preload = preload
        self.flags = flags
        self.child: procs.Child | None = None
        self.sock: socket.socket | None = None
        self.info: dict = {}
        self.starts = 0
        self._exits: dict[int, int] = {}
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def start(self, timeout: float = 120.0) -> None:
        """Start it and wait until it has preloaded (a few seconds of CPU, once)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.child = procs.spawn(self.name, procs.python(*self.flags, "-m", "mesh.proxy.forkserver",
                                                             "--fd", str(theirs.fileno()),
                                                             "--preload", self.preload),
                                     log_dir=self.log_dir, stdout=self.stdout, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.sock, self.starts = ours, self.starts + 1
        ready = select.select([ours], [], [], timeout)[0]
        if not ready:
            self.close()
            raise RuntimeError(f"{self.name} did not start within {timeout:g}s")
        try:
            self.info, _ = receive(ours)
        except (EOFError, OSError):
            tail = self.child.tail() if self.child else ""
            self.close()
            raise RuntimeError(f"{self.name} exited while preloading:\n{tail}") from None

    def ensure(self) -> bool:
        """Running, starting it if it is not (it died): True when this call (re)started it."""
        if self.alive():
            return False
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.start()
        return True

    def spawn(self, name: str, argv: list[str], *, log_dir: Path | None = None, env: dict | None = None,
              cwd: str | None = None, stdout=None, pass_fds: tuple[int, ...] = (),
              netns: str | None = None, uid: int | None = None) -> procs.Child:
        """procs.spawn's contract (own process group, output to log_dir/NAME.log, the same fds at the
        same numbers), by a fork of the preloaded engine; in `netns` (a name under /run/netns) and
        as `uid` if given. The child runs `argv`'s module (one of MODULES) with its arguments."""
        target = entry(argv)
        if target is None:
            raise ValueError(f"the fork server runs `python -m` one of {', '.join(MODULES)} (got {argv[:4]})")
        self.ensure()
        log = None
        if stdout is None and log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            log = log_dir / f"{name}.log"
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        elif stdout is not None:
            out = os.dup(stdout if isinstance(stdout, int) else stdout.fileno())
        else:
            out = os.dup(sys.stdout.fileno())
        request = {"name": name, "module": target[0], "args": target[1],
                   "env": {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                   "cwd": cwd or os.getcwd(), "netns": netns, "uid": uid}
        try:
            pid = self.fork(request, {1: out, 2: out, **{fd: fd for fd in pass_fds}})
        finally:
            os.close(out)
        return procs.Child(name, argv, ForkedProc(self, pid, argv), log)

    def fork(self, request: dict, fds: dict[int, int]) -> int:
        """One child as `request` says (name, module or path, args, env, cwd, netns, uid), with each
        of our descriptors `fds[n]` at its number n: its pid. Starts the server if it is not running."""
        self.ensure()
        with self._lock:
            send(self.sock, {**request, "fds": list(fds)}, list(fds.values()))
            reply = self._reply()
        if "error" in reply:
            raise RuntimeError(f"{self.name} could not start {request.get('name')}: {reply['error']}")
        return reply["pid"]

    def _reply(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if not select.select([self.sock], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise RuntimeError(f"{self.name} did not answer within {timeout:g}s")
            try:
                message, fds = receive(self.sock)
            except (EOFError, ConnectionError):
                raise RuntimeError(f"{self.name} exited:\n{self.child.tail() if self.child else ''}") from None
            for fd in fds:
                os.close(fd)
            if "exited" in message:
                self._exits[message["exited"]] = message["code"]
            else:
                return message

    def exit_code(self, pid: int, timeout: float = 0.0) -> int | None:
        """The exit code the fork server reported for its child `pid`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while pid not in self._exits and self.sock is not None:
                left = deadline - time.monotonic()
                if not select.select([self.sock], [], [], max(left, 0))[0]:
                    break
                try:
                    message, fds = receive(self.sock)
                except (EOFError, ConnectionError):
                    break
                for fd in fds:
                    os.close(fd)
                if "exited" in message:
                    self._exits[message["exited"]] = message["code"]
            return self._exits.pop(pid, None)

    def close(self) -> None:
        """Stop the fork server (its proxies keep running: stop them first)."""
        if self.sock is not None:
            self.sock.close()  # it exits on EOF
            self.sock = None
        if self.child is not None:
            self.child.stop(timeout=2)
            self.child = None
