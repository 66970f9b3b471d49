"""The lean proxy runtime: a mitmproxy Master with only the addons a proxy needs, plus our chain.

mitmdump dispatches every hook through ~50 built-in addons; a gateway needs five. This is the one
module of mesh/ that builds a mitmproxy Master (and so imports mitmproxy).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys

import dataclasses
import functools
import gc
import inspect

from mitmproxy import addonmanager, exceptions, hooks, master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, termlog
from mitmproxy.proxy import mode_servers

from discovery.etcdwire import EtcdError
from mesh.proxy import headers
from mesh.runtime import sockets
from mesh.runtime.store import is_location, load_any
from mesh.config import ConfigError
from mesh.core.state import listeners_of
from mesh.core.workload import parse_workload


class CoalescingWriter:
    """A StreamWriter whose writes of one event-loop turn leave in one send.

    mitmproxy writes a response's head and body as two commands, and asyncio sends each at once:
    two syscalls per response, the costliest calls of a proxy here. Buffering until the end of the
    turn (call_soon) sends them together; nothing waits longer than the current turn.
    """

    __slots__ = ("_writer", "_buffer", "_loop")

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer += data

    def _flush(self) -> None:
        if self._buffer:
            if not self._writer.is_closing():
                self._writer.write(bytes(self._buffer))
            self._buffer.clear()

    def write_eof(self) -> None:
        self._flush()
        self._writer.write_eof()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    def __getattr__(self, name: str):
        return getattr(self._writer, name)


async def _listen(self, host: str, port: int):
    """Accept on the socket inherited from the supervisor, or bind one that others may share."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.handle_stream(reader, CoalescingWriter(writer))

    sock = sockets.inherited(host, port)
    if sock is not None:
        return [await asyncio.start_server(handle, sock=sock, backlog=1024)]
    if not sockets.any_inherited():  # a process on its own (a one-worker sidecar) has no sibling to
        problem = sockets.taken(host, port)  # share a port with: one held already is another's
        if problem:
            raise OSError(errno.EADDRINUSE, problem)
    return [await asyncio.start_server(handle, host, port, reuse_port=True, backlog=1024)]


log = logging.getLogger("mitmesh.runtime")


@functools.cache
def _arg_names(hook_type: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(hook_type))


class HookTable(addonmanager.AddonManager):
    """mitmproxy's AddonManager, with hooks looked up once per hook name instead of per event.

    The stock manager walks every addon (and its children) through a generator and a context
    manager for every event, about a third of a proxy's CPU under load. Here each hook name maps to
    the callables that implement it, rebuilt when addons change; errors are logged per addon as
    before, and AddonHalt still stops the event.
    """

    def __init__(self, m):
        super().__init__(m)
        self._table: dict[str, tuple] = {}

    def register(self, addon):
        self._table.clear()
        return super().register(addon)

    def remove(self, addon):
        self._table.clear()
        super().remove(addon)

    def clear(self):
        self._table.clear()
        super().clear()

    def _callables(self, name: str) -> tuple:
        found = []
        for a in addonmanager.traverse(self.chain):
            func = getattr(a, name, None)
            if func is not None and callable(func):
                found.append(func)
        self._table[name] = table = tuple(found)
        return table

    async def trigger_event(self, event: hooks.Hook):
        funcs = self._table.get(event.name)
        if funcs is None:
            funcs = self._callables(event.name)
        if not funcs:
            return
        args = [getattr(event, n) for n in _arg_names(type(event))]
        for func in funcs:
            try:
                res = func(*args)
                if res is not None and inspect.isawaitable(res):
                    await res
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:
                log.error(f"Addon error: {e}", exc_info=True)


def _share_listeners() -> None:
    # mitmproxy binds its own listening sockets and offers no hook to pass one in; its reverse and
    # regular instances (the only modes we use) accept from ours instead.
    mode_servers.ReverseInstance.listen = _listen
    mode_servers.RegularInstance.listen = _listen
    mode_servers.TransparentInstance.listen = _listen


class Ready:
    """Tells the supervisor, through an inherited pipe, that this worker serves (listeners bound);
    without a supervisor (a one-worker sidecar), prints it."""

    def __init__(self, fd: int, role: str = "gateway"):
        self.fd = fd
        self.role = role

    def running(self):
        # Everything loaded so far (config, compiled routes, modules) lives as long as the process:
        # keep it out of the collector's scans, which otherwise grow with the number of routes.
        gc.freeze()
        if self.fd >= 0:
            os.write(self.fd, b"ready\n")
            os.close(self.fd)
            self.fd = -1
        elif self.fd == -1:
            print(f"{self.role} ready: 1 worker, pid {os.getpid()}", flush=True)
            self.fd = -2


def build_master(config_path: str, role: str = "gateway", verbosity: str = "info",
                 ready_fd: int = -1, workload: str = "", announce: bool = True) -> master.Master:
    from addons import chain  # the chain imports mitmproxy's addon API; keep it out of module import

    wl = parse_workload(workload) if role == "sidecar" else None
    config = load_any(config_path, wl.name if wl else "gateway", wl.service if wl else "gateway")
    opts = options.Options()
    m = master.Master(opts)
    m.addons = HookTable(m)
    m.addons.add(termlog.TermLog())
    m.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), errorcheck.ErrorCheck())
    extra: dict = {}
    if role == "gateway":
        m.addons.add(*chain.gateway())
        modes = [b.mode for b in listeners_of(config, None)]
    elif role == "sidecar":
        m.addons.add(*chain.sidecar())
        modes = [b.mode for b in listeners_of(config, parse_workload(workload))]
        extra = {"mesh_workload": workload, "mesh_announce": announce}
    else:
        raise ValueError(f"unknown role {role!r}")
    m.addons.add(Ready(ready_fd, role))  # last: every other addon's running() has completed
    opts.update(
        mode=modes,
        listen_host="127.0.0.1",
        connection_strategy="lazy",
        keep_host_header=True,
        termlog_verbosity=verbosity,
        mesh_config=config_path if is_location(config_path) else os.path.abspath(config_path),
        **extra,
    )
    return m


async def _drain(m: master.Master) -> None:
    """A sidecar's graceful stop: goodbye first, keep serving while callers let go, then stop."""
    config = m.addons.get("config")
    snap = config.state.snapshot if config is not None else None
    try:
        announcers = [a for a in (m.addons.get("mdns"), m.addons.get("etcd")) if a is not None]
        await asyncio.gather(*(a.withdraw() for a in announcers))
        if snap is not None and snap.workload is not None:
            log.info(f"draining for {snap.config.sidecar.drain:g}s")
            await asyncio.sleep(snap.config.sidecar.drain)
    finally:
        m.shutdown()


async def run(config_path: str, role: str, verbosity: str, ready_fd: int = -1,
              workload: str = "", announce: bool = True) -> int:
    _share_listeners()
    headers.install()  # header lookups without a Python call per field
    m = build_master(config_path, role, verbosity, ready_fd, workload, announce)
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task] = []

    def stop():
        if role == "sidecar" and not draining:
            draining.append(loop.create_task(_drain(m)))
        else:  # the gateway, or a second signal while draining
            m.shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await m.run()
    return 0


LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


def quiet_logs(verbosity: str) -> None:
    """Log records below the verbosity are never made. Every record goes to mitmproxy's log handler,
    which dispatches it as an `add_log` event through the addon manager (~40 µs each): hpack logs
    each header it encodes or decodes at debug level, which made HTTP/2 5x slower than HTTP/1.1
    when the root logger let debug records through (mitmproxy's own entry point silences hpack too)."""
    logging.getLogger().setLevel(LEVELS[verbosity])
    logging.getLogger("hpack").setLevel(logging.WARNING)  # one line per header, even at debug
    logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)  # no line per connection
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mesh.proxy.master", description="one mitmesh proxy worker")
    p.add_argument("--config", default="mesh.yaml")
    p.add_argument("--role", default="gateway", choices=["gateway", "sidecar"])
    p.add_argument("--workload", default="", help="a sidecar's workload spec (see mesh/core/workload.py)")
    p.add_argument("--no-announce", action="store_true", help="a sidecar worker that does not announce")
    p.add_argument("--inherit", action="append", default=[], metavar="ADDR:PORT=FD",
                   help="a listening socket inherited from the supervisor")
    p.add_argument("--verbosity", default="info", choices=["error", "warn", "info", "debug"])
    p.add_argument("--ready-fd", type=int, default=-1, help="write 'ready' here once serving")
    args = p.parse_args(argv)
    if args.role == "sidecar":
        try:
            parse_workload(args.workload)
        except ValueError as e:
            print(f"mitmesh sidecar: {e}", file=sys.stderr)
            return 2
    for spec in args.inherit:
        sockets.adopt(spec)
    quiet_logs(args.verbosity)
    try:
        return asyncio.run(run(args.config, args.role, args.verbosity, args.ready_fd, args.workload,
                               not args.no_announce))
    except (ConfigError, EtcdError, exceptions.OptionsError) as e:  # e.g. a missing workload certificate
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
