"""Listening sockets made once by a supervisor and inherited by its workers.

Each worker gets its own SO_REUSEPORT socket per listener, so the kernel spreads connections evenly
(one shared socket lets the first worker to wake accept a whole burst of keep-alive connections).
The supervisor keeps every socket open: while a worker restarts, connections queue on its socket
and the new worker takes them, instead of being refused.
"""

from __future__ import annotations

import errno
import os
import socket

_inherited: dict[tuple[str, int], socket.socket] = {}


def listen(address: str, port: int, backlog: int = 1024, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def adopt(spec: str) -> None:
    """Register an inherited socket from `address:port=fd`."""
    addr, _, fd = spec.rpartition("=")
    address, _, port = addr.rpartition(":")
    sock = socket.socket(fileno=int(fd))
    sock.setblocking(False)
    _inherited[(address.strip("[]"), int(port))] = sock


def spec(sock: socket.socket) -> str:
    address, port = sock.getsockname()[:2]
    return f"{address}:{port}={sock.fileno()}"


def inherited(address: str, port: int) -> socket.socket | None:
    return _inherited.get((address, port))


def any_inherited() -> bool:
    """Whether this process is a supervisor's worker (it was handed sockets)."""
    return bool(_inherited)


def taken(address: str, port: int) -> str | None:
    """Why address:port cannot be listened on, naming it and its holder when known; None if free.
    The probe binds without SO_REUSEPORT, so a listener that lets others share its port (as our own
    workers do) counts as taken: two meshes must never split one port's connections between them."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind((address, port))
        except OSError as e:
            where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if e.errno != errno.EADDRINUSE:
                return f"{where} cannot be listened on: {e.strerror}"
            owner = holder(address, port)
            return f"{where} is taken" + (f" (by pid {owner[0]}, {owner[1]})" if owner else "")
    return None


def holder(address: str, port: int) -> tuple[int, str] | None:
    """(pid, command) of the process listening on address:port (or on its wildcard), from /proc;
    None where /proc is missing or the process is another user's."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            host_hex, _, port_hex = local.rpartition(":")
            if state == "0A" and int(port_hex, 16) == port and _proc_address(host_hex) in (address, "0.0.0.0", "::"):
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                words = " ".join(a.decode(errors="replace") for a in argv if a).split()
                command = " ".join(os.path.basename(w) if "/" in w else w for w in words)
                return int(pid), command if len(command) <= 80 else command[:77] + "..."
        except OSError:
            continue
    return None


def _proc_address(hex_text: str) -> str:
    """/proc/net/tcp's address (hex, host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(hex_text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)
