"""Every hook of core/hookspecs.py, exercised through a plugin loaded like an
outside one (tests/probe_plugin.py), against the real servers."""

from __future__ import annotations

import logging

import structlog

from core.hookspecs import hookimpl  # noqa: F401  (the marker plugins use)
from tests.harness import ORDER, Harness
from tests.probe_plugin import PINGS, REMINDERS, UNPLACED, ProbePing

PROBE = {"plugins": {"extra": ["tests.probe_plugin"]}}


async def test_register_message_types_adds_the_plugin_types_to_the_catalogue_and_asyncapi() -> None:
    async with Harness(**PROBE) as h:
        service = await h.start_instance()
        catalogue = service.services.catalogue
        assert catalogue.types["probe.ping"].owner == "probe"
        document = await h.client(service).get("/asyncapi.json", expect=200)
        assert document["channels"]["probe_ping"]["address"] == "probe.ping"
        assert "receive_probe_ping" in document["operations"]


async def test_subscriptions_outbox_and_deadline_handlers_work_together() -> None:
    async with Harness(**PROBE) as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        envelope = await h.publish("probe.ping", ProbePing(order_id="o-1", remind_in_hours=2), subject="o-1")
        await h.publish("probe.ping", ProbePing(order_id="o-1", remind_in_hours=2), subject="o-1", id=envelope.id)
        store = service.services.store
        deadline_id = f"probe/{envelope.id}"
        for _ in range(50):  # the handler stored the ping and, through its outbox, the deadline
            if await store.collection("deadlines").find_one({"_id": deadline_id}):
                break
            import asyncio

            await asyncio.sleep(0.1)
        assert await store.collection(PINGS).count_documents({}) == 1
        ping = await store.collection(PINGS).find_one({"_id": envelope.id})
        assert ping["_outbox"] == []  # the effects were applied and cleared

        await admin.post("/admin/clock/advance", {"by": "PT1H59M59S"}, expect=200)
        assert await store.collection(REMINDERS).find_one({"_id": deadline_id}) is None
        moved = await admin.post("/admin/clock/advance", {"by": "PT1S"}, expect=200)
        assert [f["kind"] for f in moved["fired"]] == ["probe.reminder"]
        assert (await store.collection(REMINDERS).find_one({"_id": deadline_id}))["fired"] == 1


async def test_startup_hook_prepares_the_plugin_collections() -> None:
    async with Harness(**PROBE) as h:
        service = await h.start_instance()
        indexes = await service.services.store.collection("probe_seen").index_information()
        assert "probe_subject" in indexes


async def test_ORD_5_order_not_placed_lets_plugins_undo_what_they_reserved() -> None:
    async with Harness(**PROBE) as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        problem = await buyer.post("/orders", {**ORDER, "gig_id": "vetoed-gig"}, expect=409)
        undone = [d async for d in service.services.store.collection(UNPLACED).find({})]
        assert len(undone) == 1 and undone[0]["reason"] == problem["detail"]


async def test_log_lines_written_while_handling_a_message_carry_its_context() -> None:
    captured: list[dict] = []

    def capture(logger: object, method: str, event: dict) -> dict:
        captured.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        async with Harness() as h:
            await h.start_instance()
            envelope = await h.publish("command.order.place", {
                "order_id": "logged-order", "buyer_id": "b-1", "seller_id": "s-1", "gig_id": "g-1",
                "price": {"amount": "10.00", "currency": "EUR"}, "delivery_days": 2,
            }, subject="logged-order")
            await h.probe.wait_for("order.placed", lambda m: m.subject == "logged-order")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []
    placed = [e for e in captured if e.get("event") == "order placed"]
    assert placed, captured
    assert placed[0]["message_id"] == envelope.id
    assert placed[0]["type"] == "command.order.place"
    assert placed[0]["order_id"] == "logged-order"
    assert placed[0]["plugin"] == "core"
