"""Sellers blocking buyers (BLK-1 to BLK-3 of RULES.md).

A blocked buyer's new orders with the seller are refused through the core's
veto (ORD-5), in words that do not name the block; every change publishes a
`blocking.*` event. See README.md beside this file.
"""

from __future__ import annotations

from typing import Any

from core.hookspecs import hookimpl
from core.http.routes import Route
from core.messages import MessageType, PlaceOrder
from plugins.blocking.commands import COLLECTION, NAME, BlockingCommands
from plugins.blocking.messages import MESSAGE_TYPES
from plugins.blocking.routes import routes

__all__ = ["NAME"]


@hookimpl
def register_message_types() -> list[MessageType]:
    return list(MESSAGE_TYPES)


@hookimpl
def register_routes() -> list[Route]:
    return routes()


@hookimpl
def register_outbox_collections() -> list[str]:
    return [COLLECTION]


@hookimpl
def veto_order(services: Any, order: PlaceOrder) -> Any:
    return BlockingCommands(services).veto(order)
