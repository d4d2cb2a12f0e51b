"""Switching a plugin off and on at run time, for every instance at once: its
consumers stop and its queue keeps what arrives, its routes answer 503, its veto
(ORD-5) no longer applies; switched on again it catches up."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika

from core.service import Service
from tests.harness import ORDER, Harness
from tests.support import eventually

PROBE = {"plugins": {"extra": ["tests.probe_plugin"]}}


def consuming(service: Service, plugin: str) -> bool:
    assert service.services is not None
    return service.services.bus.groups[plugin].consumer_tag is not None


async def ready_in_queue(h: Harness, group: str) -> int:
    connection = await aio_pika.connect(h.settings.bus.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{h.settings.bus.queue_prefix}.{group}", passive=True)
        return queue.declaration_result.message_count or 0


async def stored_by_probe(service: Service) -> set[str]:
    assert service.services is not None
    return {d["_id"] async for d in service.services.store.collection("probe_seen").find({}, {"_id": 1})}


async def test_ORD_5_plugin_switched_off_and_on_over_http_in_both_instances() -> None:
    async with Harness(**PROBE) as h:
        a = await h.start_instance(service={"instance_id": "a"})
        b = await h.start_instance(service={"instance_id": "b"})
        admin = h.client(a, "admin-1", "admin")
        buyer_on_b = h.client(b, "buyer-1", "buyer")
        vetoed = {**ORDER, "gig_id": "vetoed-gig"}

        # On: it vetoes, serves its route, consumes.
        problem = await buyer_on_b.post("/orders", vetoed, expect=409)
        assert problem["plugin"] == "probe" and problem["rule"] == "ORD-5"
        await h.client(b, "admin-1", "admin").get("/probe/seen", expect=200)
        assert consuming(a, "probe") and consuming(b, "probe")

        switched = await admin.put("/admin/plugins/probe", {"enabled": False}, expect=200)
        assert switched["enabled"] is False
        await eventually(lambda: not consuming(a, "probe") and not consuming(b, "probe"), timeout=5,
                         what="both instances stop the probe's consumer")

        for service in (a, b):
            client = h.client(service, "admin-1", "admin")
            problem = await client.get("/probe/seen", expect=503)
            assert client.last_content_type == "application/problem+json"
            assert problem["status"] == 503 and problem["plugin"] == "probe"

        before = await stored_by_probe(a)
        order = await buyer_on_b.post("/orders", vetoed, expect=201)  # the veto is off too
        order_id = order["id"]
        await buyer_on_b.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
        await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)
        meanwhile = {m.id for m in h.probe.messages if m.subject == order_id}
        assert len(meanwhile) == 2
        # Published, kept in the probe's queue, not consumed.
        await eventually(lambda: _at_least(ready_in_queue(h, "probe"), 2), what="the probe's queue keeps them")
        assert await stored_by_probe(a) == before

        await h.client(b, "admin-1", "admin").put("/admin/plugins/probe", {"enabled": True}, expect=200)
        await eventually(lambda: consuming(a, "probe") and consuming(b, "probe"), timeout=5,
                         what="both instances consume again")
        await eventually(lambda: _contains(stored_by_probe(a), meanwhile), what="the probe caught up")
        seen = await h.client(a, "admin-1", "admin").get("/probe/seen", expect=200)
        assert meanwhile <= {s["id"] for s in seen["seen"]}
        assert await ready_in_queue(h, "probe") == 0
        await buyer_on_b.post("/orders", vetoed, expect=409)  # vetoes again


async def _at_least(count: Any, n: int) -> bool:
    return await count >= n


async def _contains(ids: Any, expected: set[str]) -> bool:
    return expected <= await ids


async def test_a_switch_made_while_publishing_fails_is_kept_and_announced_later() -> None:
    """The switch is stored with its `plugin.switched` event (outbox): a broker that
    refuses the publish delays the event, it does not fail the admin's request."""
    async with Harness(**PROBE) as h:
        a = await h.start_instance()
        assert a.services is not None
        admin = h.client(a, "admin-1", "admin")
        bus = a.services.bus
        real_publish = bus.publish

        async def broker_down(*args: Any, **kwargs: Any) -> None:
            raise ConnectionResetError("broker unreachable")

        bus.publish = broker_down  # type: ignore[method-assign]
        await admin.put("/admin/plugins/probe", {"enabled": False}, expect=200)
        assert not consuming(a, "probe")
        assert h.probe.of_type("plugin.switched") == []

        bus.publish = real_publish  # type: ignore[method-assign]
        [event] = await h.probe.wait_for("plugin.switched", timeout=10)
        assert event.data["plugin"] == "probe" and event.data["enabled"] is False


async def test_a_switch_to_the_state_a_plugin_is_in_changes_nothing_and_announces_nothing() -> None:
    async with Harness(**PROBE) as h:
        a = await h.start_instance()
        assert a.services is not None
        admin = h.client(a, "admin-1", "admin")
        states = a.services.store.collection("plugin_states")

        # On by default: switching it on again stores nothing and publishes nothing.
        assert (await admin.put("/admin/plugins/probe", {"enabled": True}, expect=200))["enabled"] is True
        assert await states.find_one({"_id": "probe"}) is None

        assert (await admin.put("/admin/plugins/probe", {"enabled": False}, expect=200))["enabled"] is False
        [event] = await h.probe.wait_for("plugin.switched")
        assert event.subject == "plugin:probe"
        assert event.data == {"plugin": "probe", "enabled": False, "actor": {"id": "admin-1", "role": "admin"}}
        stored = await states.find_one({"_id": "probe"})

        assert (await admin.put("/admin/plugins/probe", {"enabled": False}, expect=200))["enabled"] is False
        await h.probe.settle(0.3)
        assert [m.id for m in h.probe.of_type("plugin.switched")] == [event.id]
        assert await states.find_one({"_id": "probe"}) == stored
        assert not consuming(a, "probe")


async def test_admins_switching_a_plugin_at_once_announce_it_once() -> None:
    async with Harness(**PROBE) as h:
        a = await h.start_instance(service={"instance_id": "a"})
        b = await h.start_instance(service={"instance_id": "b"})
        admins = [h.client(service, f"admin-{n}", "admin") for n in range(3) for service in (a, b)]
        answers = await asyncio.gather(*(admin.put("/admin/plugins/probe", {"enabled": False}) for admin in admins))
        assert all(answer["enabled"] is False for answer in answers)
        await h.probe.wait_for("plugin.switched")
        await h.probe.settle(0.3)
        assert len({m.id for m in h.probe.of_type("plugin.switched")}) == 1


async def test_every_message_the_service_publishes_has_a_subject() -> None:
    """CloudEvents `subject` on every message: orders (the order id), plugin switches
    (`plugin:<name>`), seller settings (`seller:<id>`)."""
    async with Harness(**PROBE) as h:
        a = await h.start_instance()
        admin = h.client(a, "admin-1", "admin")
        buyer = h.client(a, "buyer-1", "buyer")
        seller = h.client(a, "seller-1", "seller")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
        await seller.put("/availability/sellers/seller-1/order-cap", {"max_active_orders": 5}, expect=200)
        await admin.put("/admin/plugins/probe", {"enabled": False}, expect=200)
        await admin.put("/admin/plugins/probe", {"enabled": True}, expect=200)
        await h.probe.wait_for("plugin.switched", count=2)
        await h.probe.settle(0.3)
        published = [m for m in h.probe.messages if m.source == "rescenter"]
        assert {m.type for m in published} >= {"order.placed", "order.requirements_submitted",
                                                "plugin.switched", "availability.cap_changed"}
        assert all(m.subject for m in published), [m.type for m in published if not m.subject]
