"""The outbox (ORD-6): no event is lost when an instance dies between its write
and its publish, and no event goes out for a change that was not stored."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import pytest
from pymongo.errors import PyMongoError

from tests.harness import ORDER, Harness


async def test_ORD_6_event_survives_a_crash_between_write_and_publish() -> None:
    async with Harness() as h:
        a = await h.start_instance()
        assert a.services is not None
        buyer = h.client(a, "buyer-1", "buyer")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await h.probe.wait_for("order.placed", lambda m: m.subject == order_id)

        # From now on instance A writes but never gets its publish out: it dies in between.
        reached, released = asyncio.Event(), asyncio.Event()

        async def publish_then_die(envelope: Any, **kwargs: Any) -> None:
            reached.set()
            await released.wait()
            raise ConnectionResetError("the process is gone")

        a.services.bus.publish = publish_then_die  # type: ignore[method-assign]
        request = asyncio.create_task(buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}))
        await asyncio.wait_for(reached.wait(), 5)

        stored = await a.services.orders.collection.find_one({"_id": order_id})
        assert stored["state"] == "in_progress"
        assert [e["kind"] for e in stored["_outbox"]] == ["publish", "schedule"]
        await a.kill()
        released.set()
        with contextlib.suppress(Exception):
            await request
        assert h.probe.of_type("order.requirements_submitted", order_id) == []

        b = await h.start_instance()  # B's outbox sweeper finds what A left behind
        assert b.services is not None
        await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)
        await h.probe.settle(0.5)
        [event] = h.probe.of_type("order.requirements_submitted", order_id)

        order = await b.services.orders.collection.find_one({"_id": order_id})
        assert order["_outbox"] == [] and "_outbox_due" not in order
        assert order["state"] == "in_progress" and order["_version"] == 2
        assert [e["event_id"] for e in order["timeline"]][-1] == event.id
        assert datetime.fromisoformat(event.data["due_at"]) == order["due_at"]
        # The deadline that rode in the same write was scheduled too (ORD-2).
        admin = h.client(b, "admin-1", "admin")
        deadlines = (await admin.get(f"/orders/{order_id}/deadlines", expect=200))["deadlines"]
        assert [(d["kind"], d["state"]) for d in deadlines] == [("order.late", "pending")]
        assert datetime.fromisoformat(deadlines[0]["due_at"]) == order["due_at"]


async def test_ORD_6_refused_command_publishes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
        await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)

        problem = await buyer.post(f"/orders/{order_id}/acceptance", expect=409)  # nothing delivered yet
        assert problem["rule"] == "ORD-1"
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "again"}, expect=409)

        await h.probe.settle(0.5)
        assert [m.type for m in h.probe.messages if m.subject == order_id] == [
            "order.placed", "order.requirements_submitted"]
        order = await service.services.orders.collection.find_one({"_id": order_id})
        assert order["_version"] == 2 and order["_outbox"] == [] and order["requirements"] == "x"


async def test_ORD_6_write_that_fails_publishes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        assert service.services is not None
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await h.probe.wait_for("order.placed", lambda m: m.subject == order_id)

        collection = service.services.orders.batcher.collection  # where the order's writes go
        real = collection.bulk_write

        async def failing_write(*args: Any, **kwargs: Any) -> Any:
            raise PyMongoError("the database refused the write")

        collection.bulk_write = failing_write  # type: ignore[method-assign]
        try:
            await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"})
            assert buyer.last_status == 500
        finally:
            collection.bulk_write = real  # type: ignore[method-assign]

        await h.probe.settle(0.5)
        assert [m.type for m in h.probe.messages if m.subject == order_id] == ["order.placed"]
        order = await buyer.get(f"/orders/{order_id}", expect=200)
        assert order["state"] == "awaiting_requirements" and order["version"] == 1
        # And the sweeper has nothing to publish later either.
        assert await service.services.outbox.sweep_once() == 0



# Each instance has its own connection pool: the version guard, checked by the
# server in the same operation as the write, is what lets only one win.
@pytest.mark.parametrize("instances", [pytest.param(1, id="one-instance"),
                                       pytest.param(2, id="two-instances")])
async def test_ORD_6_concurrent_commands_on_one_order_change_it_once(instances: int) -> None:
    """A buyer who clicks "accept" three times at once (two tabs, maybe two instances): one wins."""
    async with Harness() as h:
        services = [await h.start_instance(service={"instance_id": f"i{n}"}) for n in range(instances)]
        buyers = [h.client(services[n % instances], "buyer-1", "buyer") for n in range(3)]
        seller = h.client(services[0], "seller-1", "seller")

        async def delivered_order() -> str:
            order_id = (await buyers[0].post("/orders", ORDER, expect=201))["id"]
            await buyers[0].post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
            await seller.post(f"/orders/{order_id}/deliveries", {"message": "v1"}, expect=200)
            return order_id

        order_ids = await asyncio.gather(*(delivered_order() for _ in range(8)))

        async def accept(client: Any, order_id: str) -> int:
            async with client.session.post(f"{client.base}/orders/{order_id}/acceptance",
                                           headers=client._headers()) as response:
                return response.status

        statuses = await asyncio.gather(*(accept(c, o) for o in order_ids for c in buyers))
        per_order = [sorted(statuses[i * 3:(i + 1) * 3]) for i in range(len(order_ids))]
        assert per_order == [[200, 409, 409]] * len(order_ids)

        await h.probe.wait_for("order.completed", lambda m: m.subject in order_ids, count=len(order_ids))
        await h.probe.settle(0.5)
        completed = [m.subject for m in h.probe.messages if m.type == "order.completed"]
        assert sorted(completed) == sorted(order_ids)
        for order_id in order_ids:
            timeline = (await buyers[0].get(f"/orders/{order_id}/timeline", expect=200))["entries"]
            assert [e["type"] for e in timeline].count("order.completed") == 1
            assert [e["seq"] for e in timeline] == list(range(len(timeline)))
