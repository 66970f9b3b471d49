"""A real etcd (Debian's etcd-server) on free loopback ports, started per test and stopped by PID
in a finally."""

from __future__ import annotations

import pytest

from tools import etcdserver


@pytest.fixture
def etcd_server(tmp_path):
    try:
        member = etcdserver.start(tmp_path / "etcd-data", tmp_path / "logs")
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield member
    finally:
        member.child.stop()
