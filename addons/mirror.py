"""Mirroring: copies a share of a route's requests to another cluster, fire and forget, and compares
the mirror's answer with the primary's (status and body), counting and logging every difference."""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import http

from mesh import mirror, upstream
from mesh.routing import ForwardAction
from mesh.state import MeshState

from . import keys
from .forward import upstream_path

log = logging.getLogger("mitmesh.mirror")


class Mirror:
    def __init__(self, state: MeshState):
        self.state = state
        self.tasks: set[asyncio.Task] = set()

    def request(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return
        st = keys.get(flow)
        if st is None or st.route is None or not isinstance(st.route.action, ForwardAction):
            return
        policy: mirror.Mirror | None = st.route.policies.get("mirror")
        if policy is None or not policy.wanted():
            return
        counters = self.state.counters
        cname = policy.pick_cluster()
        cluster = st.snapshot.clusters.get(cname)
        endpoint = cluster.pick() if cluster is not None else None
        if endpoint is None:
            counters["mirror_errors"] += 1
            st.decide("mirror", f"not mirrored: cluster {cname} has no healthy endpoint")
            return
        req = flow.request
        query = req.path.partition("?")[2]
        path = upstream_path(st, st.route.action)
        target = (path + "?" + query if query else path).encode()
        host = (req.host_header or f"{endpoint.address}:{endpoint.port}") + "-shadow"  # as Envoy marks copies
        headers = upstream.request_headers(req.headers.fields, host.encode())
        loop = asyncio.get_running_loop()
        primary = loop.create_future() if policy.compare else None
        st.mirror = primary
        task = loop.create_task(self._shadow(policy, cluster, endpoint, req.data.method, target, headers,
                                             req.raw_content or b"", primary, st.request_id, st.route.name))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        flow.metadata[keys.MIRROR] = cname
        st.decide("mirror", f"copy sent to {cname} endpoint {endpoint}")

    def responseheaders(self, flow: http.HTTPFlow):
        # the upstream's answer as it came, before any response transform changes it
        st = keys.get(flow)
        fut = st.mirror if st is not None else None
        if fut is not None and not fut.done() and flow.response is not None:
            r = flow.response
            fut.set_result((r.status_code, r.headers.get("content-type"), r.raw_content or b"",
                            flow.metadata.get(keys.CLUSTER, "?")))

    def error(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        if st is not None and st.mirror is not None and not st.mirror.done():
            st.mirror.cancel()

    async def _shadow(self, policy: mirror.Mirror, cluster, endpoint, method: bytes, target: bytes,
                      headers, body: bytes, primary: asyncio.Future | None, request_id: str, route: str):
        counters = self.state.counters
        counters["mirror_requests"] += 1
        endpoint.active += 1
        try:
            resp = await self.state.pool.request(endpoint.address, endpoint.port, method, target, headers,
                                                 body, timeout=policy.timeout,
                                                 connect_timeout=cluster.connect_timeout)
            answer = (resp.status, _header(resp.headers, b"content-type"), resp.body)
        except upstream.UpstreamError as e:
            counters["mirror_errors"] += 1
            answer = (0, None, f"{e.kind}: {e}".encode())
        except Exception:  # never let a copy take the proxy down
            counters["mirror_errors"] += 1
            log.exception(f"mirror of request {request_id} to {cluster.name} failed")
            return
        finally:
            endpoint.active -= 1
        if primary is None:
            return
        try:
            status, ctype, pbody, pcluster = await asyncio.wait_for(primary, policy.timeout + 30)
        except (asyncio.CancelledError, TimeoutError):
            return  # the primary never answered (client gone, proxy stopping)
        counters["mirror_compared"] += 1
        diff = mirror.difference((status, ctype, pbody), answer, policy.ignore)
        if diff is None:
            return
        if answer[0] == 0:
            diff = f"mirror failed: {answer[2].decode()}"
        counters["mirror_diffs"] += 1
        log.warning(f"mirror differs: request {request_id} route {route}: {pcluster} vs {cluster.name}: {diff}")
        self.state.mirror_diffs.append({"request_id": request_id, "route": route, "primary": pcluster,
                                        "mirror": cluster.name, "difference": diff, "at": time.time()})

    async def done(self):
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for n, v in headers:
        if n.lower() == name:
            return v.decode("latin-1")
    return None
