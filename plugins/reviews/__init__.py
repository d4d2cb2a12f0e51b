"""Reviews on cancelled orders: eligibility, the 5-day window, the seller's reply,
support's removal (REV-1 to REV-9 of RULES.md).

It keeps its own copy of the facts eligibility needs, learned from the bus:
the core's order events, the conversation service's messages, the accounts
service's seller-account and review-right changes, and the resolution center's
unanswered update requests (DSP-5). It publishes `review.published`,
`review.reply_published` and `review.removed`. See README.md beside this file.
"""

from __future__ import annotations

from typing import Any

from core.bus import Subscription
from core.hookspecs import hookimpl
from core.http.routes import Route
from core.messages import MessageType
from core.whatif import PolicyReplay
from plugins.reviews.commands import NAME, Reviews
from plugins.reviews.messages import MESSAGE_TYPES
from plugins.reviews.repository import REVIEWS, Repository
from plugins.reviews.routes import routes
from plugins.reviews.whatif import policy_replay

__all__ = ["NAME"]


@hookimpl
def register_message_types() -> list[MessageType]:
    return list(MESSAGE_TYPES)


@hookimpl
def register_subscriptions(services: Any) -> list[Subscription]:
    return Reviews(services).subscriptions()


@hookimpl
def register_routes() -> list[Route]:
    return routes()


@hookimpl
def register_outbox_collections() -> list[str]:
    return [REVIEWS]


@hookimpl
def register_policy_replays() -> list[PolicyReplay]:
    return [policy_replay()]


@hookimpl
def startup(services: Any) -> Any:
    return Repository(services.store).create_indexes()
