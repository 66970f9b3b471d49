"""mDNS with real zeroconf on loopback addresses of the test's own (never all interfaces): TXT
records, announcement, goodbye within a second, and meshes that do not see each other."""

from __future__ import annotations

import asyncio
import random
import secrets
import time

import pytest
from zeroconf import DNSOutgoing, DNSQuestion
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

from discovery import Instance, Registry
from discovery.mdns import SERVICE_TYPE, MdnsSource, instance_from_txt, label, txt_record


def props(**kw) -> dict:
    base = {"mesh": "m1", "service": "catalog", "version": "v1", "weight": "3", "port": "15006",
            "protocol": "http", "zone": "a", "identity": "spiffe://mitmesh.local/ns/demo/sa/catalog"}
    base.update(kw)
    return {k.encode(): (v.encode() if v is not None else None) for k, v in base.items() if v != "<drop>"}


def test_txt_round_trip():
    inst = Instance("x", "catalog", "v2", "127.0.0.5", 15006, weight=3, zone="b",
                    identity="spiffe://mitmesh.local/ns/demo/sa/catalog", protocol="https", source="mdns",
                    workload="catalog-1", admin=15000)
    txt = {k.encode(): v.encode() for k, v in txt_record(inst, "m1", "catalog-1").items()}
    assert instance_from_txt("x", ["127.0.0.5"], 15006, txt, "m1") == inst
    assert instance_from_txt("x", ["127.0.0.5"], 15006, txt, "another-mesh") is None


@pytest.mark.parametrize("change, error", [
    ({"service": "Catalog"}, "TXT service: expected a lowercase name (got 'Catalog')"),
    ({"version": "<drop>"}, "TXT version: expected a lowercase name (got None)"),
    ({"weight": "0"}, "TXT weight: expected an integer from 1 to 10000 (got '0')"),
    ({"weight": "x"}, "TXT weight: expected an integer from 1 to 10000 (got 'x')"),
    ({"port": "70000"}, "TXT port: expected a port from 1 to 65535 (got '70000')"),
    ({"protocol": "gopher"}, "TXT protocol: expected one of http, https (got 'gopher')"),
    ({"zone": "A B"}, "TXT zone: expected a lowercase name (got 'A B')"),
    ({"service": "catalog\n"}, "TXT service: expected a lowercase name (got 'catalog\\n')"),
    ({"admin": "0"}, "TXT admin: expected a port from 1 to 65535 (got '0')"),
])
def test_malformed_txt_names_the_key(change, error):
    with pytest.raises(ValueError) as e:
        instance_from_txt("x", ["127.0.0.5"], 15006, props(**change), "m1")
    assert str(e.value) == error


def test_labels_are_unique_per_mesh_and_address():
    assert label("catalog-v1-1", "m1", "127.0.0.2", 15006) != label("catalog-v1-1", "m2", "127.0.0.2", 15006)
    assert label("catalog-v1-1", "m1", "127.0.0.2", 15006) != label("catalog-v1-1", "m1", "127.0.0.3", 15006)
    assert len(label("x" * 200, "m", "127.0.0.2", 1)) <= 63


def test_interfaces_must_be_explicit():
    with pytest.raises(ValueError, match="explicit interface addresses"):
        MdnsSource("m1", [])


async def wait_for(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_announce_browse_and_goodbye_on_loopback():
    net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    mesh = f"t-{secrets.token_hex(4)}"
    announcer, browser, stranger = (MdnsSource(mesh, [f"{net}.2"]), MdnsSource(mesh, [f"{net}.3"]),
                                    MdnsSource(f"{mesh}-other", [f"{net}.4"]))
    seen, other = Registry(), Registry()
    await browser.start(seen)
    await stranger.start(other)
    await announcer.start(Registry())
    try:
        inst = Instance("", "catalog", "v1", f"{net}.2", 15006, weight=2, zone="a", source="mdns")
        name = await announcer.announce(inst, "catalog-1")
        await wait_for(lambda: name in seen.instances, timeout=3)
        found = seen.instances[name]
        assert (found.address, found.port, found.weight, found.zone) == (f"{net}.2", 15006, 2, "a")
        await asyncio.sleep(0.3)
        assert other.instances == {}  # another mesh id: never seen
        await announcer.withdraw()
        assert await wait_for(lambda: name not in seen.instances, timeout=1.0) < 1.0
    finally:
        for source in (announcer, browser, stranger):
            await source.stop()


async def test_an_answer_queued_before_the_goodbye_is_not_sent_after_it():
    """A query answered just before the goodbye: zeroconf holds the answer a second (its records
    were multicast within the last second) and used to send it after the goodbye, which brought
    the stopped instance back into every browser for its full TTL."""
    net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    mesh = f"t-{secrets.token_hex(4)}"
    announcer, browser = MdnsSource(mesh, [f"{net}.2"]), MdnsSource(mesh, [f"{net}.3"])
    seen = Registry()
    events: list[tuple[str, str]] = []
    seen.subscribe(lambda e: events.append((e.kind, e.instance.name)))
    await browser.start(seen)
    await announcer.start(Registry())
    try:
        inst = Instance("", "catalog", "v1", f"{net}.2", 15006, source="mdns")
        name = await announcer.announce(inst, "catalog-1")
        await wait_for(lambda: name in seen.instances, timeout=3)
        # a proxy that starts browsing now asks for every instance, as a new sidecar's browser does
        query = DNSOutgoing(_FLAGS_QR_QUERY)
        query.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        browser.zc.zeroconf.async_send(query)
        delayed = announcer.zc.zeroconf.out_delay_queue.queue
        await wait_for(lambda: any(group.answers for group in delayed), timeout=1.0)  # owed
        await announcer.withdraw()
        await wait_for(lambda: name not in seen.instances, timeout=1.0)
        await asyncio.sleep(1.5)  # past the moment the held answer was due
        assert name not in seen.instances, events
        assert events[-1] == ("remove", name), events
    finally:
        for source in (announcer, browser):
            await source.stop()
