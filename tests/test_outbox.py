"""The outbox (ORD-6): no event is lost when an instance dies between its write
and its publish, and no event goes out for a change that was not stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from core.clock import utcnow
from core.messages import Actor, Envelope, PluginSwitched, make_envelope
from core.outbox import Effect
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


# ---------------------------------------------------------------- no event twice without a fault

SCRATCH = "outbox_scratch"  # a collection of this test's own, written the way plugins write theirs


def _switched(n: int) -> Envelope:
    """An event nobody consumes (instances poll the plugin states): only the tap sees it."""
    return make_envelope("plugin.switched", PluginSwitched(plugin=f"scratch-{n}", enabled=True,
                                                           actor=Actor(id="tests", role="admin")),
                         subject=f"plugin:scratch-{n}", time=utcnow())


async def _stage(service: Any, event: Envelope | None) -> dict[str, Any]:
    """One writer's change to the scratch document, with its event, as `update_guarded` does it."""
    outbox = service.services.outbox
    effects = [Effect.publish(event)] if event else []
    return await service.services.store.collection(SCRATCH).find_one_and_update(
        {"_id": "doc"}, outbox.stage({"$inc": {"_version": 1}}, effects),
        return_document=ReturnDocument.AFTER)


async def test_ORD_6_a_writer_leaves_a_live_writers_events_to_it_and_publishes_its_own_after_them() -> None:
    """Two instances change one document in turn; the second reads the first's event still
    pending. Before: it published that event too (a duplicate on every such race)."""
    # A lease longer than the harness's 1 s: A must stay a live writer while B's steps run,
    # however slow a loaded machine makes them.
    async with Harness(outbox={"lease": timedelta(seconds=3)}) as h:
        a, b = await h.start_instance(), await h.start_instance()
        assert a.services is not None and b.services is not None
        for service in (a, b):
            service.services.outbox.register(SCRATCH)
        await a.services.store.collection(SCRATCH).insert_one({"_id": "doc", "_version": 0, "_outbox": []})

        # A writes e1 and is slow to publish it.
        reached, released = asyncio.Event(), asyncio.Event()
        real_publish = a.services.bus.publish

        async def slow_publish(envelope: Any, **kwargs: Any) -> None:
            reached.set()
            await released.wait()
            await real_publish(envelope, **kwargs)

        a.services.bus.publish = slow_publish  # type: ignore[method-assign]
        e1, e2 = _switched(1), _switched(2)
        flush_a = asyncio.create_task(a.services.outbox.flush(SCRATCH, await _stage(a, e1)))
        await asyncio.wait_for(reached.wait(), 5)

        # B writes e2 meanwhile: the document B gets back holds e1 too.
        written_b = await _stage(b, e2)
        assert [e["id"] for e in written_b["_outbox"]] == [e1.id, e2.id]
        flush_b = asyncio.create_task(b.services.outbox.flush(SCRATCH, written_b))
        await asyncio.sleep(0.3)
        assert [m.id for m in h.probe.messages] == []  # B neither repeats e1 nor overtakes it

        released.set()
        await asyncio.wait_for(asyncio.gather(flush_a, flush_b), 5)
        await h.probe.settle(0.3)
        assert [m.id for m in h.probe.messages] == [e1.id, e2.id]
        stored = await a.services.store.collection(SCRATCH).find_one({"_id": "doc"})
        assert stored["_outbox"] == [] and "_outbox_due" not in stored

        # A write that stages nothing (a redelivery remembered, say) publishes nothing of A's.
        a.services.bus.publish = slow_publish  # type: ignore[method-assign]
        reached.clear()
        released.clear()
        e5 = _switched(5)
        flush_a = asyncio.create_task(a.services.outbox.flush(SCRATCH, await _stage(a, e5)))
        await asyncio.wait_for(reached.wait(), 5)
        written_b = await _stage(b, None)
        assert [e["id"] for e in written_b["_outbox"]] == [e5.id]
        flush_b = asyncio.create_task(b.services.outbox.flush(SCRATCH, written_b))
        await asyncio.sleep(0.3)
        released.set()
        await asyncio.wait_for(asyncio.gather(flush_a, flush_b), 5)
        await h.probe.settle(0.3)
        assert [m.id for m in h.probe.messages] == [e1.id, e2.id, e5.id]

        # At least once still: A writes e3 and dies before publishing; B's next write publishes
        # e3 (once A's lease has run out: A might only be slow), then its own e4.
        a.services.bus.publish = real_publish  # type: ignore[method-assign]
        e3, e4 = _switched(3), _switched(4)
        await _stage(a, e3)
        await a.kill()
        started = time.monotonic()
        await asyncio.wait_for(b.services.outbox.flush(SCRATCH, await _stage(b, e4)), 5)
        assert time.monotonic() - started >= h.settings.outbox.lease.total_seconds() - 0.1
        await h.probe.settle(0.3)
        print(f"events on the tap: {[m.subject for m in h.probe.messages]}")
        assert [m.id for m in h.probe.messages] == [e1.id, e2.id, e5.id, e3.id, e4.id]


async def test_ORD_6_the_sweeper_leaves_a_document_its_own_instance_is_still_flushing() -> None:
    """A writer slower than its lease: the sweeper of the same instance used to claim the
    document, wait for the writer, then publish what the writer had just published."""
    async with Harness() as h:  # outbox lease 1 s, sweep every 0.2 s
        a = await h.start_instance()
        assert a.services is not None
        a.services.outbox.register(SCRATCH)
        await a.services.store.collection(SCRATCH).insert_one({"_id": "doc", "_version": 0, "_outbox": []})
        real_publish = a.services.bus.publish
        slow = h.settings.outbox.lease.total_seconds() + 0.6
        calls = 0

        async def first_publish_slow(envelope: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(slow)
            await real_publish(envelope, **kwargs)

        a.services.bus.publish = first_publish_slow  # type: ignore[method-assign]
        event = _switched(1)
        await a.services.outbox.flush(SCRATCH, await _stage(a, event))
        await asyncio.sleep(0.6)  # a few more sweeps
        await h.probe.settle(0.3)
        assert [m.id for m in h.probe.messages] == [event.id]
        assert calls == 1
        assert (a.services.metrics.registry.get_sample_value("rescenter_outbox_swept_total") or 0) == 0


def _full_sweeps(service: Any) -> float:
    return service.services.metrics.registry.get_sample_value("rescenter_outbox_full_sweeps_total") or 0.0


async def test_ORD_6_a_flush_that_failed_is_retried_by_its_instance_without_scanning_the_store() -> None:
    """The broker refused a publish after the write: the instance that wrote retries that
    document by `_id` once its lease ends. No full sweep (a scan on the embedded store) runs
    for it: only the one at start-up."""
    async with Harness() as h:  # outbox lease 1 s, sweep round every 0.2 s, full sweep every minute
        a = await h.start_instance()
        assert a.services is not None
        buyer = h.client(a, "buyer-1", "buyer")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await h.probe.wait_for("order.placed", lambda m: m.subject == order_id)
        real_publish = a.services.bus.publish
        refused = 0

        async def broker_refuses_once(envelope: Any, **kwargs: Any) -> None:
            nonlocal refused
            if envelope.type == "order.requirements_submitted" and not refused:
                refused += 1
                raise ConnectionResetError("the broker went away")
            await real_publish(envelope, **kwargs)

        a.services.bus.publish = broker_refuses_once  # type: ignore[method-assign]
        started = time.monotonic()
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
        [event] = await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)
        waited = time.monotonic() - started
        print(f"published {waited:.1f} s after the refused publish (lease {h.settings.outbox.lease})")
        assert refused == 1 and waited >= h.settings.outbox.lease.total_seconds() * 0.9
        for _ in range(50):  # published, then cleared
            order = await a.services.orders.collection.find_one({"_id": order_id})
            if not order["_outbox"]:
                break
            await asyncio.sleep(0.05)
        assert order["_outbox"] == [] and order["timeline"][-1]["event_id"] == event.id
        await h.probe.settle(0.5)
        assert len(h.probe.of_type("order.requirements_submitted", order_id)) == 1
        assert _full_sweeps(a) == 1  # the start-up one


async def test_ORD_6_a_running_instance_sweeps_what_a_dead_one_left_once_its_record_runs_out() -> None:
    async with Harness() as h:
        a, b = await h.start_instance(), await h.start_instance()
        assert a.services is not None and b.services is not None
        buyer = h.client(a, "buyer-1", "buyer")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await h.probe.wait_for("order.placed", lambda m: m.subject == order_id)
        reached = asyncio.Event()

        async def die_before_publishing(envelope: Any, **kwargs: Any) -> None:
            reached.set()
            await asyncio.Event().wait()  # never returns: the process is gone

        a.services.bus.publish = die_before_publishing  # type: ignore[method-assign]
        request = asyncio.create_task(buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}))
        await asyncio.wait_for(reached.wait(), 5)
        sweeps_before = _full_sweeps(b)
        await a.kill()
        request.cancel()
        with contextlib.suppress(BaseException):
            await request
        await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id, timeout=10)
        assert _full_sweeps(b) == sweeps_before + 1  # for the dead instance, not on a timer
        assert await b.services.store.collection("outbox_instances").count_documents({}) == 1  # b's own


async def test_ORD_4_an_event_goes_out_after_the_deadlines_its_change_moved() -> None:
    """Whoever acts on `order.delivered` (a buyer accepting) must find the auto-completion
    scheduled, or its cancellation finds nothing and the deadline is scheduled after it:
    the deadline changes of a write are applied before its events are published."""
    async with Harness() as h:
        a = await h.start_instance()
        assert a.services is not None
        scheduler = a.services.scheduler
        buyer, seller = h.client(a, "buyer-1", "buyer"), h.client(a, "seller-1", "seller")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
        real_publish = a.services.bus.publish
        seen: dict[str, list[tuple[str, str]]] = {}

        async def publish_noting_deadlines(envelope: Any, **kwargs: Any) -> None:
            if envelope.subject == order_id:
                seen[envelope.type] = [(d["kind"], d["state"]) for d in await scheduler.for_subject(order_id)]
            await real_publish(envelope, **kwargs)

        a.services.bus.publish = publish_noting_deadlines  # type: ignore[method-assign]
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "done"}, expect=200)
        await h.probe.wait_for("order.delivered", lambda m: m.subject == order_id)
        assert sorted(seen["order.delivered"]) == [("order.auto_complete", "pending"), ("order.late", "cancelled")]
        await buyer.post(f"/orders/{order_id}/acceptance", {}, expect=200)
        await h.probe.wait_for("order.completed", lambda m: m.subject == order_id)
        assert sorted(seen["order.completed"]) == [("order.auto_complete", "cancelled"), ("order.late", "cancelled")]


async def test_ORD_6_a_redelivered_command_publishes_what_its_cut_off_first_attempt_left() -> None:
    """The first attempt stored its change, then its task was cancelled before the flush (the
    consumer's channel closed under it): no instance died and the flush never failed, so
    only the redelivery, which finds its message applied, can see the events still waiting."""
    async with Harness() as h:
        a = await h.start_instance()
        assert a.services is not None
        buyer = h.client(a, "buyer-1", "buyer")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await a.services.orders.submit_requirements(order_id, Actor(id="buyer-1", role="buyer"), "x",
                                                     message_id="command-1")
        await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)
        # As the cut-off attempt left it: applied, with an event nobody published.
        left = _switched(7)
        past = utcnow().replace(year=2000)
        entry = {**Effect.publish(left).entry(), "writer": "cut-off", "until": past.isoformat()}
        await a.services.orders.collection.update_one(
            {"_id": order_id}, {"$set": {"_outbox": [entry], "_outbox_due": past}})

        again = await a.services.orders.submit_requirements(order_id, Actor(id="buyer-1", role="buyer"), "x",
                                                             message_id="command-1")
        assert again["state"] == "in_progress" and again["_version"] == 2  # applied once
        await h.probe.wait_for("plugin.switched", lambda m: m.id == left.id, timeout=3)
        stored = await a.services.orders.collection.find_one({"_id": order_id})
        assert stored["_outbox"] == []
        assert _full_sweeps(a) == 1  # not the safety net: the redelivery did it
