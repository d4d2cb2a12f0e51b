"""Resolution center: partial refunds, cancellation requests, update requests, extensions, extra offers.

Rules DSP-1 to DSP-10 of RULES.md; see README.md beside this file. `rules.py`
decides, `center.py` keeps each order's case and writes it, `routes.py` is the
HTTP API, `messages.py` the events it publishes.
"""

from __future__ import annotations

from typing import Any

from core.bus import Subscription
from core.hookspecs import hookimpl
from core.http.routes import Route
from core.messages import MessageType
from core.scheduler import DeadlineHandler
from plugins.disputes.center import CASES, center_for
from plugins.disputes.messages import MESSAGE_TYPES
from plugins.disputes.routes import resolution_routes
from plugins.disputes.rules import ANSWER_WINDOW

NAME = "disputes"


@hookimpl
def register_message_types() -> list[MessageType]:
    return list(MESSAGE_TYPES)


@hookimpl
def register_outbox_collections() -> list[str]:
    return [CASES]


@hookimpl
def register_routes(services: Any) -> list[Route]:
    return resolution_routes()


@hookimpl
def register_deadline_handlers(services: Any) -> dict[str, DeadlineHandler]:
    return {ANSWER_WINDOW: center_for(services).on_answer_window}


@hookimpl
def register_subscriptions(services: Any) -> list[Subscription]:
    # DSP-9: a request on an order that ended lapses (no answer, no silence outcome).
    return [Subscription(types=("order.completed", "order.cancelled"), handler=center_for(services).on_order_final)]
