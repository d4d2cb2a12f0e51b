"""Private order completion rate and success score, explained order by order.

Rules MET-1 to MET-4 of RULES.md; see README.md beside this file. It keeps
every event it consumes (`repository.py`), turns each into facts about its
seller (`facts.py`), and decides the figures for any instant from those facts
(`rules.py`); support flags cancellations (`flags.py`); `routes.py` is the
HTTP API, `rebuild.py` the `rescenter metrics rebuild` command and `whatif.py`
its part of the policy what-if (`rescenter policy what-if`).
"""

from __future__ import annotations

from typing import Any

from core.bus import Subscription
from core.commands import Command
from core.hookspecs import hookimpl
from core.http.routes import Route
from core.messages import Envelope, MessageData, MessageType
from core.whatif import PolicyReplay
from plugins.metrics import rebuild
from plugins.metrics.messages import CONSUMED, MESSAGE_TYPES, fill_in_missing_types
from plugins.metrics.repository import FLAGS, MetricsRepository, log
from plugins.metrics.routes import NAME, routes
from plugins.metrics.whatif import policy_replay

__all__ = ["NAME"]


@hookimpl
def register_message_types() -> list[MessageType]:
    return list(MESSAGE_TYPES)


@hookimpl
def register_subscriptions(services: Any) -> list[Subscription]:
    repository = MetricsRepository(services.store)

    async def record(envelope: Envelope, data: MessageData) -> None:
        # `data` is the owner's model; the metrics read the fields they need with their own.
        await repository.record(envelope.id, envelope.type, envelope.time, envelope.data)

    return [Subscription(types=tuple(CONSUMED), handler=record)]


@hookimpl
def register_routes() -> list[Route]:
    return routes()


@hookimpl
def register_outbox_collections() -> list[str]:
    return [FLAGS]


@hookimpl
def register_commands() -> list[Command]:
    return [Command("rebuild", rebuild.HELP, rebuild.run, arguments=rebuild.arguments)]


@hookimpl
def register_policy_replays() -> list[PolicyReplay]:
    return [policy_replay()]


@hookimpl
def startup(services: Any) -> Any:
    added = fill_in_missing_types(services.catalogue)
    if added:
        log.warning("consuming event types whose owner is not loaded", types=added)
    return MetricsRepository(services.store).create_indexes()
