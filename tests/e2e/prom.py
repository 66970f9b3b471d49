"""A real Prometheus for tests: Debian's binary (installed by .ci/run), on 127.0.0.1, scraping
the proxies' admin listeners every second."""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from mesh.runtime import procs


def binary(name: str = "prometheus") -> str:
    """Debian's prometheus package ships both prometheus and promtool."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert found, f"{name} is needed (.ci/run installs Debian's prometheus)"
    return found


class Prometheus:
    """`targets` scraped every second, or the given `config` (a prometheus.yml as data)."""

    def __init__(self, tmp: Path, targets: list[str] = (), config: dict | None = None):
        self.tmp = tmp
        self.port = procs.free_port()
        config = config or {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                            "scrape_configs": [{"job_name": "mitmesh", "metrics_path": "/metrics",
                                                "static_configs": [{"targets": list(targets)}]}]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.child: procs.Child | None = None

    def __enter__(self):
        self.child = procs.spawn("prometheus", [
            binary(), f"--config.file={self.tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.tmp / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"], log_dir=self.tmp)
        procs.wait_ports(self.child, [("127.0.0.1", self.port)], timeout=30)
        return self

    def __exit__(self, *exc):
        if self.child:
            self.child.stop()

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.load(r)
        assert data["status"] == "success", data
        return data["data"]["result"]

    def ready(self) -> bool:
        """True once Prometheus answers queries and has scraped every target at least once."""
        try:
            result = self.query("up")
        except OSError:  # not listening yet, or its HTTP API still starting (HTTP 503)
            return False
        return bool(result) and all(r["value"][1] == "1" for r in result)

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}", timeout=5) as r:
            data = json.load(r)
        assert data["status"] == "success", data
        return data["data"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None
