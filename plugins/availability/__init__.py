"""Availability mode: away periods, the rest of the day off, a cap on active
orders, paused gigs (AVL-1 to AVL-5 of RULES.md).

It refuses new orders through the core's veto (ORD-5) and publishes an
`availability.*` event for every change. See README.md beside this file.
"""

from __future__ import annotations

from typing import Any

from core.hookspecs import hookimpl
from core.http.routes import Route
from core.messages import MessageType, PlaceOrder
from core.scheduler import DeadlineHandler
from plugins.availability.commands import AWAY_END, AWAY_START, NAME, AvailabilityCommands
from plugins.availability.messages import MESSAGE_TYPES
from plugins.availability.repository import COLLECTION
from plugins.availability.routes import routes

__all__ = ["NAME"]


@hookimpl
def register_message_types() -> list[MessageType]:
    return list(MESSAGE_TYPES)


@hookimpl
def register_routes() -> list[Route]:
    return routes()


@hookimpl
def register_deadline_handlers(services: Any) -> dict[str, DeadlineHandler]:
    commands = AvailabilityCommands(services)
    return {AWAY_START: commands.on_away_start, AWAY_END: commands.on_away_end}


@hookimpl
def register_outbox_collections() -> list[str]:
    return [COLLECTION]


@hookimpl
def veto_order(services: Any, order: PlaceOrder) -> Any:
    return AvailabilityCommands(services).veto(order)


@hookimpl
def order_not_placed(services: Any, order: PlaceOrder) -> Any:
    return AvailabilityCommands(services).order_not_placed(order)
