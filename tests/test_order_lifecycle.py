"""ORD-1, ORD-2, ORD-4, ORD-6 over HTTP against real RabbitMQ and the MongoDB-wire server."""

from __future__ import annotations

from tests.harness import ORDER, Client, Harness

LIFECYCLE = ["order.placed", "order.requirements_submitted", "order.delivered", "order.completed"]


async def test_ORD_1_ORD_6_lifecycle_events_reach_an_independent_consumer_in_order() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")

        order = await buyer.post("/orders", ORDER, expect=201)
        order_id = order["id"]
        assert order["state"] == "awaiting_requirements"
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a red logo"}, expect=200)
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "here it is", "attachments": ["logo.png"]},
                          expect=200)
        done = await buyer.post(f"/orders/{order_id}/acceptance", expect=200)
        assert done["state"] == "completed"

        await h.probe.wait_for("order.completed", lambda m: m.subject == order_id)
        events = [m for m in h.probe.messages if m.subject == order_id]
        assert [m.type for m in events] == LIFECYCLE
        assert [m.data["state"] for m in events] == ["awaiting_requirements", "in_progress", "delivered", "completed"]
        assert all(m.source == "rescenter" and m.specversion == "1.0" for m in events)
        assert events[-1].data["cause"] == "accepted"

        timeline = await buyer.get(f"/orders/{order_id}/timeline", expect=200)
        entries = timeline["entries"]
        assert [e["type"] for e in entries] == LIFECYCLE
        assert [e["event_id"] for e in entries] == [m.id for m in events]
        assert [e["actor"]["id"] for e in entries] == ["buyer-1", "buyer-1", "seller-1", "buyer-1"]
        assert [e["rule"] for e in entries] == ["ORD-1", "ORD-2", "ORD-4", "ORD-4"]
        assert [e["seq"] for e in entries] == [0, 1, 2, 3]


async def test_ORD_2_due_date_starts_at_requirements_and_late_is_published_once() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        admin = h.client(service, "admin-1", "admin")
        order = await buyer.post("/orders", ORDER, expect=201)
        order_id = order["id"]
        await admin.post("/admin/clock/advance", {"by": "P10D"}, expect=200)  # waiting for requirements: no clock
        started = await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
        from datetime import datetime, timedelta

        started_at = datetime.fromisoformat(started["started_at"])
        assert datetime.fromisoformat(started["due_at"]) == started_at + timedelta(days=3)

        one_second_before = started_at + timedelta(days=3) - timedelta(seconds=1)
        await admin.post("/admin/clock/advance", {"to": one_second_before.isoformat()}, expect=200)
        assert (await buyer.get(f"/orders/{order_id}"))["late"] is False
        moved = await admin.post("/admin/clock/advance", {"by": "PT1S"}, expect=200)
        assert [f["kind"] for f in moved["fired"]] == ["order.late"]
        assert (await buyer.get(f"/orders/{order_id}"))["late"] is True
        await admin.post("/admin/clock/advance", {"by": "P5D"}, expect=200)
        await h.probe.wait_for("order.late", lambda m: m.subject == order_id)
        await h.probe.settle(0.5)
        assert len(h.probe.of_type("order.late", order_id)) == 1


async def _delivered_order(h: Harness) -> tuple[Client, Client, Client, str]:
    """An instance, its buyer, seller and admin, and an order delivered once (ORD-2, ORD-4)."""
    service = await h.start_instance()
    buyer = h.client(service, "buyer-1", "buyer")
    seller = h.client(service, "seller-1", "seller")
    admin = h.client(service, "admin-1", "admin")
    order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
    await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
    await seller.post(f"/orders/{order_id}/deliveries", {"message": "v1"}, expect=200)
    return buyer, seller, admin, order_id


async def test_ORD_4_unanswered_delivery_completes_itself_after_three_days() -> None:
    async with Harness() as h:
        buyer, seller, admin, order_id = await _delivered_order(h)
        await admin.post("/admin/clock/advance", {"by": "P2DT23H59M59S"}, expect=200)
        assert (await buyer.get(f"/orders/{order_id}"))["state"] == "delivered"
        await admin.post("/admin/clock/advance", {"by": "PT1S"}, expect=200)
        order = await buyer.get(f"/orders/{order_id}")
        assert order["state"] == "completed" and order["completion_cause"] == "auto_completed"
        completed = await h.probe.wait_for("order.completed", lambda m: m.subject == order_id)
        assert completed[0].data["actor"]["role"] == "system" and completed[0].data["rule"] == "ORD-4"


async def test_ORD_4_a_redelivery_at_the_same_instant_as_the_revision_still_completes_by_itself() -> None:
    """Delivery, revision request and new delivery at one instant of the test clock: the new
    delivery's auto-completion is a deadline of its own, not the one the revision cancelled."""
    async with Harness() as h:
        buyer, seller, admin, order_id = await _delivered_order(h)
        await buyer.post(f"/orders/{order_id}/revisions", {"reason": "bigger"}, expect=200)
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "v2"}, expect=200)

        moved = await admin.post("/admin/clock/advance", {"by": "P3DT1M"}, expect=200)
        assert "order.auto_complete" in [f["kind"] for f in moved["fired"]]
        order = await buyer.get(f"/orders/{order_id}", expect=200)
        assert order["state"] == "completed" and order["completion_cause"] == "auto_completed"
