"""The order changes that follow an agreement in the resolution center, applied by the
core from bus commands (DSP-4, DSP-6, DSP-7, DSP-8): each applies once however often its
command is delivered, and moves the lateness deadline with the due date (ORD-2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest_asyncio

from core.messages import Actor, AmendOrder, CancelByAgreement, ExtendDelivery, Money
from core.service import Service
from tests.harness import ORDER, Client, Harness
from tests.support import eventually, header
from tests.test_disputes import distinct

RESOLUTION_CENTER = Actor(id="resolution-center", role="system")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared() -> AsyncIterator[tuple[Harness, Service]]:
    async with Harness() as h:
        yield h, await h.start_instance()


async def started_order(h: Harness, service: Service, buyer_id: str, *, requirements: bool = True) -> str:
    buyer = h.client(service, buyer_id, "buyer")
    order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
    if requirements:
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
    return order_id


def support(h: Harness, service: Service) -> Client:
    return h.client(service, "support-1", "support")


async def deadlines(h: Harness, service: Service, order_id: str) -> list[tuple[str, str, datetime]]:
    found = (await support(h, service).get(f"/orders/{order_id}/deadlines", expect=200))["deadlines"]
    return [(d["kind"], d["state"], datetime.fromisoformat(d["due_at"])) for d in found]


async def deadlines_are(h: Harness, service: Service, order_id: str,
                        expected: list[tuple[str, str, datetime]]) -> bool:
    return sorted(await deadlines(h, service, order_id), key=lambda d: d[2]) == expected


async def test_DSP_7_extension_command_moves_the_due_date_and_the_late_deadline_once(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    order_id = await started_order(h, service, "buyer-ext-1")
    before = await support(h, service).get(f"/orders/{order_id}", expect=200)
    due_at = datetime.fromisoformat(before["due_at"])

    command = ExtendDelivery(order_id=order_id, actor=RESOLUTION_CENTER, days=2, request_id="req-1")
    envelope = await h.publish("command.order.extend_delivery", command, subject=order_id)
    await h.publish("command.order.extend_delivery", command, subject=order_id, id=envelope.id)  # redelivered

    [event] = distinct(await h.probe.wait_for("order.delivery_extended", lambda m: m.subject == order_id))
    assert event.data["days"] == 2 and event.data["rule"] == "DSP-7" and event.data["request_id"] == "req-1"
    assert datetime.fromisoformat(event.data["previous_due_at"]) == due_at
    assert datetime.fromisoformat(event.data["due_at"]) == due_at + timedelta(days=2)
    assert event.data["delivery_days"] == 5 and event.data["late"] is False
    order = await eventually(lambda: _changed(h, service, order_id, before["version"] + 1), what="one extension")
    assert datetime.fromisoformat(order["due_at"]) == due_at + timedelta(days=2)
    assert order["delivery_days"] == 5
    await h.probe.settle(0.3)
    assert len(distinct(h.probe.of_type("order.delivery_extended", order_id))) == 1
    assert (await support(h, service).get(f"/orders/{order_id}"))["version"] == before["version"] + 1
    assert sorted(await deadlines(h, service, order_id)) == [
        ("order.late", "cancelled", due_at), ("order.late", "pending", due_at + timedelta(days=2))]


async def test_DSP_7_extended_order_is_late_only_at_its_new_due_date() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        order_id = await started_order(h, service, "buyer-ext-2")
        due_at = datetime.fromisoformat((await admin.get(f"/orders/{order_id}", expect=200))["due_at"])
        await h.publish("command.order.extend_delivery",
                        ExtendDelivery(order_id=order_id, actor=RESOLUTION_CENTER, days=1), subject=order_id)
        await h.probe.wait_for("order.delivery_extended", lambda m: m.subject == order_id)
        new_due = due_at + timedelta(days=1)
        # The outbox publishes the event before it moves the deadline (in the order staged): wait
        # for the move too, or a clock advanced at once may still find the old one pending.
        await eventually(lambda: deadlines_are(h, service, order_id, [("order.late", "cancelled", due_at),
                                                                      ("order.late", "pending", new_due)]),
                         what="the late deadline moved")

        moved = await admin.post("/admin/clock/advance", {"to": (new_due - timedelta(seconds=1)).isoformat()},
                                 expect=200)
        assert moved["fired"] == []  # the old due date passed quietly
        assert (await admin.get(f"/orders/{order_id}"))["late"] is False
        moved = await admin.post("/admin/clock/advance", {"by": "PT1S"}, expect=200)
        assert [f["kind"] for f in moved["fired"]] == ["order.late"]
        [late] = distinct(await h.probe.wait_for("order.late", lambda m: m.subject == order_id))
        assert datetime.fromisoformat(late.data["due_at"]) == new_due


async def test_DSP_7_an_order_already_late_stays_late_and_is_not_late_twice() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        order_id = await started_order(h, service, "buyer-ext-3")
        await admin.post("/admin/clock/advance", {"by": "P3D"}, expect=200)
        await h.probe.wait_for("order.late", lambda m: m.subject == order_id)

        await h.publish("command.order.extend_delivery",
                        ExtendDelivery(order_id=order_id, actor=RESOLUTION_CENTER, days=3), subject=order_id)
        [event] = distinct(await h.probe.wait_for("order.delivery_extended", lambda m: m.subject == order_id))
        assert event.data["late"] is True
        order = await admin.get(f"/orders/{order_id}", expect=200)
        assert order["late"] is True and order["delivery_days"] == 6
        await admin.post("/admin/clock/advance", {"by": "P4D"}, expect=200)
        await h.probe.settle(0.3)
        assert len(distinct(h.probe.of_type("order.late", order_id))) == 1
        assert [d for d in await deadlines(h, service, order_id) if d[1] == "pending"] == []


async def test_DSP_7_extension_before_the_requirements_lengthens_the_delivery_clock(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    buyer = h.client(service, "buyer-ext-4", "buyer")
    order_id = await started_order(h, service, "buyer-ext-4", requirements=False)
    await h.publish("command.order.extend_delivery",
                    ExtendDelivery(order_id=order_id, actor=RESOLUTION_CENTER, days=4), subject=order_id)
    [event] = distinct(await h.probe.wait_for("order.delivery_extended", lambda m: m.subject == order_id))
    assert event.data["delivery_days"] == 7 and "due_at" not in event.data
    started = await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
    assert (datetime.fromisoformat(started["due_at"]) - datetime.fromisoformat(started["started_at"])
            == timedelta(days=7))


async def test_DSP_8_amend_command_adds_revisions_days_and_exact_price_once(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    order_id = await started_order(h, service, "buyer-amend-1")
    before = await support(h, service).get(f"/orders/{order_id}", expect=200)
    command = AmendOrder(order_id=order_id, actor=RESOLUTION_CENTER, added_revisions=2, added_days=1,
                         added_price=Money(amount=Decimal("15.10"), currency="EUR"), request_id="req-2")
    envelope = await h.publish("command.order.amend", command, subject=order_id)
    await h.publish("command.order.amend", command, subject=order_id, id=envelope.id)  # redelivered

    [event] = distinct(await h.probe.wait_for("order.amended", lambda m: m.subject == order_id))
    assert event.data["price"] == {"amount": "135.10", "currency": "EUR"}
    assert event.data["previous_price"] == {"amount": "120.00", "currency": "EUR"}
    assert event.data["added_price"] == {"amount": "15.10", "currency": "EUR"}
    assert (event.data["added_revisions"], event.data["extra_revisions"], event.data["delivery_days"]) == (2, 2, 4)
    assert event.data["rule"] == "DSP-8" and event.data["request_id"] == "req-2"
    order = await eventually(lambda: _changed(h, service, order_id, before["version"] + 1), what="one amendment")
    assert order["price"] == {"amount": "135.10", "currency": "EUR"}
    assert order["original_price"] == {"amount": "120.00", "currency": "EUR"}
    assert order["extra_revisions"] == 2 and order["delivery_days"] == 4
    assert datetime.fromisoformat(order["due_at"]) == datetime.fromisoformat(before["due_at"]) + timedelta(days=1)
    await h.probe.settle(0.3)
    assert len(distinct(h.probe.of_type("order.amended", order_id))) == 1


async def test_DSP_8_amend_in_another_currency_or_by_a_party_is_dead_lettered_and_changes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        order_id = await started_order(h, service, "buyer-amend-2")
        before = await support(h, service).get(f"/orders/{order_id}", expect=200)
        await h.publish("command.order.amend", AmendOrder(
            order_id=order_id, actor=RESOLUTION_CENTER, added_price=Money(amount=Decimal("5"), currency="USD")),
            subject=order_id)
        await h.publish("command.order.amend", AmendOrder(
            order_id=order_id, actor=Actor(id="seller-1", role="seller"), added_revisions=9), subject=order_id)
        dead = await h.dead_letters("core", count=2)
        errors = sorted(header(m, "x-rescenter-error") for m in dead)
        assert errors[0].startswith("DSP-8: ") and "EUR" in errors[0]
        assert "resolution center" in errors[1]
        after = await support(h, service).get(f"/orders/{order_id}", expect=200)
        assert after == before


async def test_DSP_4_cancel_by_agreement_is_a_mutual_cancellation_applied_once(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    order_id = await started_order(h, service, "buyer-cancel-1")
    command = CancelByAgreement(order_id=order_id, actor=RESOLUTION_CENTER, requested_by="seller", rule="DSP-4",
                                request_id="req-3")
    envelope = await h.publish("command.order.cancel_by_agreement", command, subject=order_id)
    await h.publish("command.order.cancel_by_agreement", command, subject=order_id, id=envelope.id)

    [event] = distinct(await h.probe.wait_for("order.cancelled", lambda m: m.subject == order_id))
    assert (event.data["cause"], event.data["requested_by"], event.data["rule"], event.data["request_id"]) == (
        "mutual_agreement", "seller", "DSP-4", "req-3")
    assert event.data["previous_state"] == "in_progress" and "reason" not in event.data
    await h.probe.settle(0.3)
    assert len(distinct(h.probe.of_type("order.cancelled", order_id))) == 1
    assert (await support(h, service).get(f"/orders/{order_id}"))["cancel_cause"] == "mutual_agreement"


async def _changed(h: Harness, service: Service, order_id: str, version: int) -> dict[str, Any] | None:
    order = await support(h, service).get(f"/orders/{order_id}", expect=200)
    return order if order["version"] >= version else None
