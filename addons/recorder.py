"""Recorder: saves the proxy's flows (mitmproxy's flow format) while a recording is on.

`POST /record?seconds=30&filter=~u%20/items` on the admin listener (with the admin token) starts
one; it reaches every worker of the proxy through a control file in the shared run directory, and
each worker writes its own `flows-<pid>.mitm` there (mode 0600, in a 0700 directory). `mitmesh
record` drives this and merges the files. Credentials are redacted (mesh/security/redact.py) unless the
recording was started with `include_secrets=true` (`mitmesh record --include-secrets`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import urllib.parse
import uuid

from typing import TYPE_CHECKING

from mitmproxy import flowfilter, http

if TYPE_CHECKING:
    from mitmproxy import io

from mesh.core.loops import Loop
from mesh.security import redact
from mesh.config.types import load_json
from mesh.runtime.admin import json_reply
from mesh.core.state import MeshState

from . import keys

CONTROL = "record.json"
_made: tuple[int, str] | None = None  # (pid, path) of the run directory this process made


def run_dir(create: bool = True) -> str:
    """The directory the workers of one proxy share (set by the supervisor, which removes it when
    it stops; else this process's, made when a recording first needs it and removed when the proxy
    stops: "" until then with `create=False`)."""
    global _made
    path = os.environ.get("MITMESH_RUN_DIR", "")
    if not path and create:
        path = os.environ["MITMESH_RUN_DIR"] = tempfile.mkdtemp(prefix="mitmesh-run-")
        _made = (os.getpid(), path)
    return path


def remove_own_run_dir() -> None:
    """Remove the run directory this process made, recordings included (`mitmesh record` has
    copied them out), as the supervisor does with its own; a fork that inherited it leaves it."""
    global _made
    if _made is not None and _made[0] == os.getpid():
        shutil.rmtree(_made[1], ignore_errors=True)
        os.environ.pop("MITMESH_RUN_DIR", None)
        _made = None


class Recorder:
    def __init__(self, state: MeshState):
        self.state = state
        self._seen: tuple | None = None
        self._until = 0.0
        self._filter = None
        self._dir = ""
        self._secrets = False  # keep credentials in the recording (include_secrets=true)
        self._writer: io.FlowWriter | None = None
        self._file = None
        self._loop = Loop("mitmesh-recorder", self._watch)
        state.admin_handlers["/record"] = self._admin

    def _admin(self, method: str, query: str):
        if method != "POST":
            return json_reply({"recording": self._until > time.time(), "until": self._until,
                               "dir": self._dir})
        params = dict(urllib.parse.parse_qsl(query))
        try:
            seconds = float(params.get("seconds", "30"))
            if not 0 < seconds <= 3600:
                raise ValueError
        except ValueError:
            return json_reply({"error": "bad_request", "reason":
                               f"seconds: expected a number in (0, 3600] (got {params.get('seconds')!r})"}, 400)
        expr = params.get("filter", "")
        if expr:
            try:
                flowfilter.parse(expr)
            except ValueError as e:
                return json_reply({"error": "bad_request", "reason": f"filter: {e} (got {expr!r})"}, 400)
        control = {"id": uuid.uuid4().hex[:12], "until": time.time() + seconds, "filter": expr,
                   "secrets": params.get("include_secrets", "").lower() in ("1", "true", "yes")}
        control["dir"] = os.path.join(run_dir(), "recordings", control["id"])
        os.makedirs(control["dir"], mode=0o700, exist_ok=True)
        tmp = os.path.join(run_dir(), f".{CONTROL}.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(control, f)
        os.replace(tmp, os.path.join(run_dir(), CONTROL))
        self._poll()  # this worker starts at once; the others within a quarter second
        return json_reply(control)

    def running(self):
        self._loop.start()

    async def done(self):
        await self._loop.stop()
        self._close()
        remove_own_run_dir()

    async def _watch(self):
        while True:
            await asyncio.sleep(0.25)
            self._poll()

    def _poll(self) -> None:
        if self._writer is not None and time.time() >= self._until:
            self._close()
        run = run_dir(create=False)  # no shared directory and none made here: nothing was asked to record
        if not run:
            return
        path = os.path.join(run, CONTROL)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._seen:
            return
        self._seen = stamp
        with open(path) as f:
            control = json.load(f)
        self._close()
        self._until, self._dir, self._secrets = control["until"], control["dir"], control.get("secrets", False)
        self._filter = flowfilter.parse(control["filter"]) if control["filter"] else None

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None

    def response(self, flow: http.HTTPFlow):
        self._record(flow)

    def error(self, flow: http.HTTPFlow):
        if flow.response is None:
            self._record(flow)

    def _matches(self, flow: http.HTTPFlow) -> bool:
        """The filter sees the request as the upstream got it (what the flow shows) or as the
        client sent it: `~u /catalog/` finds what the gateway sent upstream as /items."""
        if self._filter(flow):
            return True
        st = keys.get(flow)
        if st is None:
            return False
        req = flow.request.data
        shown, req.path = req.path, st.downstream_path.encode("utf-8", "surrogateescape")
        try:
            return bool(self._filter(flow))
        finally:
            req.path = shown

    def _record(self, flow: http.HTTPFlow) -> None:
        if not self._until or time.time() >= self._until:
            return
        if self._filter is not None and not self._matches(flow):
            return
        if self._writer is None:
            path = os.path.join(self._dir, f"flows-{os.getpid()}.mitm")
            self._file = open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
            from mitmproxy import io  # the flow file format: loaded by the first recording

            self._writer = io.FlowWriter(self._file)
        self._writer.add(flow if self._secrets else redacted(flow))
        self._file.flush()


def redacted(flow: http.HTTPFlow) -> http.HTTPFlow:
    """A copy of the flow with credentials masked in headers, the request target, textual bodies,
    metadata and comment (the live flow is still on its way to the client)."""
    copy = flow.copy()
    for message in (copy.request, copy.response):
        if message is None:
            continue
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.headers.fields]
        message.headers.fields = tuple((k.encode("latin-1"), v.encode("latin-1"))
                                       for k, v in redact.value(pairs))
        try:
            body = message.get_text(strict=True)
        except ValueError:  # not text: nothing a credential could be found in
            body = None
        if body and redact.suspect(body):
            try:  # a JSON body is masked by its structure (fields, header pairs), other text by pattern
                message.text = json.dumps(redact.value(load_json(body)))
            except ValueError:  # not JSON, or nested past the parser
                message.text = redact.value(body)
    copy.request.path = redact.value(copy.request.path)
    copy.metadata = redact.value(copy.metadata)
    copy.comment = redact.value(copy.comment)
    return copy
