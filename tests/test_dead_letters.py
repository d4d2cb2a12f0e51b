"""Dead letters kept, listed, replayed and discarded (core.dead_letters): a handler fails,
its message is dead-lettered; fixed, a replay processes it once; a second replay, or a
copy, processes nothing twice; a discard removes only what it names."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from core.bus import broker_user
from core.errors import Unavailable
from core.messages import Actor, SubmitRequirements
from core.service import Service
from tests import flaky_plugin
from tests.harness import ORDER, Harness
from tests.support import consumed, eventually

ROOT = Path(__file__).resolve().parent.parent
ADMIN = Actor(id="ada", role="admin")
FLAKY = {"plugins": {"extra": ["tests.flaky_plugin"]}, "bus": {"delivery_limit": 2}}


def dead_queue(h: Harness, group: str) -> str:
    return f"{h.settings.bus.queue_prefix}.{group}.dead"


async def handled(service: Service, message_id: str) -> dict[str, Any] | None:
    assert service.services is not None
    return await service.services.store.collection(flaky_plugin.HANDLED).find_one({"_id": message_id})


async def dead_letter_pokes(h: Harness, service: Service, *ids: str) -> None:
    """Publish one poke per id while the plugin is broken; wait until each is kept as a dead letter."""
    assert service.services is not None and service.services.dead_letters is not None
    await flaky_plugin.set_broken(service.services.store, True)
    for id in ids:
        await h.publish(flaky_plugin.TYPE, {"note": f"note of {id}"}, id=id, subject=f"order-{id}")
    queue = dead_queue(h, "flaky_plugin")

    async def all_kept() -> bool:
        page = await service.services.dead_letters.page(queue)
        return {m.id for m in page.messages} >= set(ids)

    await eventually(all_kept, what="the pokes kept as dead letters")


async def test_failed_message_replayed_once_fixed_is_processed_once_and_a_second_replay_does_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        dead_letters = service.services.dead_letters
        queue = dead_queue(h, "flaky_plugin")
        await dead_letter_pokes(h, service, "poke-1")

        [kept] = (await dead_letters.page(queue)).messages
        assert (kept.id, kept.type, kept.subject, kept.reason, kept.replays, kept.state) == (
            "poke-1", flaky_plugin.TYPE, "order-poke-1", "delivery_limit", 0, "dead")
        assert kept.error == "RuntimeError: the flaky plugin is broken and cannot handle poke-1"
        assert kept.body["data"] == {"note": "note of poke-1"}
        summary = {q.queue: q for q in (await dead_letters.summary()).queues}
        assert summary[queue].count == 1 and summary[queue].by_reason == {"delivery_limit": 1}
        assert summary[queue].plugin == "flaky_plugin" and summary[queue].oldest == kept.first_dead_at
        assert await handled(service, "poke-1") is None

        await flaky_plugin.set_broken(service.services.store, False)
        result = await dead_letters.replay(queue, ["poke-1"], ADMIN)
        assert result.replayed == ["poke-1"] and result.skipped == []
        done = await eventually(lambda: handled(service, "poke-1"), what="the replay handled")
        assert done == {"_id": "poke-1", "seen": 1, "applied": 1, "note": "note of poke-1"}

        again = await dead_letters.replay(queue, ["poke-1"], ADMIN)
        assert again.replayed == [] and [s.why for s in again.skipped] == ["it is replayed"]
        assert (await dead_letters.page(queue)).messages == []
        assert (await dead_letters.summary()).queues  # the queue is still listed, with nothing in it
        record = await dead_letters.get(queue, "poke-1")
        assert record.state == "replayed" and record.replays == 1
        assert [(e.action, e.actor.id if e.actor else None) for e in record.history] == [
            ("dead", None), ("replay", "ada")]
        await h.probe.settle(0.3)
        assert (await handled(service, "poke-1"))["seen"] == 1


async def test_a_replay_that_fails_again_comes_back_dead_with_its_count_of_replays() -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        dead_letters = service.services.dead_letters
        queue = dead_queue(h, "flaky_plugin")
        await dead_letter_pokes(h, service, "poke-2")

        # Still broken: the replay is handled (not refused as "already seen"), fails, and comes back.
        assert (await dead_letters.replay(queue, ["poke-2"], ADMIN)).replayed == ["poke-2"]

        async def dead_again() -> Any:
            record = await dead_letters.get(queue, "poke-2")
            return record if record.state == "dead" and record.replays == 1 else None

        record = await eventually(dead_again, what="the replay dead-lettered again")
        assert record.reason == "delivery_limit"
        assert [e.action for e in record.history] == ["dead", "replay", "dead"]
        assert record.first_dead_at < record.dead_at
        attempts = (await service.services.store.collection(flaky_plugin.FLAG).find_one({"_id": "flag"}))
        assert attempts["broken"] is True and await handled(service, "poke-2") is None

        await flaky_plugin.set_broken(service.services.store, False)
        assert (await dead_letters.replay(queue, None, ADMIN)).replayed == ["poke-2"]  # None: all
        assert (await eventually(lambda: handled(service, "poke-2")))["applied"] == 1
        assert (await dead_letters.get(queue, "poke-2")).replays == 2


async def test_discard_removes_only_what_it_names_and_keeps_who_when_and_why() -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        dead_letters = service.services.dead_letters
        queue = dead_queue(h, "flaky_plugin")
        await dead_letter_pokes(h, service, "poke-a", "poke-b", "poke-c")

        result = await dead_letters.discard(queue, ["poke-b", "poke-x"], "test data, not a real order", ADMIN)
        assert result.discarded == ["poke-b"]
        assert [(s.id, s.why) for s in result.skipped] == [("poke-x", "no such dead letter in this queue")]
        assert sorted(m.id for m in (await dead_letters.page(queue)).messages) == ["poke-a", "poke-c"]
        summary = {q.queue: q for q in (await dead_letters.summary()).queues}
        assert summary[queue].count == 2
        record = await dead_letters.get(queue, "poke-b")
        assert record.state == "discarded"
        assert (record.history[-1].action, record.history[-1].actor.id, record.history[-1].reason) == (
            "discard", "ada", "test data, not a real order")

        # Neither discarded twice nor replayed once discarded.
        again = await dead_letters.discard(queue, ["poke-b"], "again", ADMIN)
        assert again.discarded == [] and again.skipped[0].why == "it is discarded"
        replay = await dead_letters.replay(queue, ["poke-b"], ADMIN)
        assert replay.replayed == [] and replay.skipped[0].why == "it is discarded"
        await flaky_plugin.set_broken(service.services.store, False)
        assert (await dead_letters.replay(queue, None, ADMIN)).replayed == ["poke-a", "poke-c"]
        await eventually(lambda: handled(service, "poke-c"), what="poke-c handled")
        await h.probe.settle(0.3)
        assert await handled(service, "poke-b") is None


async def test_a_replay_whose_publish_fails_leaves_the_dead_letter_as_it_was() -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        dead_letters = service.services.dead_letters
        queue = dead_queue(h, "flaky_plugin")
        await dead_letter_pokes(h, service, "poke-3")
        bus = service.services.bus
        send = bus.send_to_queue

        async def broker_gone(*args: Any, **kwargs: Any) -> None:
            raise Unavailable("the broker did not confirm")

        bus.send_to_queue = broker_gone  # type: ignore[method-assign]
        with pytest.raises(Unavailable):
            await dead_letters.replay(queue, ["poke-3"], ADMIN)
        record = await dead_letters.get(queue, "poke-3")
        assert (record.state, record.replays, [e.action for e in record.history]) == ("dead", 0, ["dead"])

        # A crash between the claim and the publish leaves it `replaying`: still listed, replayable.
        await service.services.store.collection("dead_letters").update_one(
            {"message_id": "poke-3"}, {"$set": {"state": "replaying"}, "$inc": {"replays": 1}})
        assert [m.state for m in (await dead_letters.page(queue)).messages] == ["replaying"]
        bus.send_to_queue = send  # type: ignore[method-assign]
        await flaky_plugin.set_broken(service.services.store, False)
        assert (await dead_letters.replay(queue, ["poke-3"], ADMIN)).replayed == ["poke-3"]
        assert (await eventually(lambda: handled(service, "poke-3")))["applied"] == 1


async def publish_dead_letter(h: Harness, group: str, body: bytes, *, message_id: str, type_: str,
                              reason: str = "delivery_limit", error: str = "RuntimeError: lost ack") -> None:
    """A dead letter as core.bus sends it, published by the service's own broker user."""
    connection = await aio_pika.connect(h.settings.bus.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{h.settings.bus.queue_prefix}.dead")
        source = f"{h.settings.bus.queue_prefix}.{group}"
        await exchange.publish(aio_pika.Message(
            body, message_id=message_id, type=type_, user_id=broker_user(h.settings.bus.url),
            headers={"x-rescenter-reason": reason, "x-rescenter-error": error, "x-rescenter-queue": source,
                     "x-rescenter-dead-at": "2026-11-30T12:00:00.000+00:00", "x-rescenter-user-id": ""},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=source)


async def test_ORD_6_replaying_a_command_that_had_in_fact_been_applied_changes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        dead_letters = service.services.dead_letters
        order_id = (await h.client(service, "buyer-1", "buyer").post("/orders", ORDER, expect=201))["id"]
        submit = SubmitRequirements(order_id=order_id, actor=Actor(id="buyer-1", role="buyer"), requirements="x")
        envelope = await h.publish("command.order.submit_requirements", submit, subject=order_id, id="submit-1")
        await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)

        # Applied, but its ack was lost and it ended dead-lettered anyway; the copy is kept once.
        for _ in range(2):
            await publish_dead_letter(h, "core", envelope.body(), message_id="submit-1",
                                      type_="command.order.submit_requirements")
        queue = dead_queue(h, "core")

        async def kept() -> Any:
            return (await dead_letters.page(queue)).messages

        [record] = await eventually(kept, what="the copy kept")
        await h.probe.settle(0.3)
        assert [e.action for e in (await dead_letters.get(queue, "submit-1")).history] == ["dead"]
        assert (await dead_letters.replay(queue, ["submit-1"], ADMIN)).replayed == ["submit-1"]
        await eventually(lambda: consumed(service, "core", "command.order.submit_requirements") == 2,
                         what="the replay handled")
        await h.probe.settle(0.3)
        assert len(h.probe.of_type("order.requirements_submitted", order_id)) == 1
        order = await h.client(service, "support-1", "support").get(f"/orders/{order_id}", expect=200)
        assert order["version"] == 2
        assert (await dead_letters.get(queue, "submit-1")).state == "replayed"


async def test_admin_routes_list_page_replay_and_discard_dead_letters() -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        admin = h.client(service, "ada", "admin")
        queue = dead_queue(h, "flaky_plugin")
        await dead_letter_pokes(h, service, "poke-h1", "poke-h2", "poke-h3")

        summary = await admin.get("/admin/dead-letters", expect=200)
        row = next(q for q in summary["queues"] if q["queue"] == queue)
        assert (row["plugin"], row["count"], row["by_reason"]) == ("flaky_plugin", 3, {"delivery_limit": 3})
        assert {q["queue"] for q in summary["queues"]} >= {dead_queue(h, "core"), queue}

        # Paging: two, then one, then nothing more; each message with what an operator needs.
        first = await admin.get(f"/admin/dead-letters/{queue}?limit=2", expect=200)
        assert len(first["messages"]) == 2 and first["next_after"] == first["messages"][-1]["id"]
        second = await admin.get(f"/admin/dead-letters/{queue}?limit=2&after={first['next_after']}", expect=200)
        assert second["next_after"] is None
        ids = [m["id"] for m in first["messages"] + second["messages"]]
        assert sorted(ids) == ["poke-h1", "poke-h2", "poke-h3"]
        message = first["messages"][0]
        assert message["type"] == flaky_plugin.TYPE and message["reason"] == "delivery_limit"
        assert message["body"]["id"] == message["id"] and message["first_dead_at"]

        discarded = await admin.request("DELETE", f"/admin/dead-letters/{queue}",
                                        {"ids": [ids[0]], "reason": "a test message"}, expect=200)
        assert discarded == {"queue": queue, "discarded": [ids[0]], "skipped": []}
        await flaky_plugin.set_broken(service.services.store, False)
        replayed = await admin.post(f"/admin/dead-letters/{queue}/replay", {}, expect=200)
        assert sorted(replayed["replayed"]) == sorted(ids[1:]) and replayed["skipped"] == []
        for id in ids[1:]:
            await eventually(lambda id=id: handled(service, id), what=f"{id} handled")
        again = await admin.post(f"/admin/dead-letters/{queue}/replay", {"ids": ids}, expect=200)
        assert again["replayed"] == [] and len(again["skipped"]) == 3
        assert (await admin.get(f"/admin/dead-letters/{queue}", expect=200))["messages"] == []


async def test_dead_letter_routes_are_for_admins_and_refuse_bad_input_changing_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        admin = h.client(service, "ada", "admin")
        queue = dead_queue(h, "flaky_plugin")
        await dead_letter_pokes(h, service, "poke-v")
        for who in (h.client(service, "sam", "support"), h.client(service, "bob", "seller")):
            await who.get("/admin/dead-letters", expect=403)
            await who.post(f"/admin/dead-letters/{queue}/replay", {}, expect=403)
        await h.client(service).get("/admin/dead-letters", expect=401)
        await admin.get("/admin/dead-letters/no.such.dead", expect=404)
        await admin.post("/admin/dead-letters/no.such.dead/replay", {}, expect=404)
        await admin.get(f"/admin/dead-letters/{queue}?limit=0", expect=422)
        await admin.get(f"/admin/dead-letters/{queue}?limit=201", expect=422)
        await admin.get(f"/admin/dead-letters/{queue}?after=unknown", expect=422)
        await admin.post(f"/admin/dead-letters/{queue}/replay", {"ids": []}, expect=422)
        await admin.post(f"/admin/dead-letters/{queue}/replay", {"ids": [""]}, expect=422)
        await admin.request("DELETE", f"/admin/dead-letters/{queue}", {"ids": ["poke-v"]}, expect=422)
        await admin.request("DELETE", f"/admin/dead-letters/{queue}", {"ids": ["poke-v"], "reason": ""},
                            expect=422)
        await admin.request("DELETE", f"/admin/dead-letters/{queue}", {"ids": [], "reason": "x"}, expect=422)
        [message] = (await admin.get(f"/admin/dead-letters/{queue}", expect=200))["messages"]
        assert (message["id"], message["state"], message["replays"]) == ("poke-v", "dead", 0)


async def test_queue_depths_and_dead_letter_counts_are_prometheus_gauges() -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        queue = dead_queue(h, "flaky_plugin")
        await dead_letter_pokes(h, service, "poke-g1", "poke-g2")
        text = await h.client(service).get("/metrics", expect=200)
        registry = service.services.metrics.registry
        assert registry.get_sample_value("rescenter_dead_letters", {"queue": queue, "reason": "delivery_limit"}) == 2
        assert registry.get_sample_value("rescenter_dead_letters", {"queue": queue, "reason": "all"}) == 2
        assert registry.get_sample_value("rescenter_dead_letters", {"queue": dead_queue(h, "core"),
                                                                    "reason": "all"}) == 0
        for name in (f"{h.settings.bus.queue_prefix}.flaky_plugin", queue):
            assert registry.get_sample_value("rescenter_queue_messages", {"queue": name}) == 0
        assert f'rescenter_dead_letters{{queue="{queue}",reason="delivery_limit"}} 2.0' in text

        await service.services.dead_letters.discard(queue, ["poke-g1"], "test", ADMIN)
        await h.client(service).get("/metrics", expect=200)
        assert registry.get_sample_value("rescenter_dead_letters", {"queue": queue, "reason": "delivery_limit"}) == 1


def rescenter(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    """`rescenter ...` as an operator runs it, against this test's store, broker and plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESCENTER_")}
    env.update({"RESCENTER_STORE__DATABASE": h.settings.store.database, "RESCENTER_STORE__URL": h.settings.store.url,
                "RESCENTER_BUS__URL": h.settings.bus.url, "RESCENTER_BUS__EXCHANGE": h.settings.bus.exchange,
                "RESCENTER_BUS__QUEUE_PREFIX": h.settings.bus.queue_prefix,
                "RESCENTER_PLUGINS__EXTRA": '["tests.flaky_plugin"]', "RESCENTER_CLOCK__MODE": "test",
                "RESCENTER_SERVICE__ENVIRONMENT": "test"})
    return subprocess.run([sys.executable, "-m", "core.cli", "--log-level", "WARNING", "dead-letters", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


async def test_the_command_line_lists_shows_replays_and_discards_dead_letters() -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        queue = dead_queue(h, "flaky_plugin")
        await dead_letter_pokes(h, service, "poke-c1", "poke-c2", "poke-c3")

        listed = await asyncio.to_thread(rescenter, h, "list")
        assert listed.returncode == 0, listed.stderr
        [line] = [line for line in listed.stdout.splitlines() if line.startswith(queue)]
        assert line.split()[1] == "3" and line.endswith("delivery_limit 3")

        shown = await asyncio.to_thread(rescenter, h, "show", queue, "--limit", "2")
        page = json.loads(shown.stdout)
        assert len(page["messages"]) == 2 and page["next_after"] == page["messages"][-1]["id"]

        discarded = await asyncio.to_thread(rescenter, h, "discard", queue, "poke-c2", "--reason", "a test",
                                            "--actor", "ops-1")
        assert json.loads(discarded.stdout)["discarded"] == ["poke-c2"], discarded.stderr
        record = await service.services.dead_letters.get(queue, "poke-c2")
        assert (record.history[-1].actor.id, record.history[-1].actor.role) == ("ops-1", "admin")

        await flaky_plugin.set_broken(service.services.store, False)
        replayed = await asyncio.to_thread(rescenter, h, "replay", queue, "--all")
        assert sorted(json.loads(replayed.stdout)["replayed"]) == ["poke-c1", "poke-c3"], replayed.stderr
        for id in ("poke-c1", "poke-c3"):
            assert (await eventually(lambda id=id: handled(service, id)))["applied"] == 1

        unknown = await asyncio.to_thread(rescenter, h, "show", "no.such.dead")
        assert unknown.returncode == 1 and "no dead-letter queue named 'no.such.dead'" in unknown.stderr
        nothing = await asyncio.to_thread(rescenter, h, "replay", queue)
        assert nothing.returncode == 2 and "--all" in nothing.stderr
