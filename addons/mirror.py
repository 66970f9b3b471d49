"""Mirroring: copies a share of a route's requests to another cluster, fire and forget, and compares
the mirror's answer with the primary's (status and body), counting and logging every difference.

The copy leaves just after the client has its answer, so the primary never waits for it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from mitmproxy import http

from mesh.telemetry import metrics
from mesh.core import mirror, upstream
from mesh.core.cluster import Cluster
from mesh.security.mtls import NoMtls
from mesh.core.routing import ForwardAction
from mesh.core.state import MeshState

from . import keys
from .forward import upstream_path

log = logging.getLogger("mitmesh.mirror")
SEND_AFTER = 0.003  # seconds after the primary answer: the client reads it before the copy takes CPU


@dataclass(slots=True)
class _Copy:
    """A copy of one request, waiting for the primary's answer."""

    policy: mirror.Mirror
    cluster: Cluster
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    primary: tuple | None = None  # (status, content type, body, cluster) as the upstream answered


class Mirror:
    plan_fields = ("mirror",)  # runs only for routes whose plan has it (addons/dispatch.py)

    def __init__(self, state: MeshState):
        self.state = state
        self.tasks: set[asyncio.Task] = set()
        # a log line costs more than a comparison: at most 10 per route and second (all are counted)
        self.budget = mirror.LineBudget(10)

    def request(self, flow: http.HTTPFlow):
        st = keys.routed(flow)
        if st is None or not isinstance(st.route.action, ForwardAction):
            return
        policy: mirror.Mirror | None = st.route.plan.mirror
        if policy is None or not policy.wanted():
            return
        cname = policy.pick_cluster()
        cluster = st.snapshot.clusters.get(cname)
        if cluster is None:
            return
        req = flow.request
        query = req.path.partition("?")[2]
        path = upstream_path(st, st.route.action)
        target = (path + "?" + query if query else path).encode()
        host = (req.host_header or cname) + "-shadow"  # Envoy's mark of a mirrored request
        # taken now, exactly as the upstream gets it; sent once the client has its answer
        st.mirror = _Copy(policy, cluster, req.data.method, target,
                          upstream.request_headers(req.headers.fields, host.encode()), req.raw_content or b"")
        flow.metadata[keys.MIRROR] = cname
        st.decide("mirror", f"copy for {cname}, sent after the primary answers")

    def responseheaders(self, flow: http.HTTPFlow):
        # the upstream's answer as it came, before a response transform changes it
        st = keys.get(flow)
        copy = st.mirror if st is not None else None
        if copy is not None and copy.primary is None and flow.response is not None:
            r = flow.response
            copy.primary = (r.status_code, r.headers.get("content-type"), r.raw_content or b"",
                            flow.metadata.get(keys.CLUSTER, "?"))

    def response(self, flow: http.HTTPFlow):
        st = keys.get(flow)
        copy = st.mirror if st is not None else None
        if copy is None:
            return
        st.mirror = None
        task = asyncio.get_running_loop().create_task(self._shadow(copy, st.request_id, st.route.name))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _shadow(self, copy: _Copy, request_id: str, route: str):
        # The client's answer is written when this hook returns (mitmproxy starts tasks eagerly, so
        # sleep first). Waiting a moment more keeps the copy, and the mirror's work it triggers, from
        # competing for CPU with the client's own exchange; a copy is never urgent.
        await asyncio.sleep(SEND_AFTER)
        policy, cluster = copy.policy, copy.cluster
        metrics.MIRROR_REQUESTS.labels(route).inc()
        if (waiting := cluster.warming()) and cluster.health_check is not None:
            # every endpoint is new: wait for their first checks, as Forward does
            await self.state.checker.first_checks(waiting, cluster.health_check)
        endpoint = cluster.pick()
        if endpoint is None:
            answer = (0, None, f"cluster {cluster.name} has no healthy endpoint".encode())
        else:
            endpoint.active += 1
            try:
                tls = self.state.upstream_tls(cluster, endpoint)  # mTLS as Forward would use
                resp = await self.state.pool.request(
                    endpoint.address, endpoint.port, copy.method, copy.target, copy.headers, copy.body,
                    timeout=policy.timeout, connect_timeout=cluster.connect_timeout,
                    ssl=tls[0] if tls else None, peer_identity=tls[1] if tls else None)
                answer = (resp.status, _header(resp.headers, b"content-type"), resp.body)
            except upstream.UpstreamError as e:
                answer = (0, None, f"{e.kind}: {e}".encode())
            except NoMtls as e:
                answer = (0, None, f"connect_failure: {e}".encode())
            except Exception:  # a copy must never take the proxy down
                metrics.MIRROR_ERRORS.labels(route).inc()
                log.exception(f"mirror of request {request_id} to {cluster.name} failed")
                return
            finally:
                endpoint.active -= 1
        if answer[0] == 0:
            metrics.MIRROR_ERRORS.labels(route).inc()
        if not policy.compare or copy.primary is None:
            return
        status, ctype, body, primary = copy.primary
        metrics.MIRROR_COMPARED.labels(route).inc()
        if answer[0] == 0:
            diff = f"mirror failed: {answer[2].decode()}"
        else:
            diff = mirror.difference((status, ctype, body), answer, policy.ignore)
            if diff is None:
                return
        metrics.MIRROR_DIFFERENCES.labels(route).inc()
        self.state.mirror_diffs.append({"request_id": request_id, "route": route, "primary": primary,
                                        "mirror": cluster.name, "difference": diff, "at": time.time()})
        for line in self.budget.lines(route, f"mirror differs: request {request_id} route {route}: "
                                             f"{primary} vs {cluster.name}: {diff}"):
            log.warning(line)

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
