"""Records: each worker's latest records in a ring of its own in the shared directory; any worker
(any process) reads them all, newest last; a restarted worker carries on with its ring."""

from __future__ import annotations

import multiprocessing
import os

from mesh.telemetry import records
from mesh.telemetry.records import Records


def test_without_a_shared_directory_records_stay_in_memory():
    r = Records("flows", 3, 512)
    for i in range(5):
        r.append({"time": float(i), "n": i})
    assert [x["n"] for x in r.latest()] == [2, 3, 4]


def test_every_workers_records_are_merged_by_time_and_capped(tmp_path):
    a = Records("flows", 4, 512, str(tmp_path), worker="0")
    b = Records("flows", 4, 512, str(tmp_path), worker="1")
    for i in range(6):  # interleaved in time; each ring wraps after 4
        (a if i % 2 else b).append({"time": float(i), "n": i, "decisions": [("router", "route r")]})
    assert [x["n"] for x in a.latest()] == [2, 3, 4, 5]
    assert b.latest() == a.latest()
    assert a.latest()[-1]["decisions"] == [("router", "route r")]
    assert sorted(os.listdir(tmp_path)) == ["flows-0.ring", "flows-1.ring"]


def _write(directory: str, worker: str, count: int) -> None:
    r = Records("flows", 10, 512, directory, worker=worker)
    for i in range(count):
        r.append({"time": 100.0 + i, "from": worker})


def test_another_process_reads_what_a_worker_wrote(tmp_path):
    child = multiprocessing.get_context("spawn").Process(target=_write, args=(str(tmp_path), "1", 3))
    child.start()
    child.join(30)
    mine = Records("flows", 10, 512, str(tmp_path), worker="0")
    mine.append({"time": 1.0, "from": "0"})
    assert [x["from"] for x in mine.latest()] == ["0", "1", "1", "1"]


def test_a_restarted_worker_keeps_its_predecessors_records_and_goes_on(tmp_path):
    first = Records("flows", 3, 512, str(tmp_path), worker="0")
    for i in range(2):
        first.append({"time": float(i), "n": i})
    first.close()
    second = Records("flows", 3, 512, str(tmp_path), worker="0")
    for i in range(2, 4):
        second.append({"time": float(i), "n": i})
    assert [x["n"] for x in second.latest()] == [1, 2, 3]


def test_a_record_too_big_for_its_slot_keeps_its_short_fields(tmp_path):
    r = Records("diffs", 2, 512, str(tmp_path), worker="0", order="at")
    r.append({"at": 1.0, "request_id": "r1", "difference": "x" * 1000, "decisions": ["d"] * 100})
    (kept,) = r.latest()
    assert kept["request_id"] == "r1" and kept["difference"] == "x" * 200 + "…"
    assert "decisions" not in kept and kept["truncated"].startswith("the record was ")


def test_values_marshal_cannot_write_are_kept_as_text(tmp_path):
    r = Records("flows", 2, 512, str(tmp_path), worker="0")
    r.append({"time": 1.0, "endpoint": ValueError("127.0.0.1:9")})
    assert r.latest()[0]["endpoint"] == "127.0.0.1:9"


def test_a_slot_being_rewritten_or_a_ring_being_created_is_skipped(tmp_path):
    r = Records("flows", 2, 512, str(tmp_path), worker="0")
    r.append({"time": 1.0, "n": 1})
    r.append({"time": 2.0, "n": 2})
    ring = r._ring
    records.SLOT.pack_into(ring._mm, ring._offset(1), 0, 0)  # what a reader sees mid-write
    assert [x["n"] for x in r.latest()] == [2]
    (tmp_path / "flows-9.ring").write_bytes(b"")  # a worker that is creating its file
    (tmp_path / "flows-8.ring").write_bytes(b"garbage" * 10)
    assert [x["n"] for x in r.latest()] == [2]
