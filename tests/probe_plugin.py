"""A plugin used by the tests: loaded like any outside plugin (plugins.extra).

It records every order event it consumes in its own collection, one document
per message id with the number of deliveries, serves them at GET /probe/seen, and refuses orders for the gig
"vetoed-gig" (ORD-5).
"""

from __future__ import annotations

from typing import Any

from core.bus import Subscription
from core.hookspecs import hookimpl
from core.http.responses import View
from core.http.routes import Call, Route
from core.vetoes import Veto

NAME = "probe"
COLLECTION = "probe_seen"


@hookimpl
def register_subscriptions(services: Any) -> list[Subscription]:
    async def record(envelope: Any, data: Any) -> None:
        await services.store.collection(COLLECTION).update_one(
            {"_id": envelope.id},
            {"$setOnInsert": {"type": envelope.type, "subject": envelope.subject},
             "$inc": {"deliveries": 1}},
            upsert=True,
        )

    return [Subscription(types=("order.*",), handler=record)]


class SeenEvent(View):
    id: str
    type: str
    subject: str | None


class Seen(View):
    seen: list[SeenEvent]


@hookimpl
def register_routes() -> list[Route]:
    async def seen(call: Call) -> dict[str, Any]:
        docs = [d async for d in call.services.store.collection(COLLECTION).find({})]
        return {"seen": [{"id": d["_id"], "type": d["type"], "subject": d["subject"]} for d in docs]}

    return [Route("GET", "/probe/seen", seen, "Events the probe plugin consumed.", response=Seen)]


@hookimpl
def veto_order(order: Any) -> Veto | None:
    if order.gig_id == "vetoed-gig":
        return Veto(reason="This gig does not take orders in tests.", rule="PROBE-1", details={"gig_id": order.gig_id})
    return None


# ---------------------------------------------------------------- the other hooks, exercised by tests/test_hooks.py

from datetime import timedelta  # noqa: E402

from pydantic import Field  # noqa: E402
from pymongo.errors import DuplicateKeyError  # noqa: E402

from core.messages import MessageData, MessageType  # noqa: E402
from core.outbox import Effect  # noqa: E402
from core.scheduler import Deadline  # noqa: E402

PINGS = "probe_pings"
REMINDERS = "probe_reminders"
UNPLACED = "probe_unplaced"


class ProbePing(MessageData):
    order_id: str = Field(min_length=1)
    remind_in_hours: int = Field(ge=1)


@hookimpl
def register_message_types() -> list[MessageType]:
    return [MessageType("probe.ping", ProbePing, "Asks the probe to remind later.", "consume")]


@hookimpl
def register_outbox_collections() -> list[str]:
    return [PINGS]


@hookimpl(specname="register_subscriptions")
def subscribe_pings(services: Any) -> list[Subscription]:
    async def on_ping(envelope: Any, data: ProbePing) -> None:
        due = services.clock.now() + timedelta(hours=data.remind_in_hours)
        deadline = Deadline(id=f"probe/{envelope.id}", owner="probe", kind="probe.reminder",
                            subject=data.order_id, due_at=due, payload={"ping": envelope.id})
        doc = {"_id": envelope.id, "order_id": data.order_id, **services.outbox.initial([Effect.schedule(deadline)])}
        try:
            await services.store.collection(PINGS).insert_one(doc)
        except DuplicateKeyError:
            return  # redelivered
        await services.outbox.flush(PINGS, doc)

    return [Subscription(types=("probe.ping",), handler=on_ping)]


@hookimpl
def register_deadline_handlers(services: Any) -> dict[str, Any]:
    async def remind(deadline: Deadline) -> None:
        await services.store.collection(REMINDERS).update_one(
            {"_id": deadline.id}, {"$inc": {"fired": 1}, "$set": {"at": services.clock.now()}}, upsert=True)

    return {"probe.reminder": remind}


@hookimpl
def startup(services: Any) -> Any:
    return services.store.collection(COLLECTION).create_index("subject", name="probe_subject")


@hookimpl
def order_not_placed(services: Any, order: Any, reason: str) -> Any:
    return services.store.collection(UNPLACED).insert_one({"order_id": order.order_id, "reason": reason})
