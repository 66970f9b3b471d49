"""The instances of one function: started on demand, reused while warm, scaled up to max_instances,
stopped after idle (down to min_instances); calls beyond capacity wait in a bounded queue.

A call's outcome is a value, never an exception: the addon maps each kind to one reply
(full/queue_timeout 429, timeout 504, crash/error/start_failed 502).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from . import protocol
from .instance import Crashed, Instance
from .spec import Spec, start_instance

log = logging.getLogger("mitmesh.functions")


@dataclass(slots=True)
class Outcome:
    kind: str  # ok | error | timeout | crash | full | queue_timeout | start_failed
    result: object = None
    detail: str = ""
    cold_ms: float | None = None  # this call waited for its instance to start
    instance: int = 0  # the instance's pid
    queued_ms: float = 0.0


# an outcome that is not ok → (status, error, what the client is told); details go to the decision log
FAILURES = {
    "error": (502, "function_error", "the function raised an error"),
    "crash": (502, "function_crashed", "the function's instance exited during the call"),
    "start_failed": (502, "function_start_failed", "no instance of the function could be started"),
    "timeout": (504, "function_timeout", "the function did not answer in time"),
    "full": (429, "function_busy", "every instance of the function is busy and its queue is full"),
    "queue_timeout": (429, "function_busy", "no instance of the function was free in time"),
    "bad_response": (502, "function_bad_response", "the function's result is not a valid response"),
}


def describe(name: str, out: Outcome) -> str:
    """One decision-log line: which instance, cold or warm, how long queued, what came of it."""
    if out.instance == 0:
        return f"{name}: {out.kind}: {out.detail}"
    how = f"cold start {out.cold_ms:.0f} ms" if out.cold_ms is not None else "warm"
    queued = f", queued {out.queued_ms:.0f} ms" if out.cold_ms is None and out.queued_ms >= 1 else ""
    result = "answered" if out.kind == "ok" else f"{out.kind}: {out.detail}"
    return f"{name}: instance {out.instance} ({how}{queued}): {result}"


def retry_after(spec: Spec) -> str:
    """Retry-After of a 429: about when a busy instance is done with its call."""
    return str(max(1, round(spec.timeout)))


class Pool:
    """One function's instances in this process. `observe(event, detail)` hears starts and stops."""

    def __init__(self, spec: Spec, observe: Callable[[str, str, float | None], None] | None = None,
                 start: Callable[[Spec], Awaitable] = start_instance):
        """`start(spec)` starts one instance process (spec.start_instance, or a fork of the function
        fork server: mesh/runtime/functionforks.py)."""
        self.spec = spec
        self.start_instance = start
        self.instances: list[Instance] = []
        self.starting = 0
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.observe = observe or (lambda event, detail, ms: None)
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._reaper: asyncio.Task | None = None
        self.closed = False

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Begin keeping min_instances warm and stopping idle ones (needs a running loop)."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
            self._scale()

    async def drain(self) -> None:
        """Start nothing more; close once the calls in flight and queued are done (a reload)."""
        self.closed = True
        deadline = time.monotonic() + self.spec.timeout + self.spec.queue_timeout
        while (self.waiters or any(i.load for i in self.instances)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.close()

    async def close(self) -> None:
        self.closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(Crashed("the function is shutting down"))
        self.waiters.clear()
        starts = [t for t in self._tasks if t not in {i.reader for i in self.instances}]
        await asyncio.gather(*starts, return_exceptions=True)  # an instance that starts now stops at once
        for inst in list(self.instances):
            inst.retired = True
            inst.kill()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)  # readers end as processes exit
        self.instances.clear()

    def _spawn_task(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def live(self) -> list[Instance]:
        return [i for i in self.instances if not i.retired]

    def _scale(self) -> None:
        """Start instances for the waiters (within max_instances) and up to min_instances."""
        if self.closed:
            return
        live = len(self.live())
        want = max(self.spec.min_instances - live - self.starting,
                   -(-len(self.waiters) // self.spec.concurrency) - self.starting)
        room = self.spec.max_instances - len(self.instances) - self.starting
        for _ in range(max(0, min(want, room))):
            self.starting += 1
            self._spawn_task(self._start())

    async def _start(self) -> None:
        started = time.monotonic()
        try:
            proc = await self.start_instance(self.spec)
            inst = Instance(proc, started)
            try:
                await inst.ready()
            except Exception:
                inst.kill()
                assert proc.stdin is not None
                proc.stdin.close()
                await proc.wait()
                raise
        except (Crashed, OSError, EOFError, TimeoutError, protocol.ProtocolError, ValueError) as e:
            self.starting -= 1
            detail = str(e) or type(e).__name__
            self.observe("start_failed", detail, None)
            if not self.instances and not self.starting:
                while self.waiters:  # nothing will serve them: they fail now, not at their timeout
                    fut = self.waiters.popleft()
                    if not fut.done():
                        fut.set_exception(Crashed(f"instance failed to start: {detail}"))
            return
        except asyncio.CancelledError:
            self.starting -= 1
            raise
        self.starting -= 1
        if self.closed:
            inst.retired = True
            inst.kill()
        self.instances.append(inst)
        inst.reader = asyncio.get_running_loop().create_task(inst.read_results(self._exited))
        self._tasks.add(inst.reader)
        inst.reader.add_done_callback(self._tasks.discard)
        self.observe("cold_start", f"instance {inst.pid} started in {inst.cold_ms:.0f} ms", inst.cold_ms)
        self._dispatch()

    def _exited(self, inst: Instance, detail: str) -> None:
        if inst in self.instances:
            self.instances.remove(inst)
        if not inst.retired:
            self.observe("crash", f"instance {inst.pid} {detail}", None)
        self._scale()

    def _retire(self, inst: Instance, why: str) -> None:
        inst.retired = True
        self.observe("stop", f"instance {inst.pid} stopped: {why}", None)
        if inst.load == 0:
            inst.kill()
        self._scale()

    async def _reap(self) -> None:
        period = min(1.0, self.spec.idle / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            live = self.live()
            spare = len(live) - self.spec.min_instances
            for inst in sorted(live, key=lambda i: i.last_used):
                if spare <= 0:
                    break
                if inst.load == 0 and now - inst.last_used >= self.spec.idle:
                    self._retire(inst, f"idle for {now - inst.last_used:.1f}s")
                    spare -= 1
            self._scale()

    # ---- calls -----------------------------------------------------------------------------
    def _free(self) -> Instance | None:
        best = None
        for inst in self.instances:  # the busiest instance with room: the others can go idle
            if not inst.retired and inst.load < self.spec.concurrency and (best is None or inst.load > best.load):
                best = inst
        return best

    def _dispatch(self) -> None:
        while self.waiters:
            inst = self._free()
            if inst is None:
                break
            fut = self.waiters.popleft()
            if fut.done():
                continue
            inst.load += 1
            fut.set_result(inst)
        self._scale()

    def _release(self, inst: Instance) -> None:
        inst.load -= 1
        inst.last_used = time.monotonic()
        if inst.retired:
            if inst.load == 0:
                inst.kill()
        else:
            self._dispatch()

    async def _acquire(self) -> tuple[Instance | None, str, str]:
        inst = self._free()
        if inst is not None:
            inst.load += 1
            return inst, "", ""
        starting_room = self.starting * self.spec.concurrency
        growth = (self.spec.max_instances - len(self.instances) - self.starting) * self.spec.concurrency
        if len(self.waiters) >= self.spec.queue + starting_room + max(0, growth):
            return None, "full", f"{len(self.waiters)} calls already wait for an instance"
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self._scale()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.spec.queue_timeout), "", ""
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result(), "", ""  # handed over just as the wait ended
            fut.cancel()
            return None, "queue_timeout", f"no instance was free within {self.spec.queue_timeout:g}s"
        except Crashed as e:
            return None, "start_failed", str(e)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())
            fut.cancel()
            raise

    async def call(self, event: dict, request_id: str) -> Outcome:
        t0 = time.monotonic()
        inst, kind, detail = await self._acquire()
        queued_ms = (time.monotonic() - t0) * 1000
        if inst is None:
            return Outcome(kind, detail=detail, queued_ms=queued_ms)
        cold = inst.cold_ms if inst.served == 0 else None
        inst.served += 1
        call_id = next(self._ids)
        deadline_ms = int((time.time() + self.spec.timeout) * 1000)
        out = Outcome("ok", cold_ms=cold, instance=inst.pid, queued_ms=queued_ms)
        try:
            fut = inst.send(call_id, {"event": event, "context": {
                "aws_request_id": request_id, "deadline_ms": deadline_ms}})
            msg = await asyncio.wait_for(fut, self.spec.timeout)
        except TimeoutError:
            inst.calls.pop(call_id, None)
            out.kind, out.detail = "timeout", f"no result within {self.spec.timeout:g}s"
            self._retire(inst, "a call timed out; replaced")
        except (Crashed, ConnectionError, RuntimeError) as e:
            out.kind, out.detail = "crash", f"instance {inst.pid} {e}"
        else:
            if "error" in msg:
                err = msg["error"]
                out.kind, out.detail = "error", f"{err.get('type')}: {err.get('message')}"
            else:
                out.result = msg.get("result")
        finally:
            self._release(inst)
        return out
