"""A tiny HTTP/1.1 server for a proxy's admin listener (/status, /metrics), on loopback by default.

Reading (GET, HEAD) is open to whoever reaches the listener, but for what shows traffic (`/flows`:
TRAFFIC), which a client beyond this host (not on loopback: a pod's neighbour, another host) reads
only with the token, as Linkerd serves its proxies' debug endpoints to localhost only; every other
method changes state (`POST /record`) and needs `Authorization: Bearer <token>`, the token in the
admin token file (`mitmesh certs init` and `mitmesh up` make it, mode 0600; the CLI reads it).
It answers only Host
headers naming localhost, a loopback address or its own address, so a web page cannot reach it by
rebinding its own DNS name to the listener's address, and only requests no proxy forwarded.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Awaitable, Callable

from mesh.config.types import loopback

log = logging.getLogger("mitmesh.admin")

Handler = Callable[[str, str], "tuple[int, str, bytes] | Awaitable[tuple[int, str, bytes]]"]
READ_ONLY = frozenset({"GET", "HEAD"})
TRAFFIC = frozenset({"/flows"})  # recent requests: read from loopback, or with the token
TOKEN_FILE = "admin.token"
READ_TIMEOUT = 30.0  # a request head, or its body, must arrive within this many seconds


def token_path(config_file: str | Path, config, sidecar: bool = False) -> Path:
    """The admin token file of a config: `<gateway|sidecar>.admin.token_file`, by default
    `<mesh.identity.dir>/admin.token`, relative to the config file's folder."""
    base = Path(config_file).resolve().parent
    chosen = (config.sidecar.admin if sidecar else config.gateway.admin).token_file
    return base / (chosen or Path(config.mesh.identity.dir, TOKEN_FILE))


def token_paths(config_file: str | Path, config) -> list[Path]:
    """Every admin token file a config names (the gateway's and the sidecars')."""
    return list(dict.fromkeys(token_path(config_file, config, s) for s in (False, True)))


def ensure_token(path: Path) -> bool:
    """Make a random token file (mode 0600) unless one exists; True when made."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return True


def read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


# What a proxy of the mesh adds to every request it forwards: the gateway and a sidecar inbound
# always append X-Forwarded-For and set -Proto and -Host (addons/forwarded.py), and no client can
# nominate them away (mesh/core/hopbyhop.py refuses that). RFC 7239's Forwarded is what other
# proxies add.
FORWARDED_MARKS = ("x-forwarded-for", "forwarded", "x-forwarded-host", "x-forwarded-proto")


def _host_name(host: str) -> str:
    """The name of a Host header without its port, lower case; an IP address in its one spelling."""
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _own_name(address: str) -> str | None:
    """The name a Host header gives a listener bound to `address`: none for a wildcard (0.0.0.0,
    ::), which is no address a client calls; the connection's own address stands for it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower()
    return None if ip.is_unspecified else str(ip)


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
    def __init__(self, address: str, port: int, handlers: dict[str, Handler], sock=None,
                 token: Callable[[], str | None] = lambda: None):
        self.address = address
        self.port = port
        self.handlers = handlers
        self.token = token  # the current token (read when needed, so a new file takes effect at once)
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._own = _own_name(address)

    def refusal(self, method: str, headers: dict[str, str], local: str | None = None,
                path: str = "", peer: str | None = None) -> tuple[int, str, bytes] | None:
        """The answer to a request that may not go on (wrong Host, forwarded by a proxy, no or
        wrong token), else None. `local`: the address the connection came to; `peer`: the
        address it came from (None: this host's own, as from a test)."""
        host = headers.get("host", "")
        # DNS rebinding: a page whose own name now resolves to this listener sends that name. Only
        # localhost, loopback addresses and this listener's own address (the connection's, for a
        # wildcard bind) are names a direct client uses, on whatever address it binds
        if host and not self._host_allowed(_host_name(host), local):
            return json_reply({"error": "host_not_allowed", "reason": "this admin listener "
                               "answers only requests addressed to localhost, a loopback address "
                               "or its own address"}, 403)
        # A proxy forwarded it: a rogue discovery announcement (unauthenticated: mDNS, etcd) can
        # name this port as an instance, and the gateway would then send public requests here
        # from loopback. The admin is for direct clients (the CLI, curl, Prometheus), which add
        # none of these marks. A sidecar's outbound adds none either, but its downstream is the
        # local app, which reaches this port directly anyway
        marked = next((m for m in FORWARDED_MARKS if m in headers), None)
        if marked is not None:
            return json_reply({"error": "forwarded_request", "reason": "this admin listener "
                               "answers only direct requests, not one a proxy forwarded "
                               f"({marked})"}, 403)
        beyond = peer is not None and not loopback(peer)
        if method in READ_ONLY and not (path in TRAFFIC and beyond):
            return None
        expected = self.token()
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if expected and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                           expected.encode()):
            return None
        why = ("no admin token is set up; `mitmesh certs init` makes one" if not expected else
               "wrong admin token" if given else "send the admin token: Authorization: Bearer <token>")
        what = (f"{method} changes state" if method not in READ_ONLY else
                f"{path} shows traffic, read from {peer}, not a loopback address")
        return json_reply({"error": "unauthorized", "reason": f"{what}: {why}"}, 401)

    def _host_allowed(self, name: str, local: str | None) -> bool:
        if loopback(name) or name == self._own:
            return True
        return local is not None and name == _own_name(local)

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
        sockname = writer.get_extra_info("sockname")
        local = sockname[0] if isinstance(sockname, tuple) else None
        peername = writer.get_extra_info("peername")
        peer = peername[0] if isinstance(peername, tuple) else None
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
                if len(line) != 3:
                    return
                method, target = line[0], line[1]
                headers = {}
                for h in head.split(b"\r\n")[1:]:
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                try:
                    length = int(headers.get("content-length") or 0)
                except ValueError:
                    return
                if not 0 <= length <= 1 << 16:  # admin requests carry their arguments in the query
                    return
                if length:  # a body cut short or never sent ends the connection, as a head does
                    try:
                        await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
                    except (asyncio.IncompleteReadError, TimeoutError):
                        return
                path, _, query = target.partition("?")
                handler = self.handlers.get(path)
                refused = self.refusal(method, headers, local, path, peer)
                if refused is not None:
                    status, ctype, body = refused
                elif handler is None:
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
                challenge = 'www-authenticate: Bearer realm="mitmesh-admin"\r\n' if status == 401 else ""
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n{challenge}"
                    f"content-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
                )
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
