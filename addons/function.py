"""Function: a route that targets a function is answered by calling it (AWS API Gateway payload 2.0),
as the last stage before Forward, so every policy before it applies as to a cluster's routes."""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import http

from mesh.core.routing import FunctionAction
from mesh.functions import event
from mesh.functions.pool import FAILURES, Pool, describe, retry_after
from mesh.runtime import functionforks
from mesh.telemetry import metrics

from . import keys, replies

log = logging.getLogger("mitmesh.functions")


class Function:
    def __init__(self, state):
        self.state = state
        self.pools: dict[str, Pool] = {}
        self._draining: set[asyncio.Task] = set()

    def running(self):
        if self.state.snapshot is not None:
            for name in self.state.snapshot.functions:  # min_instances warm from the start
                self._pool(self.state.snapshot, name)

    async def done(self):
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(p.close() for p in pools), *self._draining, return_exceptions=True)
        await functionforks.close()

    def _pool(self, snapshot, name: str) -> Pool:
        want = snapshot.functions[name]
        pool = self.pools.get(name)
        if pool is None or pool.spec != want:
            if pool is not None:  # the config changed: new calls get new instances, old ones finish
                self._draining.add(task := asyncio.get_running_loop().create_task(pool.drain()))
                task.add_done_callback(self._draining.discard)
            pool = self.pools[name] = Pool(want, lambda kind, detail, ms: self._observe(name, kind, detail, ms),
                                           functionforks.starter())
            pool.start()
        return pool

    def _observe(self, name: str, kind: str, detail: str, ms: float | None) -> None:
        """Instance starts, stops and crashes: not any one request's, so they go to the log."""
        log.info("function %s: %s", name, detail)
        if kind == "cold_start" and ms is not None:
            metrics.FUNCTION_COLD_START.labels(name).observe(ms / 1000)
        pool = self.pools.get(name)
        metrics.FUNCTION_INSTANCES.labels(name).set(len(pool.live()) if pool else 0)

    def request(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None or not isinstance(st.route.action, FunctionAction):
            return None
        return self._call(flow, st, st.route.action)

    async def _call(self, flow: http.HTTPFlow, st: keys.FlowState, action: FunctionAction):
        name = action.function
        pool = self._pool(st.snapshot, name)
        req = flow.request
        ev = event.build(
            route=action.route, method=req.method, path=st.final_path or st.path or "/",
            query=req.path.partition("?")[2],
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers.fields],
            body=req.raw_content or b"", source_ip=flow.client_conn.peername[0] if flow.client_conn.peername else "",
            request_id=st.request_id, claims=st.claims, protocol=req.http_version)
        out = await pool.call(ev, st.request_id)
        st.decide("function", describe(name, out))
        resp = None
        if out.kind == "ok":
            try:
                resp = event.response(out.result)
            except ValueError as e:  # e names a bad field, never its value (a secret, or a client's)
                log.warning("function %s: not a valid response: %s", name, e)
                st.decide("function", f"{name}: not a valid response: {e}")
                out.kind = "bad_response"
        metrics.FUNCTION_CALLS.labels(name, out.kind).inc()
        if resp is not None:
            return replies.raw(flow, resp.status, resp.body, resp.headers)
        status, error, told = FAILURES[out.kind]
        replies.reply(flow, status, error, told, {"retry-after": retry_after(pool.spec)} if status == 429 else None)

