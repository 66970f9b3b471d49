"""One function instance: imports the handler once, then answers calls framed on stdin, each in a
thread of its own (up to the function's concurrency), results framed on stdout.

Run by path in isolated mode (`python -I worker.py ...`), never as part of the mesh package: this
file's folder is not on the import path, so the handler's process holds the standard library, the
installed packages, the handler's code and this file's protocol, nothing else of mitmesh.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.util
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _protocol():
    # a private module name: a handler may have a module called `protocol` of its own
    path = Path(__file__).with_name("protocol.py")
    spec = importlib.util.spec_from_file_location("_mitmesh_function_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Context:
    """The `context` argument of an AWS Lambda Python handler (the attributes handlers read)."""

    def __init__(self, name: str, request_id: str, deadline_ms: int, memory: str):
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{name}"
        self.memory_limit_in_mb = memory
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = f"mitmesh/{os.getpid()}"
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def die_with_parent(parent: int) -> None:
    """SIGTERM when the proxy that started us dies (Linux), so no instance outlives its proxy."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:  # it died before the line above
        sys.exit(0)


def load(handler: str, code: str):
    """module:function → the callable; raises ImportError/AttributeError/TypeError with the reason."""
    module_name, _, attr = handler.partition(":")
    sys.path.insert(0, code)
    # no bytecode cache for the user's code: a handler edited within the second of the last
    # cold start, at the same size, would otherwise run its stale cached bytecode (pyc checks
    # mtime in seconds and size)
    sys.dont_write_bytecode = True
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if fn is None:
        raise AttributeError(f"module {module_name} has no attribute {attr}")
    if not callable(fn):
        raise TypeError(f"{handler} is not callable")
    return fn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--handler", required=True)
    p.add_argument("--code", required=True)
    p.add_argument("--name", default="function")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--parent", type=int, default=0, help="the proxy's pid: exit when it dies")
    p.add_argument("--check", action="store_true", help="only import the handler; exit 0 if it exists")
    p.add_argument("--forked", action="store_true",
                   help="a child of the function fork server: its lifeline already stops us with the proxy, "
                        "and a parent-death signal would stop us with the fork server")
    args = p.parse_args(argv)
    if not args.forked:
        die_with_parent(args.parent)
    protocol = _protocol()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # what the handler prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    try:
        fn = load(args.handler, args.code)
    except BaseException as e:  # noqa: BLE001 - any failure to import is reported, not raised
        detail = f"{type(e).__name__}: {e}"
        if args.check:
            print(detail, file=sys.stderr)
            return 1
        out.write(protocol.encode({"ready": False, "error": detail}))
        return 1
    if args.check:
        return 0
    lock = threading.Lock()
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")

    def run(msg: dict) -> None:
        ctx = msg.get("context", {})
        context = Context(args.name, ctx.get("aws_request_id", ""), ctx.get("deadline_ms", 0), memory)
        try:
            reply = {"id": msg["id"], "result": fn(msg["event"], context)}
            frame = protocol.encode(reply)
        except BaseException as e:  # noqa: BLE001 - a handler's exception is its caller's 502
            traceback.print_exc()
            frame = protocol.encode({"id": msg["id"], "error": {"type": type(e).__name__, "message": str(e)}})
        with lock:
            out.write(frame)

    out.write(protocol.encode({"ready": True, "pid": os.getpid()}))
    stdin = sys.stdin.buffer
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        while (msg := protocol.read_sync(stdin)) is not None:
            pool.submit(run, msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
