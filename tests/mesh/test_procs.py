"""mesh.runtime.procs: free ports."""

from __future__ import annotations

import random

from mesh.runtime import procs


def test_free_port_never_hands_out_a_port_twice():
    # the kernel hands a just-released port out again now and then: 500 draws held ~4 repeats
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    ports = [procs.free_port(host) for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_processes_drawing_at_once_never_share_a_port_nor_draw_an_ephemeral_one():
    """Parallel test workers each draw ports: one shared counter below the ephemeral range hands
    each port to one process (the kernel's port 0 gave two processes the same one, and a client
    connection could take it as its source port before its listener bound it)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from mesh.runtime import procs\n"
            "print(' '.join(str(procs.free_port()) for _ in range(300)))")
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            for _ in range(3)]
    drawn = [[int(p) for p in run.communicate(timeout=60)[0].split()] for run in runs]
    assert all(len(ports) == 300 for ports in drawn)
    every = [p for ports in drawn for p in ports]
    assert len(set(every)) == len(every)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(p < low for p in every)
