"""A tiny HTTP/1.1 server for a proxy's admin listener (/status, /metrics), on loopback by default."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable

log = logging.getLogger("mitmesh.admin")

Handler = Callable[[str, str], "tuple[int, str, bytes] | Awaitable[tuple[int, str, bytes]]"]


def json_reply(obj, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(obj, indent=2, default=str).encode() + b"\n"


def prometheus_targets(snap, instances) -> list[dict]:
    """Prometheus HTTP service discovery (http_sd_configs): this proxy's admin listener and the
    sidecar admin listener of every instance it knows of, one target group each, labelled with
    who the proxy is: proxy (gateway, sidecar), service (a sidecar's), instance, zone, mesh. No
    version: a sidecar's outbound series carry the callee's, which the caller's must not replace."""
    def group(address: str, port: int, **labels: str | None) -> dict:
        return {"targets": [f"{address}:{port}"],
                "labels": {"mesh": snap.config.mesh.id, **{k: v for k, v in labels.items() if v}}}

    own = snap.workload
    groups = [group(*snap.admin, proxy=snap.role, service=own.service if own else None,
                    instance=snap.instance, zone=snap.zone)]
    seen = {snap.admin}
    for inst in sorted(instances, key=lambda i: (i.service, i.version, i.name)):
        if inst.admin and (inst.address, inst.admin) not in seen:
            seen.add((inst.address, inst.admin))
            groups.append(group(inst.address, inst.admin, proxy="sidecar", service=inst.service,
                                instance=inst.workload or inst.name, zone=inst.zone))
    return groups


class AdminServer:
    def __init__(self, address: str, port: int, handlers: dict[str, Handler], sock=None):
        self.address = address
        self.port = port
        self.handlers = handlers
        self._sock = sock
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self._sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=self._sock)
        else:
            self._server = await asyncio.start_server(self._handle, self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
                if len(line) != 3:
                    return
                method, target = line[0], line[1]
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1].strip() or 0)
                if length:
                    await reader.readexactly(length)
                path, _, query = target.partition("?")
                handler = self.handlers.get(path)
                if handler is None:
                    status, ctype, body = json_reply(
                        {"error": "not_found", "reason": f"no admin endpoint {path}",
                         "endpoints": sorted(self.handlers)}, 404)
                else:
                    try:
                        result = handler(method, query)
                        if asyncio.iscoroutine(result):
                            result = await result
                        status, ctype, body = result
                    except Exception as e:
                        log.exception("admin handler %s failed", path)
                        status, ctype, body = json_reply({"error": "internal", "reason": repr(e)}, 500)
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
                    f"content-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
                )
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
