"""MET-2: support flags a cancelled order (fraud, order placed by mistake) so that
it stops counting in the seller's completion rate, and can clear the flag.

The flag is one document per order (`metrics_flags`), written with its event in
the outbox (one version-guarded write), then recorded in the event log and the
live figures at once, so the answer and the next read show it. Should the
process die after the write, the sweeper publishes the event and the metrics'
own consumer records it: nothing is lost, nothing counted twice (the event log
is keyed by the event id).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from pymongo.errors import DuplicateKeyError

from core.errors import Conflict, RuleViolation
from core.messages import Actor, Envelope, MessageData, make_envelope
from core.outbox import Effect
from core.store import update_guarded
from plugins.metrics.messages import FLAG_CLEARED, FLAG_SET, CancellationFlagCleared, CancellationFlagSet, Flag
from plugins.metrics.repository import FLAGS, MetricsRepository

log = structlog.get_logger("rescenter.metrics")

CANCELLED = "cancelled"

#: what a decision returns: the fields to store and the event to publish, or None for no change
Decision = tuple[dict[str, Any], str, MessageData] | None


def flag_view(order_id: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    doc = doc or {}
    keep = ("seller_id", "buyer_id", "flag", "note", "revision", "changed_at", "changed_by")
    return {"order_id": order_id, "rule": "MET-2", **{name: doc.get(name) for name in keep}}


class CancellationFlags:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.collection = services.store.collection(FLAGS)
        self.repository = MetricsRepository(services.store)

    async def get(self, order_id: str, actor: Actor) -> dict[str, Any]:
        await self.services.orders.get(order_id, actor)  # 404 for an unknown order
        return flag_view(order_id, await self.collection.find_one({"_id": order_id}))

    async def set(self, order_id: str, flag: Flag, note: str, actor: Actor) -> dict[str, Any]:
        def decide(order: dict[str, Any], doc: dict[str, Any] | None, now: datetime) -> Decision:
            if order["state"] != CANCELLED:
                raise RuleViolation(
                    f"only a cancellation can be flagged: order {order_id!r} is {order['state']}; support flags "
                    "a cancelled order so that it does not count in the completion rate",
                    rule="MET-2", order_id=order_id, state=order["state"])
            if doc and doc.get("flag") == flag and doc.get("note") == note:
                return None  # already so: a repeated call changes nothing
            revision = (doc or {}).get("revision", 0) + 1
            fields = {"order_id": order_id, "seller_id": order["seller_id"], "buyer_id": order["buyer_id"],
                      "flag": flag, "note": note, "revision": revision, "changed_at": now, "changed_by": actor.id}
            return fields, FLAG_SET, CancellationFlagSet(
                order_id=order_id, buyer_id=order["buyer_id"], seller_id=order["seller_id"], flag=flag, note=note,
                revision=revision, actor=actor)

        return await self._change(order_id, decide)

    async def clear(self, order_id: str, actor: Actor) -> dict[str, Any]:
        def decide(order: dict[str, Any], doc: dict[str, Any] | None, now: datetime) -> Decision:
            if not doc or doc.get("flag") is None:
                return None  # nothing to clear
            revision = doc["revision"] + 1
            fields = {"flag": None, "note": None, "revision": revision, "changed_at": now, "changed_by": actor.id}
            return fields, FLAG_CLEARED, CancellationFlagCleared(
                order_id=order_id, buyer_id=order["buyer_id"], seller_id=order["seller_id"],
                previous_flag=doc["flag"], revision=revision, actor=actor)

        return await self._change(order_id, decide)

    async def _change(self, order_id: str,
                      decide: Callable[[dict[str, Any], dict[str, Any] | None, datetime], Decision],
                      attempts: int = 8) -> dict[str, Any]:
        order = await self.services.orders.get(order_id)
        outbox = self.services.outbox
        for _ in range(attempts):
            doc = await self.collection.find_one({"_id": order_id})
            now = self.services.clock.now()
            decision = decide(order, doc, now)
            if decision is None:
                return flag_view(order_id, doc)
            fields, type_, data = decision
            envelope = make_envelope(type_, data, subject=order_id, time=now)
            if doc is None:
                written = {"_id": order_id, **fields, "_version": 1, **outbox.initial([Effect.publish(envelope)])}
                try:
                    await self.collection.insert_one(written)
                except DuplicateKeyError:
                    continue  # flagged meanwhile: decide again
            else:
                update = outbox.stage({"$set": fields}, [Effect.publish(envelope)])
                found = await update_guarded(self.collection, order_id, update, version=doc["_version"])
                if found is None:
                    continue  # changed meanwhile: decide again
                written = found
            log.info("cancellation flag changed", order_id=order_id, seller_id=order["seller_id"],
                     flag=fields["flag"], revision=fields["revision"], rule="MET-2")
            await self._record(envelope)
            try:
                await outbox.flush(FLAGS, written)
            except Exception as exc:  # stored: the sweeper publishes it
                log.warning("flag event deferred to the outbox sweeper", order_id=order_id, error=repr(exc))
            return flag_view(order_id, written)
        raise Conflict(f"the flag of order {order_id!r} is changing too fast; try again", order_id=order_id)

    async def _record(self, envelope: Envelope) -> None:
        try:
            await self.repository.record(envelope.id, envelope.type, envelope.time, envelope.data)
        except Exception as exc:  # the event is in the outbox: our consumer records it when it comes back
            log.warning("flag not yet in the figures; the consumer will record it", event_id=envelope.id,
                        error=repr(exc))
