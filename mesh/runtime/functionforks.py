"""Function instances forked from a preloaded parent (the function fork server) instead of a fresh Python each.

An instance is `python -I mesh/functions/worker.py ...` (mesh/functions/spec.py); started by a fork of
one parent that already started the interpreter and imported what the worker and a handler's HTTP
calls import (mesh/proxy/forkserver.py FUNCTION_PRELOAD, `python -I`, no -O: a handler's asserts hold),
it skips the interpreter's start. The handler itself is imported in the child, after the function's
environment and directory are set, so a call sees the handler's current file and its config's
variables. The same protocol and `Server` as the proxies' fork server (mesh/runtime/forkserver.py),
with another preload; one per process that runs pools (a gateway worker, `mitmesh function`), started
at the first instance start (so at startup only with min_instances > 0) and again when it died.

A dead fork server takes no instance with it: an instance stops with this process (its lifeline), not
with its parent; its pidfd tells us when it exited, and as a child subreaper we inherit and reap the
instances a dead fork server leaves. `MITMESH_FORK_SERVER=0` (`--no-fork-server`) starts every
instance as its own Python (spec.start_instance).
"""

from __future__ import annotations

import asyncio
import os
import select
import sys
from concurrent.futures import ThreadPoolExecutor

from mesh.functions import spec as specs
from mesh.runtime import forkserver


class ForkedInstance:
    """The asyncio.subprocess.Process surface mesh/functions/instance.py uses, for a fork server's child."""

    def __init__(self, forks: Forks, pid: int, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader):
        self.forks = forks
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.pidfd = os.pidfd_open(pid)
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit code once wait() learnt it, -1 before that."""
        if self._code is None and self.pidfd >= 0 and select.select([self.pidfd], [], [], 0)[0]:
            return -1
        return self._code

    async def wait(self) -> int:
        if self._code is not None:
            return self._code
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(self.pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(self.pidfd)
        code = None
        for _ in range(20):  # the fork server reports its child's exit within its 0.2 s poll
            code = await loop.run_in_executor(self.forks.executor, self.forks.server.exit_code, self.pid, 0.0)
            if code is not None or not self.forks.server.alive():
                break
            await asyncio.sleep(0.05)
        if code is None:  # its fork server died: it was re-parented to us (a subreaper), or is gone
            try:
                got, status = os.waitpid(self.pid, os.WNOHANG)
                code = os.waitstatus_to_exitcode(status) if got else -1
            except ChildProcessError:
                code = -1
        if self._code is None:
            self._code = code
            os.close(self.pidfd)
            self.pidfd = -1
        return self._code


class Forks:
    """This process's function fork server, and the one thread that talks to it (a fork server
    started from it is tied to it by a parent-death signal, and it lives as long as we do)."""

    def __init__(self):
        self.server = forkserver.Server(name="function-fork-server", stdout=sys.stderr,
                                        preload="functions", flags=("-I",))
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="function-forks")
        self._subreaper = False

    def _fork(self, spec: specs.Spec, fds: dict[int, int]) -> int:
        if not self._subreaper:
            forkserver.become_subreaper()  # a dead fork server's instances become ours: we reap them
            self._subreaper = True
        argv = specs.argv(spec)
        return self.server.fork({"name": f"function-{spec.name}", "path": argv[2], "args": [*argv[3:], "--forked"],
                                 "env": specs.environment(spec), "cwd": spec.code}, fds)

    async def start(self, spec: specs.Spec) -> ForkedInstance:
        """One instance of `spec`: stdin and stdout are pipes to us, stderr is ours."""
        loop = asyncio.get_running_loop()
        calls_r, calls_w = os.pipe()
        results_r, results_w = os.pipe()
        try:
            pid = await loop.run_in_executor(self.executor, self._fork, spec,
                                             {0: calls_r, 1: results_w, 2: sys.stderr.fileno()})
        except BaseException as e:
            for fd in (calls_w, results_r):
                os.close(fd)
            if isinstance(e, RuntimeError):  # the fork server did not start or refused: the pool's start_failed
                raise OSError(str(e)) from e
            raise
        finally:
            os.close(calls_r)
            os.close(results_w)
        stdout = asyncio.StreamReader(limit=2 ** 16, loop=loop)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout, loop=loop),
                                     os.fdopen(results_r, "rb", buffering=0))
        transport, protocol = await loop.connect_write_pipe(lambda: asyncio.streams.FlowControlMixin(loop),
                                                            os.fdopen(calls_w, "wb", buffering=0))
        return ForkedInstance(self, pid, asyncio.StreamWriter(transport, protocol, None, loop), stdout)


_forks: Forks | None = None


async def start_instance(spec: specs.Spec) -> ForkedInstance:
    global _forks
    if _forks is None:
        _forks = Forks()
    return await _forks.start(spec)


async def close() -> None:
    """Stop this process's function fork server (its instances stop with their pools, not with it)."""
    if _forks is not None:
        await asyncio.get_running_loop().run_in_executor(_forks.executor, _forks.server.close)


def starter():
    """How this process starts function instances: forks of the function fork server, or (no fork
    server: not Linux, or MITMESH_FORK_SERVER=0) a fresh Python each."""
    return start_instance if forkserver.available() else specs.start_instance
