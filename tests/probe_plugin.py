"""A plugin used by the tests: loaded like any outside plugin (plugins.extra).

It records every order event it consumes in its own collection (idempotent on
the message id), serves them at GET /probe/seen, and refuses orders for the gig
"vetoed-gig" (ORD-5).
"""

from __future__ import annotations

from typing import Any

from core.bus import Subscription
from core.hookspecs import hookimpl
from core.http.routes import Call, Route
from core.vetoes import Veto

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


@hookimpl
def register_routes() -> list[Route]:
    async def seen(call: Call) -> dict[str, Any]:
        docs = [d async for d in call.services.store.collection(COLLECTION).find({})]
        return {"seen": [{"id": d["_id"], "type": d["type"], "subject": d["subject"]} for d in docs]}

    return [Route("GET", "/probe/seen", seen, "Events the probe plugin consumed.")]


@hookimpl
def veto_order(order: Any) -> Veto | None:
    if order.gig_id == "vetoed-gig":
        return Veto(reason="This gig does not take orders in tests.", rule="PROBE-1", details={"gig_id": order.gig_id})
    return None
