"""mesh.runtime.procs: free ports."""

from __future__ import annotations

import random

from mesh.runtime import procs


def test_free_port_never_hands_out_a_port_twice():
    # the kernel hands a just-released port out again now and then: 500 draws held ~4 repeats
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    ports = [procs.free_port(host) for _ in range(500)]
    assert len(set(ports)) == len(ports)
