"""Durable deadlines with two instances on one database (ORD-2): each deadline
is claimed and fired once, and each order's `order.late` is published once."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from core.scheduler import Deadline
from core.service import Service
from tests.harness import ORDER, Harness

ORDERS = 20


async def _orders_in_progress(h: Harness, a: Service, b: Service) -> dict[str, datetime]:
    """ORDERS orders, placed and started through both instances, due over five days."""
    clients = [h.client(a, "buyer-1", "buyer"), h.client(b, "buyer-1", "buyer")]

    async def one(i: int) -> tuple[str, datetime]:
        client = clients[i % 2]
        order = await client.post("/orders", {**ORDER, "delivery_days": 1 + i % 5}, expect=201)
        started = await client.post(f"/orders/{order['id']}/requirements", {"requirements": f"r{i}"},
                                    expect=200)
        return order["id"], datetime.fromisoformat(started["due_at"])

    return dict(await asyncio.gather(*(one(i) for i in range(ORDERS))))


async def _assert_each_late_once(h: Harness, a: Service, due: dict[str, datetime]) -> None:
    assert a.services is not None
    await h.probe.wait_for("order.late", lambda m: m.subject in due, count=ORDERS, timeout=20)
    await h.probe.settle(0.5)
    late = Counter(m.subject for m in h.probe.messages if m.type == "order.late" and m.subject in due)
    assert late == Counter(dict.fromkeys(due, 1))

    deadlines = [d async for d in a.services.scheduler.collection.find({"kind": "order.late"})]
    assert sorted(d["subject"] for d in deadlines) == sorted(due)
    assert {d["state"] for d in deadlines} == {"done"}
    assert [d["subject"] for d in deadlines if d["attempts"] != 1] == []  # claimed once, fired once
    assert all(d["due_at"] == due[d["subject"]] for d in deadlines)

    orders = [o async for o in a.services.orders.collection.find({"_id": {"$in": list(due)}})]
    assert all(o["late"] for o in orders)
    assert all([e["type"] for e in o["timeline"]].count("order.late") == 1 for o in orders)


async def test_ORD_2_two_instances_fire_each_deadline_once_when_an_admin_advances_the_clock() -> None:
    async with Harness() as h:
        a = await h.start_instance(service={"instance_id": "a"})
        b = await h.start_instance(service={"instance_id": "b"})
        due = await _orders_in_progress(h, a, b)
        assert len(set(due.values())) == 5  # five distinct instants, walked in order

        admin = h.client(a, "admin-1", "admin")
        # A walks the deadlines one instant at a time while B's scheduler loop follows the clock.
        moved = await admin.post("/admin/clock/advance", {"by": "P6D"}, expect=200)
        fired_by_a = [f["id"] for f in moved["fired"]]
        assert len(fired_by_a) == len(set(fired_by_a))
        await _assert_each_late_once(h, a, due)


async def test_ORD_2_two_instances_racing_scheduler_loops_fire_each_deadline_once() -> None:
    async with Harness() as h:
        a = await h.start_instance(service={"instance_id": "a"})
        b = await h.start_instance(service={"instance_id": "b"})
        assert a.services is not None and b.services is not None
        due = await _orders_in_progress(h, a, b)

        clock_a: Any = a.services.clock
        clock_b: Any = b.services.clock
        await clock_a.set(max(due.values()) + timedelta(minutes=1))
        await clock_b.refresh()
        # Both instances' loops are running; add two explicit passes each, all at once.
        passes = [a.services.scheduler.fire_due(), b.services.scheduler.fire_due(),
                  a.services.scheduler.fire_due(), b.services.scheduler.fire_due()]
        fired = await asyncio.gather(*passes)
        assert sum(fired) <= ORDERS
        await _assert_each_late_once(h, a, due)


async def test_ORD_2_a_deadline_fires_when_due_without_waiting_for_a_scan_of_the_collection() -> None:
    """The instance that scheduled a deadline knows when it falls due: with scans a
    minute apart, moving the clock past it still fires it within the poll interval."""
    async with Harness() as h:
        a = await h.start_instance(scheduler={"scan_interval": timedelta(seconds=60)})
        assert a.services is not None
        buyer = h.client(a, "buyer-1", "buyer")
        order = await buyer.post("/orders", ORDER, expect=201)
        started = await buyer.post(f"/orders/{order['id']}/requirements", {"requirements": "r"}, expect=200)
        due_at = datetime.fromisoformat(started["due_at"])

        clock: Any = a.services.clock
        await clock.set(due_at - timedelta(seconds=1))  # no advance(): only the loop can fire it
        await asyncio.sleep(0.6)  # three polls
        assert h.probe.of_type("order.late", order["id"]) == []
        await clock.set(due_at)
        [late] = await h.probe.wait_for("order.late", lambda m: m.subject == order["id"], timeout=3)
        assert late.data["due_at"] == started["due_at"].replace("+00:00", "Z")


async def test_ORD_2_a_deadline_cancelled_while_the_query_read_it_is_not_fired() -> None:
    """The embedded store reads without a snapshot: a query for pending deadlines can match
    a document on its older version and return the newer one, already cancelled. Claimed
    with the state it was read in, that deadline fired (an auto-completion days early, seen
    as a no-op on a completed order in tests/test_outbox_duplicates.py)."""
    async with Harness() as h:
        a = await h.start_instance()
        assert a.services is not None
        scheduler = a.services.scheduler
        buyer = h.client(a, "buyer-1", "buyer")
        order = await buyer.post("/orders", ORDER, expect=201)
        await buyer.post(f"/orders/{order['id']}/requirements", {"requirements": "r"}, expect=200)
        [late] = await scheduler.for_subject(order["id"])
        await scheduler.cancel(late["_id"])
        cancelled = await scheduler.get(late["_id"])
        assert cancelled is not None and cancelled["state"] == "cancelled"

        real_find = scheduler.collection.find

        def find_returning_the_newer_version(query: Any, *args: Any, **kwargs: Any) -> Any:
            cursor = real_find(query, *args, **kwargs)
            if "$or" in query:  # the claim query: as if it had matched the pending version

                class Cursor:
                    def sort(self, *a: Any, **k: Any) -> Cursor:
                        return self

                    def limit(self, *a: Any, **k: Any) -> Cursor:
                        return self

                    async def to_list(self) -> list[dict[str, Any]]:
                        return [cancelled]

                return Cursor()
            return cursor

        scheduler.collection.find = find_returning_the_newer_version  # type: ignore[method-assign]
        try:
            assert await scheduler.claim_next(datetime.fromisoformat(order["placed_at"])) is None
        finally:
            scheduler.collection.find = real_find  # type: ignore[method-assign]
        assert (await scheduler.get(late["_id"]))["state"] == "cancelled"
        await h.probe.settle(0.3)
        assert h.probe.of_type("order.late", order["id"]) == []


async def test_ORD_4_a_deadline_cancelled_before_it_was_scheduled_does_not_fire() -> None:
    """The effects of two changes may be applied out of order after a fault (the first
    writer's flush failed and the outbox sweeper applies it later): the acceptance's cancel,
    then the delivery's schedule of the auto-completion. The schedule must not revive it."""
    async with Harness() as h:
        a = await h.start_instance()
        assert a.services is not None
        scheduler = a.services.scheduler
        now = a.services.clock.now()
        await scheduler.cancel("late-schedule")
        await scheduler.schedule(Deadline(id="late-schedule", owner="core", kind="order.auto_complete",
                                          subject="no-such-order", due_at=now - timedelta(days=1)))
        await scheduler.cancel("cancelled-twice")  # twice: stays cancelled
        await scheduler.cancel("cancelled-twice")
        record = await scheduler.get("late-schedule")
        assert record is not None and record["state"] == "cancelled", record
        assert (await scheduler.get("cancelled-twice") or {}).get("state") == "cancelled"
        assert await scheduler.claim_next(now) is None
