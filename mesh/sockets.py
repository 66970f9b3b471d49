"""Listening sockets made once by a supervisor and inherited by its workers.

Each worker gets its own SO_REUSEPORT socket per listener, so the kernel spreads connections evenly
(one shared socket lets the first worker to wake accept a whole burst of keep-alive connections).
The supervisor keeps every socket open: while a worker restarts, connections queue on its socket
and the new worker takes them, instead of being refused.
"""

from __future__ import annotations

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
