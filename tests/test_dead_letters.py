"""Dead letters kept, listed, replayed and discarded (core.dead_letters): a handler fails,
its message is dead-lettered; fixed, a replay processes it once; a second replay, or a
copy, processes nothing twice; a discard removes only what it names."""

from __future__ import annotations

from typing import Any

from core.messages import Actor
from core.service import Service
from tests import flaky_plugin
from tests.harness import Harness
from tests.support import eventually

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
