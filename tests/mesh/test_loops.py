"""Loop: a background task started once, stopped and awaited, its cleanup given time to run."""

from __future__ import annotations

import asyncio

from mesh.core.loops import Loop


async def test_a_loop_runs_until_stopped_and_its_cleanup_runs():
    ticks, cleaned = [], []

    async def body():
        try:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)
        finally:
            cleaned.append(1)

    loop = Loop("test-loop", body)
    loop.start()
    loop.start()  # already running: not a second task
    await asyncio.sleep(0.05)
    assert loop.running and ticks and len([t for t in asyncio.all_tasks() if t.get_name() == "test-loop"]) == 1
    await loop.stop()
    assert not loop.running and cleaned == [1]
    await loop.stop()  # stopping twice is harmless



async def test_a_body_that_fails_is_said_at_once(caplog):
    """A loop whose body raises has stopped its feature (a config watcher's error once stopped
    every reload, unseen): logged as an error with the traceback when it happens."""
    async def body():
        await asyncio.sleep(0)
        raise UnboundLocalError("cannot access local variable 'stamp'")

    loop = Loop("failing-loop", body)
    loop.start()
    await asyncio.sleep(0.05)
    assert not loop.running
    assert "background loop failing-loop stopped by an error" in caplog.text
    assert "UnboundLocalError" in caplog.text
