"""Helpers for the traffic-policy end-to-end tests: a small mesh of real services and one or more
real gateways (the lean runtime), and a bounded concurrent load that records every answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

import aiohttp

from mesh.runtime import procs

from .conftest import Mesh


def service(app: str, *versions: str, instances: int = 1) -> dict:
    p = procs.free_port
    return {"versions": {v: {"launch": {"app": app}, "endpoints": [f"127.0.0.1:{p()}" for _ in range(instances)]}
                         for v in versions}}


def config(services: dict, routes: list, policies: dict | None = None) -> dict:
    return {"version": 1,
            "gateway": {"listeners": [{"name": "public", "port": procs.free_port()}],
                        "admin": {"port": procs.free_port()}},
            "services": services, "routes": routes, "policies": policies or {}}


def gateway_copy(mesh: Mesh, tmp: Path) -> Mesh:
    """A second gateway process for the same services, with its own ports (and its own config file)."""
    import copy

    other = copy.deepcopy(mesh.config)
    other["gateway"] = {"listeners": [{"name": "public", "port": procs.free_port()}],
                        "admin": {"port": procs.free_port()}}
    tmp.mkdir(parents=True, exist_ok=True)
    second = Mesh(tmp, other)
    second.write()
    return second


async def load(url: str, count: int | None = None, seconds: float | None = None, concurrency: int = 8,
               headers: dict | None = None, until=None) -> list[tuple[float, float, int, dict]]:
    """(start, end, status, json body) of each request: `count` of them, or for `seconds` (with
    `until(results)`, as soon as it is true, `seconds` being the bound)."""
    results: list[tuple[float, float, int, dict]] = []
    stop = time.monotonic() + seconds if seconds else None
    left = [count or 0]

    async def worker(session: aiohttp.ClientSession):
        while ((stop is None and left[0] > 0) or (stop is not None and time.monotonic() < stop)) \
                and not (until and until(results)):
            left[0] -= 1
            start = time.monotonic()
            try:
                async with session.get(url, headers=headers) as r:
                    body = await r.json(content_type=None)
                    results.append((start, time.monotonic(), r.status, body))
            except aiohttp.ClientError as e:
                results.append((start, time.monotonic(), 0, {"error": repr(e)}))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def running(tmp: Path, cfg: dict) -> Iterator[Mesh]:
    """A fixture's body (`yield from running(tmp, cfg)`): the config's services and its gateway,
    started; everything stopped afterwards, also when a test fails."""
    m = Mesh(tmp, cfg)
    m.write()
    try:
        m.start_services()
        start_gateways(m)
        yield m
    finally:
        m.stop()


def start_gateways(*meshes: Mesh, workers: int = 1) -> None:
    """Start the gateway of each mesh at once (they load in parallel), then wait for all."""
    from tools import launcher

    for m in meshes:
        m.children["gateway"] = procs.spawn("gateway", launcher.lean_argv(m.path, workers),
                                            log_dir=m.tmp / "logs", cwd=str(m.tmp))
    for m in meshes:
        procs.wait_log(m.children["gateway"], "gateway ready")
