"""A plugin used by the tests: its handler fails with an unexpected error every
time, so the bus must give up after `bus.delivery_limit` deliveries and
dead-letter the message with the reason. Its second handler finds the store
unreachable `OUTAGE_RUNS` times before it succeeds, as during a store outage.

It counts the deliveries it saw in its own collection (one document per
message id), so the count belongs to the test's database.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import AutoReconnect

from core.bus import Subscription
from core.hookspecs import hookimpl
from core.messages import MessageData, MessageType

COLLECTION = "failing_attempts"
TYPE = "test.failing.poke"
OUTAGE_TYPE = "test.failing.outage"
OUTAGE_RUNS = 4  # more than the test's delivery limit (3)


class Poke(MessageData):
    note: str = ""


@hookimpl
def register_message_types() -> list[MessageType]:
    return [MessageType(TYPE, Poke, "A message the failing test plugin can never handle.", "consume"),
            MessageType(OUTAGE_TYPE, Poke, "A message the failing test plugin handles after a store outage.",
                        "consume")]


@hookimpl
def register_subscriptions(services: Any) -> list[Subscription]:
    async def explode(envelope: Any, data: Any) -> None:
        await services.store.collection(COLLECTION).update_one(
            {"_id": envelope.id}, {"$inc": {"attempts": 1}}, upsert=True
        )
        raise RuntimeError(f"the failing plugin cannot handle {envelope.id}")

    runs: dict[str, int] = {}

    async def outage(envelope: Any, data: Any) -> None:
        runs[envelope.id] = runs.get(envelope.id, 0) + 1
        if runs[envelope.id] <= OUTAGE_RUNS:
            raise AutoReconnect("connection refused (the store is down)")
        await services.store.collection(COLLECTION).update_one(
            {"_id": envelope.id}, {"$set": {"attempts": runs[envelope.id]}}, upsert=True
        )

    return [Subscription(types=(TYPE,), handler=explode), Subscription(types=(OUTAGE_TYPE,), handler=outage)]
