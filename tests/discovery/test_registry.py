"""The registry applies add/update/remove events and tells subscribers only about real changes."""

from __future__ import annotations

from discovery import Event, Instance, Registry, StaticSource


def inst(name="a", port=9000, **kw) -> Instance:
    return Instance(name, kw.pop("service", "catalog"), kw.pop("version", "v1"), "127.0.0.1", port, **kw)


def test_events_change_the_registry_and_reach_subscribers():
    reg, heard = Registry(), []
    reg.subscribe(lambda e: heard.append((e.kind, e.instance.name, e.instance.weight)))
    assert reg.apply(Event("add", inst()))
    assert not reg.apply(Event("add", inst()))  # the same again: nothing changed, nobody told
    assert reg.apply(Event("add", inst(weight=3)))  # an add of a known name updates it
    assert reg.apply(Event("remove", inst()))
    assert not reg.apply(Event("remove", inst()))
    assert heard == [("add", "a", 1), ("update", "a", 3), ("remove", "a", 3)]
    assert reg.instances == {}


async def test_static_source_applies_only_the_difference():
    reg, heard = Registry(), []
    reg.subscribe(lambda e: heard.append((e.kind, e.instance.name)))
    static = StaticSource([inst("a"), inst("b", 9001)])
    await static.start(reg)
    static.replace([inst("b", 9001), inst("c", 9002, zone="z")])
    assert sorted(reg.instances) == ["b", "c"]
    assert heard == [("add", "a"), ("add", "b"), ("remove", "a"), ("add", "c")]
    reg.apply(Event("add", inst("m", 9100, source="mdns")))
    await static.stop()  # withdraws its own instances only
    assert list(reg.instances) == ["m"]


def test_status_lists_instances_by_service():
    reg = Registry()
    reg.apply(Event("add", inst("b", service="users")))
    reg.apply(Event("add", inst("a", zone="z", weight=2, identity="spiffe://x/ns/y/sa/catalog")))
    assert [(i["name"], i["zone"], i["weight"], i["address"]) for i in reg.status()] == [
        ("a", "z", 2, "127.0.0.1:9000"), ("b", None, 1, "127.0.0.1:9000")]
