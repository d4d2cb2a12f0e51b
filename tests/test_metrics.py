"""The metrics plugin (MET-1 to MET-4) over HTTP and the bus, against real RabbitMQ
and the MongoDB-wire server, with the test clock moved across the 14-day and
60-day boundaries.

Orders go through the core where the core can drive them (HTTP, and the
resolution center's bus command for cancellations by mutual agreement); the
disputes and reviews plugins' events are published here as their owners
publish them (fields of docs/plugins.md), so these tests do not depend on
their code. Each test uses its own sellers and buyers on one shared instance.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest_asyncio
from pymongo.asynchronous.collection import AsyncCollection

from core.messages import (
    Actor,
    Envelope,
    Money,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderLate,
    OrderPlaced,
)
from core.service import Service
from tests.harness import ORDER, Client, Harness
from tests.support import consumed, eventually, header, problem

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = Actor(id="rescenter", role="system")
#: the other plugins are loaded (their event types are in the catalogue) but off: the
#: metrics depend on their events, never on their code
ONLY_METRICS = {"enabled": ["metrics"]}


# ---------------------------------------------------------------- fixtures and helpers


@dataclass
class World:
    h: Harness
    service: Service
    admin: Client
    support: Client

    def seller(self, seller_id: str) -> Client:
        return self.h.client(self.service, seller_id, "seller")

    def buyer(self, buyer_id: str) -> Client:
        return self.h.client(self.service, buyer_id, "buyer")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world() -> AsyncIterator[World]:
    async with Harness(plugins=ONLY_METRICS) as h:
        service = await h.start_instance()
        yield World(h, service, h.client(service, "admin-1", "admin"), h.client(service, "support-1", "support"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def now(w: World) -> datetime:
    return datetime.fromisoformat((await w.admin.get("/admin/clock", expect=200))["now"])


async def advance_to(w: World, moment: datetime) -> None:
    await w.admin.post("/admin/clock/advance", {"to": moment.isoformat()}, expect=200)


async def emit(w: World, type_: str, data: dict[str, Any], *, at: datetime | None = None,
               id: str | None = None) -> Envelope:
    """Publish as the event's owner would: the envelope time is when it happened."""
    envelope = Envelope(id=id or uuid.uuid4().hex, source="tests", type=type_, time=at or await now(w),
                        subject=data.get("order_id"), data=data)
    await w.h.publish(type_, {}, raw=envelope.body())
    return envelope


def core_event(type_: str, order_id: str, buyer_id: str, seller_id: str, **fields: Any) -> dict[str, Any]:
    """An order event exactly as the core's model shapes it (core/messages.py)."""
    model, state = {
        "order.placed": (OrderPlaced, "awaiting_requirements"),
        "order.delivered": (OrderDelivered, "delivered"),
        "order.late": (OrderLate, "in_progress"),
        "order.completed": (OrderCompleted, "completed"),
        "order.cancelled": (OrderCancelled, "cancelled"),
    }[type_]
    if type_ == "order.placed":
        fields = {"price": Money(amount="50.00", currency="EUR"), "delivery_days": 3, **fields}
    event = model(order_id=order_id, buyer_id=buyer_id, seller_id=seller_id, gig_id="gig-1",
                  state=fields.pop("state", state), actor=fields.pop("actor", SYSTEM), **fields)
    return event.model_dump(mode="json", exclude_none=True)


def dispute_event(order_id: str, buyer_id: str, seller_id: str, *, kind: str, to_party: str,
                  **fields: Any) -> dict[str, Any]:
    """A `dispute.*` event with the fields of the contract (docs/plugins.md)."""
    from_party = "buyer" if to_party == "seller" else "seller"
    return {"order_id": order_id, "buyer_id": buyer_id, "seller_id": seller_id, "request_id": unique("req"),
            "kind": kind, "from_party": from_party, "to_party": to_party,
            "actor": {"id": f"{from_party}-x", "role": from_party}, "rule": "DSP-9", **fields}


async def emit_all(w: World, events: list[tuple[str, dict[str, Any], datetime]]) -> None:
    """Publish many events on one channel, each with the time it happened."""
    connection = await aio_pika.connect_robust(w.h.settings.bus.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(w.h.settings.bus.exchange)
        for type_, data, at in events:
            envelope = Envelope(id=uuid.uuid4().hex, source="tests", type=type_, time=at,
                                subject=data["order_id"], data=data)
            await exchange.publish(aio_pika.Message(envelope.body(), message_id=envelope.id,
                                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                   routing_key=type_)


async def history_handled(w: World, sent: int, *seller_ids: str) -> None:
    """Wait until the metrics consumer has handled every event `publish_history` sent for
    these sellers: all of them in the event log, and each seller's live figures equal to
    those folded from the log for the same instant (the projection written too). A count of
    consumed messages would not do: a retried delivery, or another test's late message,
    counts as well."""
    assert w.service.services is not None
    events = w.service.services.store.collection("metrics_events")

    async def logged() -> bool:
        return await events.count_documents({"seller_id": {"$in": list(seller_ids)}}) >= sent

    await eventually(logged, timeout=60, interval=0.2, what=f"the {sent} events in the event log")
    for seller_id in seller_ids:
        reader = w.seller(seller_id)

        async def projected(seller_id: str = seller_id, reader: Client = reader) -> bool:
            live = await figures(reader, seller_id)
            return {**await figures(reader, seller_id, at=live["at"]), "source": "live"} == live

        await eventually(projected, timeout=30, interval=0.2, what=f"the live figures of {seller_id} written")


async def figures(client: Client, seller_id: str, **query: str) -> dict[str, Any]:
    suffix = "&".join(f"{k}={v.replace('+', '%2B')}" for k, v in query.items())
    return await client.get(f"/sellers/{seller_id}/metrics" + (f"?{suffix}" if suffix else ""), expect=200)


async def figures_when(client: Client, seller_id: str, check: Any, what: str) -> dict[str, Any]:
    """The live figures once the metrics consumer has caught up with what `check` expects."""
    async def ready() -> dict[str, Any] | None:
        found = await figures(client, seller_id)
        return found if check(found) else None

    return await eventually(ready, what=what, timeout=15)


def lines(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {line["order_id"]: line for line in found["completion_rate"]["orders"]}


def factor(found: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in found["success_score"]["factors"] if f["name"] == name)


def at_(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def complete_over_http(w: World, buyer_id: str, seller_id: str) -> str:
    buyer, seller = w.buyer(buyer_id), w.seller(seller_id)
    order_id = (await buyer.post("/orders", {**ORDER, "seller_id": seller_id}, expect=201))["id"]
    await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a logo"}, expect=200)
    await seller.post(f"/orders/{order_id}/deliveries", {"message": "done", "attachments": ["logo.png"]},
                      expect=200)
    await buyer.post(f"/orders/{order_id}/acceptance", expect=200)
    return order_id


async def place_over_http(w: World, buyer_id: str, seller_id: str, *, start: bool = True) -> str:
    buyer = w.buyer(buyer_id)
    order_id = (await buyer.post("/orders", {**ORDER, "seller_id": seller_id}, expect=201))["id"]
    if start:
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a logo"}, expect=200)
    return order_id


async def cancel_by_agreement(w: World, order_id: str, requested_by: str) -> None:
    """The resolution center's command (DSP-4 seller's request, DSP-6 buyer's request)."""
    rule = "DSP-6" if requested_by == "buyer" else "DSP-4"
    await w.h.publish("command.order.cancel_by_agreement", {
        "order_id": order_id, "actor": {"id": "disputes", "role": "service"},
        "requested_by": requested_by, "rule": rule}, subject=order_id)
    await w.h.probe.wait_for("order.cancelled", lambda m: m.subject == order_id)


async def dead_letter(w: World, message_id: str) -> Any:
    """The metrics' dead letter of this message (others' may be queued before it)."""
    async with asyncio.timeout(10):
        while True:
            for message in await w.h.dead_letters("metrics"):
                if Envelope.model_validate_json(message.body).id == message_id:
                    return message


# ---------------------------------------------------------------- MET-1


async def test_MET_1_rate_is_completed_over_orders_that_count_with_each_order_explained(world: World) -> None:
    w = world
    seller_id = unique("seller-met1")
    first = await complete_over_http(w, unique("buyer"), seller_id)
    second = await complete_over_http(w, unique("buyer"), seller_id)
    cancelled = await place_over_http(w, unique("buyer"), seller_id)
    await w.support.post(f"/orders/{cancelled}/cancellation", {"reason": "seller unreachable"}, expect=200)

    found = await figures_when(w.seller(seller_id), seller_id, lambda f: len(f["completion_rate"]["orders"]) == 3,
                               "three ended orders")
    rate = found["completion_rate"]
    assert (rate["percent"], rate["completed"], rate["cancellations_counted"]) == (66.67, 2, 1)
    assert rate["rule"] == "MET-1" and found["source"] == "live"
    by_order = lines(found)
    assert {by_order[first]["reason"], by_order[second]["reason"]} == {"completed"}
    assert by_order[cancelled]["reason"] == "cancelled_by_support"
    assert by_order[cancelled]["counted"] and by_order[cancelled]["rule"] == "MET-1"
    assert "counts as a cancellation (MET-1)" in by_order[cancelled]["explanation"]
    for line in by_order.values():  # MET-1: each order says when it leaves the 60-day window
        assert at_(line["leaves_window_at"]) == at_(line["ended_at"]) + timedelta(days=60)
    # MET-4 knows both deliveries were on time (ORD-2), straight from the core's events.
    assert factor(found, "on_time_delivery")["value"] == 100.0
    assert factor(found, "on_time_delivery")["data_points"] == 2
    # Support reads the same figures.
    assert (await figures(w.support, seller_id))["completion_rate"] == rate


async def test_MET_1_only_the_seller_and_support_read_the_figures_others_get_404(world: World) -> None:
    w = world
    seller_id, buyer_id = unique("seller-private"), unique("buyer")
    order_id = await complete_over_http(w, buyer_id, seller_id)
    await figures_when(w.seller(seller_id), seller_id, lambda f: f["completion_rate"]["completed"] == 1, "one order")
    # Not even the buyer of its orders, nor admins and services: only the seller and support.
    strangers = [w.seller(unique("another-seller")), w.buyer(buyer_id), w.admin,
                 w.h.client(w.service, "a-service", "service")]
    for stranger in strangers:
        for path in (f"/sellers/{seller_id}/metrics", f"/sellers/{seller_id}/metrics/changes"
                     "?since=2020-01-01T00:00:00Z&until=2020-01-02T00:00:00Z"):
            body = await stranger.get(path)
            problem(stranger, body, 404)
        # ... exactly as for a seller with no figures at all: nothing to learn from the answer.
        unknown = await stranger.get(f"/sellers/{unique('nobody')}/metrics")
        assert problem(stranger, unknown, 404)["title"] == body["title"]
    assert order_id in lines(await figures(w.support, seller_id))


async def test_MET_1_an_order_counts_until_60_days_after_it_ended_then_leaves_the_window(world: World) -> None:
    w = world
    seller_id = unique("seller-window")
    seller = w.seller(seller_id)
    kept = await complete_over_http(w, unique("buyer"), seller_id)
    found = await figures_when(seller, seller_id, lambda f: f["completion_rate"]["completed"] == 1, "completion")
    ended_at = at_(lines(found)[kept]["ended_at"])

    await advance_to(w, ended_at + timedelta(days=60) - timedelta(seconds=1))
    just_before = await figures(seller, seller_id)
    assert kept in lines(just_before) and just_before["completion_rate"]["percent"] == 100.0

    await advance_to(w, ended_at + timedelta(days=60))
    at_the_boundary = await figures(seller, seller_id)
    assert at_the_boundary["completion_rate"]["orders"] == []
    assert at_the_boundary["completion_rate"]["percent"] is None
    assert at_the_boundary["success_score"]["score"] is None  # no factor has data any more

    # As of one second before, from the events kept: the order was still there.
    before = (ended_at + timedelta(days=60) - timedelta(seconds=1)).isoformat()
    as_of = await figures(seller, seller_id, at=before)
    assert as_of["source"] == "event_log" and kept in lines(as_of)
    assert as_of["completion_rate"] == just_before["completion_rate"]
    # ... and why it moved: the order left the window.
    moved = await seller.get(f"/sellers/{seller_id}/metrics/changes?since={before.replace('+', '%2B')}"
                             f"&until={(ended_at + timedelta(days=60)).isoformat().replace('+', '%2B')}", expect=200)
    assert [(c["order_id"], c["change"]) for c in moved["orders"]] == [(kept, "left_window")]
    assert (moved["completion_rate_before"], moved["completion_rate_after"]) == (100.0, None)


async def test_MET_1_as_of_refuses_an_instant_it_cannot_answer(world: World) -> None:
    w = world
    seller_id = unique("seller-asof")
    seller = w.seller(seller_id)
    later = (await now(w) + timedelta(days=1)).isoformat().replace("+", "%2B")
    for query, words in ((f"at={later}", "later than now"), ("at=yesterday", "ISO 8601"),
                         ("at=2025-01-01T00:00:00", "offset")):
        body = await seller.get(f"/sellers/{seller_id}/metrics?{query}")
        assert words in problem(seller, body, 422)["detail"]
    body = await seller.get(f"/sellers/{seller_id}/metrics/changes?since=2025-01-02T00:00:00Z"
                            "&until=2025-01-01T00:00:00Z")
    assert "earlier" in problem(seller, body, 422)["detail"]


async def test_MET_1_a_redelivered_event_is_counted_once_and_a_malformed_one_changes_nothing(world: World) -> None:
    w = world
    seller_id, buyer_id, order_id = unique("seller-redelivery"), unique("buyer"), unique("order")
    placed = core_event("order.placed", order_id, buyer_id, seller_id)
    completed = core_event("order.completed", order_id, buyer_id, seller_id, cause="accepted")
    before = consumed(w.service, "metrics", "order.completed")
    await emit(w, "order.placed", placed)
    envelope = await emit(w, "order.completed", completed)
    await emit(w, "order.completed", completed, id=envelope.id, at=envelope.time)  # the same message again
    await eventually(lambda: consumed(w.service, "metrics", "order.completed") >= before + 2,
                     what="both deliveries handled")
    # Another test's late order.completed may have counted too: the order itself must be in.
    found = await figures_when(w.seller(seller_id), seller_id, lambda f: order_id in lines(f),
                               what="the completed order in the figures")
    assert found["completion_rate"]["completed"] == 1 and list(lines(found)) == [order_id]
    log = w.service.services.store.collection("metrics_events")
    assert await log.count_documents({"_id": envelope.id}) == 1

    # An order event without its seller cannot be counted: dead-lettered with the reason.
    broken = {k: v for k, v in core_event("order.completed", unique("order"), buyer_id, seller_id,
                                          cause="accepted").items() if k != "seller_id"}
    bad = await emit(w, "order.completed", broken)
    dead = await dead_letter(w, bad.id)
    assert header(dead, "x-rescenter-reason") == "invalid" and "seller_id" in header(dead, "x-rescenter-error")
    assert (await figures(w.seller(seller_id), seller_id))["completion_rate"] == found["completion_rate"]


# ---------------------------------------------------------------- MET-2


async def test_MET_2_buyer_cancelling_while_awaiting_requirements_does_not_count(world: World) -> None:
    w = world
    seller_id = unique("seller-requirements")
    excluded = await place_over_http(w, unique("buyer"), seller_id, start=False)
    await cancel_by_agreement(w, excluded, requested_by="buyer")
    started = await place_over_http(w, unique("buyer"), seller_id)  # requirements in: the buyer's cancel counts
    await cancel_by_agreement(w, started, requested_by="buyer")
    by_support = await place_over_http(w, unique("buyer"), seller_id, start=False)
    await w.support.post(f"/orders/{by_support}/cancellation", {"reason": "duplicate"}, expect=200)
    done = await complete_over_http(w, unique("buyer"), seller_id)

    found = await figures_when(w.seller(seller_id), seller_id, lambda f: len(f["completion_rate"]["orders"]) == 4,
                               "four ended orders")
    by_order = lines(found)
    assert by_order[excluded]["counted"] is False
    assert (by_order[excluded]["reason"], by_order[excluded]["rule"]) == ("buyer_cancelled_awaiting_requirements",
                                                                          "MET-2")
    assert by_order[excluded]["cancelled_from"] == "awaiting_requirements"
    assert by_order[started]["counted"] and by_order[started]["reason"] == "mutual_cancellation"
    assert by_order[by_support]["counted"] and by_order[by_support]["reason"] == "cancelled_by_support"
    assert by_order[done]["counted"]
    rate = found["completion_rate"]
    assert (rate["completed"], rate["cancellations_counted"], rate["cancellations_excluded"]) == (1, 2, 1)
    assert rate["percent"] == 33.33


async def test_MET_2_mutual_cancellation_then_a_new_order_within_14_days_stops_counting(world: World) -> None:
    w = world
    seller_id = unique("seller-reorder")
    seller = w.seller(seller_id)
    comes_back, comes_too_late = unique("buyer-back"), unique("buyer-late")
    first = await place_over_http(w, comes_back, seller_id)
    second = await place_over_http(w, comes_too_late, seller_id)
    await cancel_by_agreement(w, first, requested_by="seller")
    await cancel_by_agreement(w, second, requested_by="seller")
    found = await figures_when(seller, seller_id, lambda f: len(f["completion_rate"]["orders"]) == 2, "two cancels")
    cancelled_at = {order_id: at_(line["ended_at"]) for order_id, line in lines(found).items()}
    assert cancelled_at[first] == cancelled_at[second]  # the test clock did not move
    for line in lines(found).values():  # both count for now, and say how they could stop counting
        assert line["counted"] and line["reason"] == "mutual_cancellation"
        assert at_(line["excluded_if_buyer_reorders_before"]) == cancelled_at[first] + timedelta(days=14)
        assert "orders again before" in line["explanation"]

    # One second before the 14 days end, the first buyer orders again: retroactively excluded.
    await advance_to(w, cancelled_at[first] + timedelta(days=14) - timedelta(seconds=1))
    new_order = await place_over_http(w, comes_back, seller_id, start=False)
    found = await figures_when(seller, seller_id, lambda f: not lines(f)[first]["counted"], "the reorder counted")
    line = lines(found)[first]
    assert (line["reason"], line["rule"], line["new_order_id"]) == (
        "mutual_cancellation_then_new_order", "MET-2", new_order)
    assert found["completion_rate"]["cancellations_excluded"] == 1

    # Exactly at 14 days the window is closed: the other buyer's new order changes nothing.
    await advance_to(w, cancelled_at[second] + timedelta(days=14))
    late_order = await place_over_http(w, comes_too_late, seller_id, start=False)
    await w.h.probe.wait_for("order.placed", lambda m: m.subject == late_order)
    await eventually(lambda: w.service.services.store.collection("metrics_events").find_one(
        {"order_id": late_order}), what="the late reorder recorded")
    found = await figures(seller, seller_id)
    line = lines(found)[second]
    assert line["counted"] and line["reason"] == "mutual_cancellation"
    assert line["excluded_if_buyer_reorders_before"] is None

    # As of just before the reorder, from the events kept, the first cancellation still counted.
    before = (cancelled_at[first] + timedelta(days=14) - timedelta(seconds=2)).isoformat()
    assert lines(await figures(seller, seller_id, at=before))[first]["counted"] is True
    moved = await seller.get(f"/sellers/{seller_id}/metrics/changes?since={before.replace('+', '%2B')}"
                             f"&until={(await now(w)).isoformat().replace('+', '%2B')}", expect=200)
    assert [(c["order_id"], c["change"]) for c in moved["orders"]] == [(first, "reclassified")]
    assert moved["orders"][0]["after"]["reason"] == "mutual_cancellation_then_new_order"


async def test_MET_2_support_flags_a_cancellation_and_clears_it(world: World) -> None:
    w = world
    seller_id = unique("seller-flags")
    seller = w.seller(seller_id)
    order_id = await place_over_http(w, unique("buyer"), seller_id)
    await w.support.post(f"/orders/{order_id}/cancellation", {"reason": "stolen card"}, expect=200)
    await figures_when(seller, seller_id, lambda f: f["completion_rate"]["cancellations_counted"] == 1, "cancel")
    flagged_at = await now(w)

    flag = await w.support.put(f"/orders/{order_id}/cancellation-flag", {"flag": "fraud", "note": "stolen card"},
                               expect=200)
    assert (flag["flag"], flag["revision"], flag["changed_by"]) == ("fraud", 1, "support-1")
    # The answer already holds: the next read shows it.
    line = lines(await figures(seller, seller_id))[order_id]
    assert (line["counted"], line["reason"], line["rule"]) == (False, "flagged_fraud", "MET-2")
    assert line["flag"]["note"] == "stolen card" and "fraud" in line["explanation"]
    event = (await w.h.probe.wait_for("metrics.cancellation_flag_set", lambda m: m.subject == order_id))[0]
    assert (event.data["seller_id"], event.data["flag"], event.data["rule"]) == (seller_id, "fraud", "MET-2")
    # The same flag again changes nothing and publishes nothing.
    again = await w.support.put(f"/orders/{order_id}/cancellation-flag", {"flag": "fraud", "note": "stolen card"},
                                expect=200)
    assert again["revision"] == 1

    await advance_to(w, flagged_at + timedelta(hours=2))
    cleared = await w.support.request("DELETE", f"/orders/{order_id}/cancellation-flag", expect=200)
    assert (cleared["flag"], cleared["revision"]) == (None, 2)
    line = lines(await figures(seller, seller_id))[order_id]
    assert (line["counted"], line["reason"]) == (True, "cancelled_by_support")
    await w.h.probe.wait_for("metrics.cancellation_flag_cleared", lambda m: m.subject == order_id)
    assert len(w.h.probe.of_type("metrics.cancellation_flag_set", order_id)) == 1
    # As of the hour it was flagged, from the events kept: excluded then.
    hour_later = (flagged_at + timedelta(hours=1)).isoformat()
    assert lines(await figures(seller, seller_id, at=hour_later))[order_id]["reason"] == "flagged_fraud"
    assert (await w.support.get(f"/orders/{order_id}/cancellation-flag", expect=200))["flag"] is None


async def test_MET_2_flags_refused_clearly_and_nothing_changed(world: World) -> None:
    w = world
    seller_id = unique("seller-bad-flags")
    running = await place_over_http(w, unique("buyer"), seller_id)
    body = await w.support.put(f"/orders/{running}/cancellation-flag", {"flag": "mistaken_order", "note": "oops"})
    assert "only a cancellation can be flagged" in problem(w.support, body, 409, rule="MET-2")["detail"]
    assert (await w.support.get(f"/orders/{running}/cancellation-flag", expect=200))["flag"] is None

    body = await w.support.put(f"/orders/{unique('nope')}/cancellation-flag", {"flag": "fraud", "note": "x"})
    problem(w.support, body, 404)
    body = await w.support.put(f"/orders/{running}/cancellation-flag", {"flag": "bored", "note": "x"})
    problem(w.support, body, 422)
    body = await w.support.put(f"/orders/{running}/cancellation-flag", {"flag": "fraud", "note": "x", "extra": 1})
    problem(w.support, body, 422)
    seller = w.seller(seller_id)  # a seller cannot flag its own cancellations
    body = await seller.put(f"/orders/{running}/cancellation-flag", {"flag": "fraud", "note": "x"})
    problem(seller, body, 403)
    assert not w.h.probe.of_type("metrics.cancellation_flag_set", running)


# ---------------------------------------------------------------- MET-3


async def test_MET_3_an_accepted_partial_refund_does_not_touch_the_rate(world: World) -> None:
    w = world
    seller_id, buyer_id = unique("seller-refund"), unique("buyer")
    refunded = await complete_over_http(w, buyer_id, seller_id)
    cancelled = await place_over_http(w, unique("buyer"), seller_id)
    await w.support.post(f"/orders/{cancelled}/cancellation", {"reason": "no show"}, expect=200)
    before = await figures_when(w.seller(seller_id), seller_id, lambda f: len(lines(f)) == 2, "two orders")
    assert before["completion_rate"]["percent"] == 50.0

    moment = await now(w)
    await emit(w, "dispute.refund_issued", dispute_event(
        refunded, buyer_id, seller_id, kind="partial_refund", to_party="buyer", rule="DSP-3",
        amount={"amount": "30.00", "currency": "EUR"}, accepted_at=moment.isoformat()), at=moment)
    after = await figures_when(w.seller(seller_id), seller_id, lambda f: lines(f)[refunded]["partial_refunds"],
                               "the refund recorded")
    line = lines(after)[refunded]
    assert line["partial_refunds"][0]["amount"] == "30.00" and "(MET-3)" in line["explanation"]
    assert (line["counted"], line["reason"]) == (True, "completed")
    assert after["completion_rate"]["percent"] == 50.0
    assert after["completion_rate"]["completed"] == before["completion_rate"]["completed"]


# ---------------------------------------------------------------- MET-4


async def publish_score_history(w: World, seller_id: str) -> dict[str, str]:
    """Three completions and a counted cancellation (75 %), two orders on time and one late
    (66.67 %), one answer in time and one missed deadline (50 %), reviews of 5 and 2 stars
    (3.5: 62.5 %) and a 1-star review support removed."""
    at = await now(w)
    orders = {name: unique(name) for name in ("done1", "done2", "done3", "cancelled", "late")}
    buyer = unique("buyer")
    for order_id in orders.values():
        await emit(w, "order.placed", core_event("order.placed", order_id, buyer, seller_id), at=at)
    for name in ("done1", "done2"):
        await emit(w, "order.delivered", core_event("order.delivered", orders[name], buyer, seller_id,
                                                    delivery_number=1, auto_complete_at=at, late=False), at=at)
    await emit(w, "order.late", core_event("order.late", orders["late"], buyer, seller_id, due_at=at), at=at)
    for name in ("done1", "done2", "done3"):
        await emit(w, "order.completed", core_event("order.completed", orders[name], buyer, seller_id,
                                                    cause="accepted"), at=at)
    await emit(w, "order.cancelled", core_event("order.cancelled", orders["cancelled"], buyer, seller_id,
                                                cause="support", previous_state="in_progress",
                                                requested_by="support"), at=at)
    iso = at.isoformat()
    await emit(w, "dispute.request_answered", dispute_event(
        orders["done1"], buyer, seller_id, kind="update_request", to_party="seller", answer="replied",
        answered_at=iso, answer_by=iso), at=at)
    await emit(w, "dispute.request_expired", dispute_event(
        orders["late"], buyer, seller_id, kind="update_request", to_party="seller", outcome="unanswered",
        silent_party="seller", answer_by=iso, expired_at=iso, explanation="the seller did not answer"), at=at)
    await emit(w, "dispute.request_expired", dispute_event(  # the buyer's silence is not the seller's
        orders["done2"], buyer, seller_id, kind="extension_request", to_party="buyer", outcome="accepted",
        silent_party="buyer", answer_by=iso, expired_at=iso, explanation="silence accepts"), at=at)
    for rating, name in ((5, "done1"), (2, "cancelled"), (1, "late")):
        await emit(w, "review.published", {
            "review_id": f"review-{name}-{seller_id}", "order_id": orders[name], "buyer_id": buyer,
            "seller_id": seller_id, "rating": rating, "text": "...", "label": "cancelled_order",
            "published_at": iso, "window_closes_at": (at + timedelta(days=5)).isoformat(), "rule": "REV-4"}, at=at)
    await emit(w, "review.removed", {
        "review_id": f"review-late-{seller_id}", "order_id": orders["late"], "buyer_id": buyer,
        "seller_id": seller_id, "rating": 1, "reason": "insults", "removed_by": {"id": "support-1", "role": "support"},
        "removed_at": iso, "addressed_to": buyer, "statement": "removed: insults", "rule": "REV-8"}, at=at)
    return orders


def score_history_recorded(found: dict[str, Any]) -> bool:
    return (len(lines(found)) == 4 and factor(found, "on_time_delivery")["data_points"] == 3
            and factor(found, "answers_within_deadline")["data_points"] == 2
            and sorted(i["rating"] for i in factor(found, "review_rating")["items"]) == [2, 5])


async def test_MET_4_success_score_shows_what_each_factor_contributes(world: World) -> None:
    w = world
    seller_id = unique("seller-score")
    await publish_score_history(w, seller_id)
    found = await figures_when(w.seller(seller_id), seller_id, score_history_recorded, "the whole history")
    score = found["success_score"]
    expected = {  # name: (value %, policy weight, contribution)
        "completion_rate": (75.0, 0.4, 30.0),
        "on_time_delivery": (66.67, 0.3, 20.0),
        "answers_within_deadline": (50.0, 0.15, 7.5),
        "review_rating": (62.5, 0.15, 9.38),
    }
    got = {f["name"]: (f["value"], f["weight"], f["contribution"]) for f in score["factors"]}
    assert got == expected
    assert score["rule"] == "MET-4" and score["score"] == 66.88  # 30 + 20 + 7.5 + 9.375
    on_time = factor(found, "on_time_delivery")
    assert sorted(i["good"] for i in on_time["items"]) == [False, True, True]
    answers = factor(found, "answers_within_deadline")
    assert sorted((i["good"], i["detail"]) for i in answers["items"]) == [
        (False, "update_request: left unanswered until its deadline"), (True, "update_request: answered in time")]
    assert sorted(i["rating"] for i in factor(found, "review_rating")["items"]) == [2, 5]  # the removed one is out


async def test_MET_4_a_factor_without_data_is_left_out_and_its_weight_shared(world: World) -> None:
    w = world
    seller_id = unique("seller-sparse")
    await complete_over_http(w, unique("buyer"), seller_id)
    cancelled = await place_over_http(w, unique("buyer"), seller_id)
    await w.support.post(f"/orders/{cancelled}/cancellation", {"reason": "no show"}, expect=200)
    found = await figures_when(w.seller(seller_id), seller_id, lambda f: len(lines(f)) == 2, "two orders")
    # Completion 50 % (weight 0.4) and on-time 100 % (0.3, one delivery); no request, no review.
    by_name = {f["name"]: f for f in found["success_score"]["factors"]}
    assert by_name["answers_within_deadline"]["value"] is None and by_name["review_rating"]["value"] is None
    assert by_name["review_rating"]["contribution"] == 0 and by_name["review_rating"]["share"] == 0
    assert "left out" in by_name["review_rating"]["explanation"]
    assert (by_name["completion_rate"]["share"], by_name["on_time_delivery"]["share"]) == (0.5714, 0.4286)
    assert found["success_score"]["score"] == round(4 / 7 * 50 + 3 / 7 * 100, 2)


async def test_MET_4_the_weights_are_policy() -> None:
    weights = {"completion_rate": 1.0, "on_time_delivery": 0.0, "answers_within_deadline": 0.0,
               "review_rating": 1.0}
    async with Harness(plugins=ONLY_METRICS, policy={"metrics": {"success_score_weights": weights}}) as h:
        service = await h.start_instance()
        w = World(h, service, h.client(service, "admin-1", "admin"), h.client(service, "support-1", "support"))
        seller_id = unique("seller-policy")
        await publish_score_history(w, seller_id)
        found = await figures_when(w.seller(seller_id), seller_id, score_history_recorded, "the whole history")
        got = {f["name"]: (f["weight"], f["share"], f["contribution"]) for f in found["success_score"]["factors"]}
        assert got == {"completion_rate": (1.0, 0.5, 37.5), "on_time_delivery": (0.0, 0.0, 0.0),
                       "answers_within_deadline": (0.0, 0.0, 0.0), "review_rating": (1.0, 0.5, 31.25)}
        assert found["success_score"]["score"] == 68.75


# ---------------------------------------------------------------- rebuild from the event log


def rescenter(w: World, *args: str) -> subprocess.CompletedProcess[str]:
    """`rescenter ...` as an operator runs it, against this test's database and test clock."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESCENTER_")}
    env.update({"RESCENTER_STORE__DATABASE": w.h.settings.store.database, "RESCENTER_STORE__URL":
                w.h.settings.store.url, "RESCENTER_CLOCK__MODE": "test", "RESCENTER_SERVICE__ENVIRONMENT": "test"})
    return subprocess.run([sys.executable, "-m", "core.cli", "--log-level", "WARNING", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


async def publish_history(w: World, seller_id: str, orders: int) -> int:
    """A few hundred orders over the last 90 days: completed (some after a partial refund,
    some late), cancelled by support, by chargeback, by the buyer before requirements, by
    mutual agreement with or without a new order within 14 days, flagged by support."""
    end = await now(w)
    start = end - timedelta(days=90)
    step = (end - start) / orders
    sends = []
    for n in range(orders):
        at = start + step * n
        order_id, buyer = f"hist-{seller_id}-{n:04d}", f"buyer-{n % 40}"

        def event(type_: str, when: datetime, order_id: str = order_id, buyer: str = buyer,
                  **fields: Any) -> tuple[str, dict[str, Any], datetime]:
            return type_, core_event(type_, order_id, buyer, seller_id, **fields), when

        sends.append(event("order.placed", at))
        done = at + timedelta(hours=5)
        kind = n % 8
        if kind in (0, 1, 2, 3):
            sends.append(event("order.delivered", at + timedelta(hours=4), delivery_number=1,
                               auto_complete_at=at + timedelta(days=3), late=(kind == 3)))
            sends.append(event("order.completed", done, cause="accepted"))
            if kind == 2:
                sends.append(("dispute.refund_issued", dispute_event(
                    order_id, buyer, seller_id, kind="partial_refund", to_party="buyer", rule="DSP-3",
                    amount={"amount": "10.00", "currency": "EUR"}, accepted_at=done.isoformat()), done))
        elif kind == 4:
            sends.append(event("order.cancelled", done, cause="support", previous_state="in_progress",
                               requested_by="support"))
        elif kind == 5:
            sends.append(event("order.cancelled", done, cause="mutual_agreement",
                               previous_state="awaiting_requirements", requested_by="buyer"))
        elif kind == 6:
            sends.append(event("order.cancelled", done, cause="mutual_agreement", previous_state="in_progress",
                               requested_by="seller"))
        else:
            sends.append(event("order.cancelled", done, cause="chargeback", previous_state="in_progress",
                               requested_by="payments"))
            if n % 16 == 15:
                sends.append(("metrics.cancellation_flag_set", {
                    "order_id": order_id, "buyer_id": buyer, "seller_id": seller_id, "flag": "fraud",
                    "note": "stolen card", "revision": 1, "actor": {"id": "support-1", "role": "support"},
                    "rule": "MET-2"}, done + timedelta(hours=1)))
    await emit_all(w, sends)
    return len(sends)


async def test_MET_1_to_MET_4_rebuilding_from_the_event_log_gives_the_live_figures(world: World) -> None:
    w = world
    seller_id = unique("seller-history")
    seller = w.seller(seller_id)
    total = 320
    sent = await publish_history(w, seller_id, total)
    await history_handled(w, sent, seller_id)
    live = await figures(seller, seller_id)
    reasons = {line["reason"] for line in live["completion_rate"]["orders"]}
    assert {"completed", "cancelled_by_support", "chargeback", "buyer_cancelled_awaiting_requirements",
            "mutual_cancellation", "mutual_cancellation_then_new_order", "flagged_fraud"} <= reasons
    assert 100 < len(live["completion_rate"]["orders"]) < total  # the 60-day window keeps only the recent ones

    # Folded from the event log for the same instant: the same figures, order by order, reason by reason.
    as_of = await figures(seller, seller_id, at=live["at"])
    assert {**as_of, "source": "live"} == live

    checked = await asyncio.to_thread(rescenter, w, "metrics", "rebuild", "--check", "--seller", seller_id)
    assert checked.returncode == 0, checked.stderr
    assert f"{seller_id}: same ({total} orders" in checked.stdout

    # A live document that missed an event (say a crash between the two writes) is found and repaired.
    lost = f"hist-{seller_id}-{total - 1:04d}"
    await w.service.services.store.collection("metrics_orders").update_one(
        {"_id": lost}, {"$unset": {"cancelled_at": ""}})
    assert lost not in lines(await figures(seller, seller_id))
    checked = await asyncio.to_thread(rescenter, w, "metrics", "rebuild", "--check", "--seller", seller_id)
    assert checked.returncode == 1 and f"order {lost}.cancelled_at: live None" in checked.stdout
    rebuilt = await asyncio.to_thread(rescenter, w, "metrics", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"{seller_id}: rebuilt 1 orders" in rebuilt.stdout and ", 1 rebuilt" in rebuilt.stdout
    assert await figures(seller, seller_id) == live


# ---------------------------------------------------------------- the seller's read model


class RecordingCollection:
    """A collection that notes the filter of every `find` before passing it on."""

    def __init__(self, collection: Any, filters: list[dict[str, Any]]) -> None:
        self.collection = collection
        self.filters = filters

    def find(self, filter: dict[str, Any], *args: Any, **kwargs: Any) -> Any:  # noqa: A002
        self.filters.append(filter)
        return self.collection.find(filter, *args, **kwargs)


async def test_MET_1_live_figures_read_the_sellers_recent_orders_by_key_never_a_scan(world: World) -> None:
    """The live figures find the seller's orders through its months (`metrics_sellers`), then
    read those orders by `_id`: no filter on anything else, so a store that uses only its
    `_id` index (the embedded one) reads the window's orders, not every stored order."""
    from plugins.metrics.repository import MetricsRepository

    w = world
    seller_id, other_seller = unique("seller-by-key"), unique("seller-other")
    total = 48
    sent = await publish_history(w, seller_id, total) + await publish_history(w, other_seller, 16)
    await history_handled(w, sent, seller_id, other_seller)
    assert w.service.services is not None
    store = w.service.services.store
    at, window = await now(w), w.service.services.settings.policy.metrics.completion_window

    repository = MetricsRepository(store)
    filters: list[dict[str, Any]] = []
    for name, value in list(vars(repository).items()):
        if isinstance(value, AsyncCollection):
            setattr(repository, name, RecordingCollection(value, filters))
    read = await repository.live_orders(seller_id, at, window)

    assert filters and all(list(f) == ["_id"] and list(f["_id"]) == ["$in"] for f in filters), filters
    # The same orders as a scan of the projection would give: the seller's, with a fact in the window.
    scanned = await store.collection("metrics_orders").find(
        {"seller_id": seller_id, "last_at": {"$gt": at - window}}).to_list()
    assert sorted(read) == sorted(d["_id"] for d in scanned) and 0 < len(read) < total
    asked = [key for f in filters for key in f["_id"]["$in"]]
    month_ids = [key for key in asked if "|" in key]
    # The months of the window (60 days touch 3 of them), this seller's only ...
    assert 2 <= len(month_ids) <= 3 and all(key.startswith(f"{seller_id}|") for key in month_ids)
    # ... and of the orders, only the window's.
    assert sorted(key for key in asked if "|" not in key) == sorted(read)
    months = await store.collection("metrics_sellers").find({"seller_id": seller_id}).to_list()
    assert months and all(m["_id"] == f"{seller_id}|{m['month']}" for m in months)


async def test_MET_1_rebuild_fills_the_sellers_months_the_live_figures_read(world: World) -> None:
    """Lost (or never written, before an upgrade) entries of the seller's months hide orders from
    the live figures; `rescenter metrics rebuild` finds them in the event log and puts them back."""
    w = world
    seller_id = unique("seller-months")
    seller = w.seller(seller_id)
    sent = await publish_history(w, seller_id, 40)
    await history_handled(w, sent, seller_id)
    live = await figures(seller, seller_id)
    assert live["completion_rate"]["orders"]
    assert w.service.services is not None
    months = w.service.services.store.collection("metrics_sellers")
    await months.delete_many({"seller_id": seller_id})
    emptied = await figures(seller, seller_id)
    assert emptied["completion_rate"]["orders"] == [] and emptied["completion_rate"]["percent"] is None

    checked = await asyncio.to_thread(rescenter, w, "metrics", "rebuild", "--check", "--seller", seller_id)
    assert checked.returncode == 1 and f"month {seller_id}|" in checked.stdout and "missing" in checked.stdout
    rebuilt = await asyncio.to_thread(rescenter, w, "metrics", "rebuild", "--seller", seller_id)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"{seller_id}: rebuilt" in rebuilt.stdout and "month entries" in rebuilt.stdout
    assert await figures(seller, seller_id) == live
    again = await asyncio.to_thread(rescenter, w, "metrics", "rebuild", "--check", "--seller", seller_id)
    assert again.returncode == 0 and f"{seller_id}: same" in again.stdout
