"""One function instance as the proxy sees it: its process, the calls in flight on it, and the
reader that hands each result to its call (or fails them all when the process exits)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Callable

from . import protocol

START_TIMEOUT = 30.0  # an instance that does not import its handler in this long failed to start


class Crashed(Exception):
    pass


class Instance:
    """One worker process and the calls in flight on it."""

    def __init__(self, proc: asyncio.subprocess.Process, started: float):
        self.proc = proc
        self.pid = proc.pid
        self.started = started
        self.cold_ms = 0.0
        self.load = 0  # calls given this instance (in flight, or handed over to a waiter)
        self.served = 0
        self.last_used = time.monotonic()
        self.retired = False  # takes no new call; stopped once its calls are done
        self.calls: dict[int, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None
        self.exited = False

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        msg = await asyncio.wait_for(protocol.read(self.proc.stdout), START_TIMEOUT)
        if msg is None:
            raise Crashed(f"exited with {await self.proc.wait()} before it was ready")
        if not msg.get("ready"):
            raise Crashed(msg.get("error") or "not ready")
        self.cold_ms = (time.monotonic() - self.started) * 1000

    async def read_results(self, on_exit: Callable[[Instance, str], None]) -> None:
        assert self.proc.stdout is not None
        why = ""
        try:
            while (msg := await protocol.read(self.proc.stdout)) is not None:
                fut = self.calls.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (protocol.ProtocolError, ValueError, OSError, EOFError) as e:
            why = f"broke the protocol: {e}"
        self.exited = True
        try:
            code = await asyncio.wait_for(self.proc.wait(), 1.0)
        except TimeoutError:  # closed its output, or broke the protocol, but lives on
            self.kill()
            code = await self.proc.wait()
        detail = why or f"exited with {code}"
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # with both pipes closed and the process reaped, the transport closes
        for fut in self.calls.values():
            if not fut.done():
                fut.set_exception(Crashed(detail))
        self.calls.clear()
        on_exit(self, detail)

    def send(self, call_id: int, message: dict) -> asyncio.Future:
        assert self.proc.stdin is not None
        if self.exited or self.proc.returncode is not None:
            raise Crashed("had exited")
        fut = asyncio.get_running_loop().create_future()
        self.calls[call_id] = fut
        self.proc.stdin.write(protocol.encode({"id": call_id, **message}))
        return fut

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the handler's own children too
            except (ProcessLookupError, PermissionError):
                pass
