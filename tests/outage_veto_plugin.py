"""A plugin used by the tests: its veto on new orders (ORD-5) finds the store unreachable
the first `OUTAGE_RUNS` times it is asked about an order for `GIG`, as during a store
outage; it remembers what it reserved and what it was asked to undo."""

from __future__ import annotations

from typing import Any

from pymongo.errors import AutoReconnect

from core.hookspecs import hookimpl

GIG = "gig-during-an-outage"
OUTAGE_RUNS = 4
asked: dict[str, int] = {}
undone: list[str] = []


@hookimpl
def veto_order(services: Any, order: Any) -> Any:
    async def check() -> None:
        if order.gig_id != GIG:
            return None
        asked[order.order_id] = asked.get(order.order_id, 0) + 1
        if asked[order.order_id] <= OUTAGE_RUNS:
            raise AutoReconnect("connection refused (the store is down)")
        return None

    return check()


@hookimpl
def order_not_placed(services: Any, order: Any, reason: str) -> None:
    undone.append(order.order_id)
