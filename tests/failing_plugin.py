"""A plugin used by the tests: its handler fails with an unexpected error every
time, so the bus must give up after `bus.delivery_limit` deliveries and
dead-letter the message with the reason.

It counts the deliveries it saw in its own collection (one document per
message id), so the count belongs to the test's database.
"""

from __future__ import annotations

from typing import Any

from core.bus import Subscription
from core.hookspecs import hookimpl
from core.messages import MessageData, MessageType

COLLECTION = "failing_attempts"
TYPE = "test.failing.poke"


class Poke(MessageData):
    note: str = ""


@hookimpl
def register_message_types() -> list[MessageType]:
    return [MessageType(TYPE, Poke, "A message the failing test plugin can never handle.", "consume")]


@hookimpl
def register_subscriptions(services: Any) -> list[Subscription]:
    async def explode(envelope: Any, data: Any) -> None:
        await services.store.collection(COLLECTION).update_one(
            {"_id": envelope.id}, {"$inc": {"attempts": 1}}, upsert=True
        )
        raise RuntimeError(f"the failing plugin cannot handle {envelope.id}")

    return [Subscription(types=(TYPE,), handler=explode)]
