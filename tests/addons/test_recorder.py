"""Recorder: where a recording is written, and who removes that directory when the proxy stops."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from mitmproxy.test import tflow

from addons import recorder
from addons.recorder import Recorder
from mesh.core.state import MeshState


@pytest.fixture
def alone(tmp_path, monkeypatch):
    """A proxy that runs alone: no supervisor's run directory; temporary files under tmp_path."""
    monkeypatch.delenv("MITMESH_RUN_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(recorder, "_made", None)
    return tmp_path


def start(rec: Recorder) -> Path:
    """POST /record as the admin listener would; the recording's directory."""
    status, _, body = rec._admin("POST", "seconds=30")
    assert status == 200, body
    return Path(json.loads(body)["dir"])


async def test_a_proxy_alone_removes_the_run_directory_it_made_when_it_stops(alone):
    rec = Recorder(MeshState())
    folder = start(rec)
    run = folder.parent.parent
    assert run.parent == alone and run.name.startswith("mitmesh-run-")
    rec.response(tflow.tflow(resp=True))
    assert (folder / f"flows-{os.getpid()}.mitm").stat().st_size > 0
    await rec.done()
    assert not run.exists()
    assert "MITMESH_RUN_DIR" not in os.environ


async def test_a_supervisors_run_directory_is_left_to_the_supervisor(tmp_path, monkeypatch):
    run = tmp_path / "mitmesh-gateway-x"
    run.mkdir()
    monkeypatch.setenv("MITMESH_RUN_DIR", str(run))
    monkeypatch.setattr(recorder, "_made", None)
    rec = Recorder(MeshState())
    folder = start(rec)
    rec.response(tflow.tflow(resp=True))
    await rec.done()
    assert (folder / f"flows-{os.getpid()}.mitm").stat().st_size > 0
    assert os.environ["MITMESH_RUN_DIR"] == str(run)


def test_a_fork_leaves_the_run_directory_of_the_process_that_made_it(alone, monkeypatch):
    run = Path(recorder.run_dir())
    parent = recorder._made
    monkeypatch.setattr(recorder, "_made", (parent[0] + 1, parent[1]))  # as a fork inherits it
    recorder.remove_own_run_dir()
    assert run.is_dir()
    monkeypatch.setattr(recorder, "_made", parent)
    recorder.remove_own_run_dir()
    assert not run.exists()


def test_a_json_body_nested_past_the_parser_is_masked_as_text():
    """RecursionError, which is no ValueError, escaped `redacted` (the flow was
    not recorded); such a body is masked by pattern, as any other text."""
    from mitmproxy.test import tflow

    from addons.recorder import redacted

    flow = tflow.tflow(resp=True)
    flow.request.headers["content-type"] = "application/json"
    flow.request.content = (b'{"password": "hunter2", "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")
    text = redacted(flow).request.get_text()
    assert "hunter2" not in text and '"password": "[redacted]"' in text
