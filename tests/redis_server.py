"""A real redis-server on a free loopback port, started per test and stopped in a finally."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.runtime import procs


@dataclass
class Redis:
    port: int
    child: procs.Child

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        self.child.kill()


def start_redis(log_dir: Path) -> Redis:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail("redis-server is needed (Debian: apt-get install redis-server; .ci/run installs it)")
    port = procs.free_port()
    child = procs.spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--protected-mode", "yes"], log_dir=log_dir)
    procs.wait_ports(child, [("127.0.0.1", port)], timeout=10)
    return Redis(port, child)


@pytest.fixture
def redis_server(tmp_path):
    server = start_redis(tmp_path / "logs")
    try:
        yield server
    finally:
        server.child.stop()
