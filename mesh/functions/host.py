"""A function as a mesh service: an HTTP server on one loopback address whose every request calls
the function (payload 2.0), run beside a sidecar like any app (`mitmesh function NAME`).

The sidecar in front gives it a workload identity and mTLS; `--proxy` (the sidecar's outbound
listener) becomes the instances' HTTP_PROXY, so the function calls other services by name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal

from aiohttp import web
from multidict import CIMultiDict

from . import event
from .pool import FAILURES, Pool, describe, log, retry_after
from .spec import Spec, start_instance

_POOL = web.AppKey("pool", Pool)


async def _call(request: web.Request) -> web.Response:
    pool = request.app[_POOL]
    rid = request.headers.get("x-request-id", "")
    ev = event.build(
        route=event.RouteKey("$default"), method=request.method, path=request.path,
        query=request.query_string,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
        body=await request.read(), source_ip=request.remote or "", request_id=rid,
        protocol=f"HTTP/{request.version.major}.{request.version.minor}")
    out = await pool.call(ev, rid)
    log.info(describe(pool.spec.name, out))
    if out.kind == "ok":
        try:
            resp = event.response(out.result)
        except ValueError as e:
            log.warning("function %s: not a valid response: %s", pool.spec.name, e)
            out.kind = "bad_response"
        else:
            return web.Response(status=resp.status, body=resp.body, headers=CIMultiDict(resp.headers))
    status, error, told = FAILURES[out.kind]
    headers = {"retry-after": retry_after(pool.spec)} if status == 429 else {}
    return web.json_response({"error": error, "reason": told, "request_id": rid}, status=status,
                             headers={**headers, "x-request-id": rid} if rid else headers)


async def _healthz(request: web.Request) -> web.Response:
    # the launcher's liveness check: answered here, never by the function
    return web.json_response({"ok": True, "function": request.app[_POOL].spec.name, "pid": os.getpid()})


def app(spec: Spec, start=start_instance) -> web.Application:
    application = web.Application(client_max_size=16 << 20)
    application[_POOL] = Pool(spec, start=start)
    application.router.add_get("/healthz", _healthz)
    application.router.add_route("*", "/{tail:.*}", _call)

    async def lifecycle(application: web.Application):
        application[_POOL].start()
        yield
        await application[_POOL].close()

    application.cleanup_ctx.append(lifecycle)
    return application


def serve(spec: Spec, host: str, port: int, proxy: str | None = None, start=start_instance) -> None:
    """Run until SIGTERM/SIGINT; prints one `listening` line when ready. `start`: how an instance
    starts (Pool's)."""
    if proxy:
        spec = dataclasses.replace(spec, outbound=proxy.removeprefix("http://"))

    async def main():
        runner = web.AppRunner(app(spec, start), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        print(f"function {spec.name} listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
