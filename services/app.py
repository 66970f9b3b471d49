"""The shared shape of every demo service: an aiohttp app that says who answered, with fault knobs.

Each answers JSON naming its service, version and instance; `/healthz` for liveness; latency and
error rate can be set at start (`--latency 20ms --error-rate 0.1`) or live with POST /__knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
from dataclasses import dataclass, field

from aiohttp import web

# headers a service passes on to the services it calls, so traces and ids follow the request
PROPAGATE = ("x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
             "x-b3-parentspanid", "x-b3-sampled", "authorization", "x-authenticated-userid")


@dataclass
class Knobs:
    latency: float = 0.0       # seconds added to every request
    error_rate: float = 0.0    # share of requests answered with error_status
    error_status: int = 500
    hits: int = 0
    crash_after_charge: bool = False  # payments: exit right after the next charge is made, before answering
    ledger: str = ""  # payments: a file each charge is appended to (it survives a crash)


@dataclass
class Identity:
    service: str
    version: str
    instance: str
    zone: str | None = None
    knobs: Knobs = field(default_factory=Knobs)

    def describe(self, request: web.Request) -> dict:
        out = {"service": self.service, "version": self.version, "instance": self.instance,
               "zone": self.zone, "method": request.method, "path": request.path_qs,
               "request_id": request.headers.get("x-request-id")}
        # who the gateway verified (its authentication policies forward these), shown for the demo
        caller = request.headers.get("x-authenticated-userid") or request.headers.get("x-consumer")
        if caller:
            out["caller"] = caller
        return out


def parse_duration(text: str) -> float:
    text = text.strip()
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * scale
    return float(text)


def arguments(service: str, default_version: str = "v1") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m services.{service}")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", default=default_version)
    p.add_argument("--instance", default=None, help="instance name (default service-version-port)")
    p.add_argument("--zone", default=None)
    p.add_argument("--latency", type=parse_duration, default=0.0, help="added latency, e.g. 20ms")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 500")
    return p


@web.middleware
async def _faults(request: web.Request, handler):
    ident: Identity = request.app[IDENTITY]
    if request.path in ("/healthz", "/__knobs"):
        return await handler(request)
    knobs = ident.knobs
    knobs.hits += 1
    if knobs.latency:
        await asyncio.sleep(knobs.latency)
    if knobs.error_rate and random.random() < knobs.error_rate:
        return web.json_response({**ident.describe(request), "error": "injected"},
                                 status=knobs.error_status)
    return await handler(request)


async def _healthz(request: web.Request) -> web.Response:
    ident: Identity = request.app[IDENTITY]
    return web.json_response({"ok": True, "service": ident.service, "instance": ident.instance,
                              "pid": os.getpid()})  # so a launcher knows the answer is from its child


async def _knobs(request: web.Request) -> web.Response:
    knobs: Knobs = request.app[IDENTITY].knobs
    if request.method == "POST":
        try:
            body = await request.json()
            for name in ("latency", "error_rate", "error_status", "crash_after_charge", "ledger"):
                if name in body:
                    value = body[name]
                    setattr(knobs, name, parse_duration(value) if name == "latency" and isinstance(value, str)
                            else type(getattr(knobs, name))(value))
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            return web.json_response({"error": "bad_knobs", "reason": str(e)}, status=400)
    return web.json_response({"latency": knobs.latency, "error_rate": knobs.error_rate,
                              "error_status": knobs.error_status, "hits": knobs.hits,
                              "crash_after_charge": knobs.crash_after_charge, "ledger": knobs.ledger})


IDENTITY = web.AppKey("identity", Identity)


def make_app(ident: Identity) -> web.Application:
    app = web.Application(middlewares=[_faults], client_max_size=16 << 20)
    app[IDENTITY] = ident
    app.router.add_get("/healthz", _healthz)
    app.router.add_route("*", "/__knobs", _knobs)
    return app


def serve(app: web.Application, args: argparse.Namespace) -> None:
    """Run until SIGTERM/SIGINT; prints one `listening` line when ready."""
    async def main():
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=75)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, reuse_address=True, backlog=1024)
        await site.start()
        ident = app[IDENTITY]
        print(f"{ident.service} {ident.version} {ident.instance} listening on http://{args.host}:{args.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
    asyncio.run(main())


def identity(service: str, args: argparse.Namespace) -> Identity:
    return Identity(service, args.version, args.instance or f"{service}-{args.version}-{args.port}",
                    args.zone, Knobs(args.latency, args.error_rate))


def env_port(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None
