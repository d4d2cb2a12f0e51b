"""A plugin used by the dead-letter tests: its handler fails while a flag in its own
collection says it is broken, and records each message it did handle, once per
message id (as real handlers do: the id guards the write), counting how often it
was asked.
"""

from __future__ import annotations

from typing import Any

from core.bus import Subscription
from core.hookspecs import hookimpl
from core.messages import MessageData, MessageType

FLAG = "flaky_flag"
HANDLED = "flaky_handled"
TYPE = "test.flaky.poke"


class Poke(MessageData):
    note: str = ""


async def set_broken(store: Any, broken: bool) -> None:
    await store.collection(FLAG).update_one({"_id": "flag"}, {"$set": {"broken": broken}}, upsert=True)


@hookimpl
def register_message_types() -> list[MessageType]:
    return [MessageType(TYPE, Poke, "A message the flaky test plugin handles once it is fixed.", "consume")]


@hookimpl
def register_subscriptions(services: Any) -> list[Subscription]:
    async def handle(envelope: Any, data: Any) -> None:
        flag = await services.store.collection(FLAG).find_one({"_id": "flag"})
        if flag is not None and flag.get("broken"):
            raise RuntimeError(f"the flaky plugin is broken and cannot handle {envelope.id}")
        # Applied once per message id; a copy only counts as seen.
        await services.store.collection(HANDLED).update_one(
            {"_id": envelope.id},
            {"$inc": {"seen": 1}, "$setOnInsert": {"applied": 1, "note": data.note}}, upsert=True)

    return [Subscription(types=(TYPE,), handler=handle)]
