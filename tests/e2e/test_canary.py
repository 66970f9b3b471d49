"""Canary and A/B end to end: a 90/10 split over 2,000 requests, sticky users on one version, a
cookie-matched route, and `mitmesh canary set` changing the weights live without a failed request."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter

import pytest

from mesh.config import load as load_config

from .conftest import get
from .traffic import config, load, running, service


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("canary")
    cfg = config(
        {"catalog": service("catalog", "v1", "v2")},
        [{"name": "beta", "match": {"path": {"prefix": "/catalog/"}, "cookies": {"group": "beta"}},
          "forward": {"service": "catalog", "version": "v2", "rewrite": {"prefix": "/"}}},
         {"name": "sticky", "match": {"path": {"prefix": "/sticky/"}},
          "forward": {"service": "catalog", "weights": {"v1": 90, "v2": 10}, "rewrite": {"prefix": "/"},
                      "sticky": {"cookie": "uid"}}},
         {"name": "catalog", "match": {"path": {"prefix": "/catalog/"}},
          "forward": {"service": "catalog", "weights": {"v1": 90, "v2": 10}, "rewrite": {"prefix": "/"}}}])
    yield from running(tmp, cfg)


def test_weighted_split_90_10(mesh):
    results = asyncio.run(load(mesh.url + "/catalog/items/1", count=2000))
    assert len(results) == 2000 and all(status == 200 for _, _, status, _ in results)
    share = Counter(body["version"] for *_, body in results)["v2"] / len(results)
    assert 0.07 <= share <= 0.13, share


def test_sticky_users_keep_one_version_and_cookies_pick_routes(mesh):
    seen: dict[str, set] = {}
    for i in range(100):
        user = f"user-{i}"
        seen[user] = {get(mesh.url + "/sticky/items", headers={"cookie": f"uid={user}"})[1]["version"]
                      for _ in range(5)}
    assert all(len(versions) == 1 for versions in seen.values())
    per_version = Counter(next(iter(v)) for v in seen.values())
    assert per_version["v1"] > 0 and per_version["v2"] > 0
    assert {get(mesh.url + "/catalog/items", headers={"cookie": "group=beta"})[1]["version"]
            for _ in range(10)} == {"v2"}


# requests at the old weights, then after the edit: each share is counted with 4 standard
# deviations or more between its expected value and each bound (a binomial count; with 400
# requests after the edit, 2 % of runs fell outside by chance)
BEFORE, AFTER = 1000, 1600


def test_canary_set_changes_the_weights_live(mesh):
    edits: list[float] = []
    live: list[list] = []  # the load's results as they come (load hands its list to `until`)

    def enough(results) -> bool:  # until AFTER requests started 2 s after the edit (bound: 120 s)
        if not live:
            live.append(results)
        return bool(edits) and sum(1 for start, *_ in results if start > edits[0] + 2.0) >= AFTER

    async def scenario():
        task = asyncio.create_task(load(mesh.url + "/catalog/items/1", seconds=120, until=enough))
        while not task.done() and (not live or len(live[0]) < BEFORE):
            await asyncio.sleep(0.05)
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mesh.cli", "canary", "set", "catalog",
                                                       "v2=25", "--config", str(mesh.path)],
                                      capture_output=True, text=True)
        edits.append(time.monotonic())  # the load goes on until enough requests follow the edit
        return edits[0], out, await task

    edited, out, results = asyncio.run(scenario())
    assert out.returncode == 0, out.stderr
    assert "route catalog: catalog v1=90 v2=10 -> v1=75 v2=25" in out.stdout
    assert all(status == 200 for _, _, status, _ in results)  # no request dropped
    before = [body["version"] for start, _, _, body in results if start < edited - 0.1]
    after = [body["version"] for start, _, _, body in results if start > edited + 2.0]
    assert len(before) > 300 and len(after) > 300
    assert 0.05 <= before.count("v2") / len(before) <= 0.15
    assert 0.20 <= after.count("v2") / len(after) <= 0.30, after.count("v2") / len(after)
    assert load_config(mesh.path).routes[2].forward.weights == {"v1": 75, "v2": 25}
