"""Child processes that cannot outlive us: own process group, parent-death signal, group kill on stop."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen
    log: Path | None = None
    ports: list[tuple[str, int]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the child's whole process group, wait, then SIGKILL what is left."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group, if any
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the child only (as a crash would), leaving the rest of its group alone."""
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        if self.log and self.log.exists():
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Stop:
    """A stop flag that signal handlers set (`on_signals`), for a main loop and its threads.

    threading.Event.set takes its condition's lock, and a Python signal handler runs on the main
    thread wherever that thread was, inside Event.wait or Event.set included: a second signal
    while the first one's set() held the lock deadlocked the process (`mitmesh up` got SIGTERM
    twice, from its process group and from `just` forwarding it, and never stopped). Setting this
    one takes no lock; `wait` polls it."""

    POLL = 0.05  # seconds between looks at the flag in `wait`

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Whether the flag is set, at once or within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self._set and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(self.POLL, left))
        return self._set

    def on_signals(self, *signals: int) -> Stop:
        """Set it on each of `signals` (call from the main thread)."""
        for sig in signals:
            signal.signal(sig, lambda *_: self.set())
        return self


def stop_all(children: list[Child], timeout: float = 10.0) -> None:
    """Stop many children at once: one SIGTERM to each group, one shared wait, then SIGKILL."""
    for child in children:
        if child.alive():
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass
        child.stop(timeout=0.01, sig=signal.SIGKILL)


def spawn(name: str, argv: list[str], *, log_dir: Path | None = None, env: dict | None = None,
          cwd: str | None = None, stdout=None, pass_fds: tuple[int, ...] = ()) -> Child:
    """Start a child in its own process group; its output goes to log_dir/NAME.log."""
    log = None
    if stdout is None and log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        stdout = open(log, "wb", buffering=0)
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=merged, cwd=cwd, start_new_session=True, preexec_fn=die_with_parent,
                            pass_fds=pass_fds)
    if log is not None:
        stdout.close()
    return Child(name, argv, proc, log)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def tool(name: str) -> str:
    """A console script of this environment (mitmdump, mitmweb, mitmesh)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ports(child: Child, ports: list[tuple[str, int]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode} before listening:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not listen on {pending} within {timeout:g}s:\n{child.tail()}")
        pending = [p for p in pending if not port_open(*p)]
        if pending:
            time.sleep(0.05)


def wait_log(child: Child, text: str, timeout: float = 30.0) -> None:
    """Wait until the child's log holds `text` (a readiness line)."""
    deadline = time.monotonic() + timeout
    while True:
        if child.log is not None and child.log.exists() and text in child.log.read_text(errors="replace"):
            return
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode} before '{text}':\n{child.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not print '{text}' within {timeout:g}s:\n{child.tail()}")
        time.sleep(0.05)


_handed_out: set[tuple[str, int]] = set()
# Where free_port draws from: below the kernel's ephemeral range, from one counter every process on
# the machine shares. A port drawn by the kernel's bind to port 0 is an ephemeral one: until its
# listener binds it, an outgoing connection of any process may take it as its source port, and
# another process's draw may return it again (a test's gateway found its port taken by the bench's
# gateway of a parallel test worker). Ports below the range are never a connection's source port,
# and the shared counter hands each one to one caller until it wraps.
_COUNTER = Path("/tmp/mitmesh-free-port")
_FIRST = 20000  # above the usual fixed ports (the demo's, etcd's, Redis', Prometheus')


def _drawable() -> range:
    """The ports below the ephemeral range (empty when that range starts too low to leave some)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(_FIRST, low) if low - _FIRST >= 4096 else range(0)


def _next(ports: range) -> int | None:
    """The shared counter's port, the counter moved on (wrapping); None when it cannot be used."""
    import fcntl

    try:
        fd = os.open(_COUNTER, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        text = f.read().strip()
        port = int(text) if text.isdigit() and int(text) in ports else ports.start
        f.seek(0)
        f.truncate()
        f.write(str(port + 1 if port + 1 in ports else ports.start))
    return port


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, never one this process was given before, and, from the shared
    counter below the ephemeral range, not one another process was given lately: the kernel can
    hand the same free port to two calls (it is free again once the first caller closed its
    probe), and a sidecar's four ports, drawn one after the other, then collided when bound."""
    ports = _drawable()
    for _ in range(200 if ports else 0):
        port = _next(ports)
        if port is None:
            break
        if (host, port) in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
        _handed_out.add((host, port))
        return port
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if (host, port) not in _handed_out:
            break
    _handed_out.add((host, port))
    return port
