"""User plugins on a real gateway with two workers: hot reload in every worker without dropping a
connection, a broken edit refused with its line in /status, a failing hook answered and counted."""

from __future__ import annotations

import http.client
import os
import threading
import time
import urllib.request

import pytest

pytestmark = pytest.mark.e2e

PLUGIN = '''
import os
from mitmesh import plugin

class Tag:
    def request(self, flow):
        if flow.request.path.endswith("/raise"):
            raise RuntimeError("broken on purpose")

    def response(self, flow):
        flow.response.headers["x-tag"] = "{tag}"
        flow.response.headers["x-worker"] = str(os.getpid())
'''


def config(upstream: str, plugin_file) -> dict:
    return {
        "services": {"app": {"versions": {"v1": {"endpoints": [upstream]}}}},
        "routes": [{"name": "app", "match": {"path": {"prefix": "/"}}, "forward": {"service": "app"},
                    "plugins": ["tag"]}],
        "plugins": {"tag": {"plugin": f"{plugin_file}:Tag", "before": "forward"}},
    }


def fresh(url: str) -> tuple[int, str | None, str | None]:
    """One request on a new connection (a new connection may land on either worker)."""
    req = urllib.request.Request(url, headers={"connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("x-tag"), r.headers.get("x-worker")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-tag"), e.headers.get("x-worker")


def tags_by_worker(url: str, tries: int = 60) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for _ in range(tries):
        status, tag, worker = fresh(url + "/x")
        assert status == 200
        seen.setdefault(worker, set()).add(tag)
    return seen


def edit(path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_hot_reload_in_every_worker_without_dropping_connections(mitmesh_gateway, mitmesh_upstream, tmp_path):
    plugin_file = tmp_path / "tag.py"
    plugin_file.write_text(PLUGIN.format(tag="one"))
    gw = mitmesh_gateway(config(mitmesh_upstream(), plugin_file), workers=2)
    before = tags_by_worker(gw.url)
    assert len(before) == 2 and all(tags == {"one"} for tags in before.values())

    host, port = gw.url.removeprefix("http://").split(":")
    kept = http.client.HTTPConnection(host, int(port), timeout=5)  # a keep-alive connection
    kept.request("GET", "/kept")
    first = kept.getresponse()
    first.read()
    assert first.status == 200 and first.getheader("x-tag") == "one"

    failures: list[str] = []
    stop = threading.Event()

    def load():  # requests on new connections all through the reload: none may fail
        while not stop.is_set():
            try:
                status, _, _ = fresh(gw.url + "/load")
                if status != 200:
                    failures.append(str(status))
            except OSError as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        edit(plugin_file, PLUGIN.format(tag="two"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            after = tags_by_worker(gw.url, 20)
            if len(after) == 2 and all(tags == {"two"} for tags in after.values()):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"not every worker reloaded: {after}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    kept.request("GET", "/kept")  # the same connection, served by the new version
    again = kept.getresponse()
    again.read()
    assert again.status == 200 and again.getheader("x-tag") == "two"
    kept.close()

    # a broken edit: refused, version two keeps serving, /status shows the error and its line
    edit(plugin_file, PLUGIN.format(tag="three") + "\ndef broken(:\n")
    broken_line = len((PLUGIN.format(tag="three") + "\ndef broken(:\n").splitlines())
    deadline = time.monotonic() + 10
    entry = {}
    while time.monotonic() < deadline:
        [entry] = gw.status()["plugins"]
        if entry["last_error"]:
            break
        time.sleep(0.2)
    assert entry["last_error"]["line"] == broken_line, entry
    assert f"tag.py:{broken_line}: SyntaxError" in entry["last_error"]["error"]
    assert all(tags == {"two"} for tags in tags_by_worker(gw.url, 20).values())

    # a hook that raises: a JSON 500 naming the plugin, counted, and the gateway keeps serving
    status, body, _ = gw.get("/raise")
    assert status == 500 and body["error"] == "plugin_failed" and body["plugin"] == "tag"
    with urllib.request.urlopen(gw.admin + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'mitmesh_plugin_errors_total{hook="request",kind="exception",plugin="tag"} 1.0' in text
    assert 'mitmesh_plugin_reloads_total{plugin="tag",result="ok"} 2.0' in text  # one per worker
    assert fresh(gw.url + "/x")[0] == 200
