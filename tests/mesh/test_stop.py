"""procs.Stop, the flag `mitmesh up` and `mitmesh certs rotate --watch` stop on: a second SIGTERM
that arrives while the first one's handler is setting the flag must not hang the process.

`mitmesh up` got two: one sent to its process group, and the same one forwarded by `just`. It
waited on a threading.Event set by its handler; Event.set holds its condition's lock in
notify_all, and a handler runs on the main thread wherever it is, so the second handler's set
waited for the lock the first one held, for ever (py-spy: on_signal → Event.set →
Condition.__enter__). The demo then outlived CI's 15 s and was killed, leaving its pods."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import BASE

ROOT = Path(__file__).resolve().parents[2]

# the second signal, raised inside the first handler's set (the interleaving py-spy showed)
SECOND_SIGNAL_INSIDE_SET = textwrap.dedent("""
    import signal, threading

    original = threading.Condition.notify_all
    fired = []

    def notify_all(self):
        if not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGTERM)
        original(self)

    threading.Condition.notify_all = notify_all
""")


def run(code: str, *args: str) -> str | None:
    """The child's first line after it said it waits, once SIGTERM reached it; None: it hung."""
    child = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL_INSIDE_SET + code, *args],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        child.stdout.readline()  # it waits now, its handlers installed
        child.send_signal(15)
        try:
            out, _ = child.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        return out.strip().splitlines()[-1]
    finally:
        child.kill()
        child.wait()


def test_certs_rotate_watch_stops_on_a_second_signal_inside_the_first(tmp_path):
    """The real waiting loop (`mitmesh certs rotate --watch`, the thread `mitmesh up` runs)."""
    config = tmp_path / "mesh.yaml"
    config.write_text(BASE)
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from mesh.config import load
        from mesh.security import pki
        from tools import certcmd

        directory = Path(sys.argv[1])
        pki.init_mesh(directory, "mitmesh.local")
        certcmd.rotate(directory, load(sys.argv[2]), watch=True, names=["catalog"])
        print("stopped", flush=True)
    """)
    assert run(code, str(tmp_path / "certs"), str(config)) == "stopped"


def test_the_same_signals_hang_a_threading_event():
    """The control: that interleaving does hang a loop on a threading.Event, so the test above
    fails on the code before procs.Stop."""
    code = textwrap.dedent("""
        import signal, threading
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print("waiting", flush=True)
        while not stop.wait(0.2):
            pass
        print("stopped", flush=True)
    """)
    assert run(code) is None
