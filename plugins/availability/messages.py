"""Events the availability plugin publishes, one per change (AVL-1 to AVL-5).

They are about a seller, not an order: the envelope's `subject` is
`seller:<seller_id>`. The bus is internal to the marketplace: the cap and the
paused gigs travel on it although only the seller and support see them
through the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from core.messages import Actor, MessageData, MessageType

#: who ends a period at its `until` (AVL-2)
SYSTEM = Actor(id="rescenter", role="system")


def subject(seller_id: str) -> str:
    return f"seller:{seller_id}"


class AwayPeriod(MessageData):
    period_id: str
    kind: Literal["period", "rest_of_day"] = Field(
        description="`period`: from/until set by the seller (AVL-1); `rest_of_day`: until later the same "
                    "day in the seller's time zone (AVL-3)")
    starts_at: datetime
    until: datetime = Field(description="The return date: new orders are taken again from this instant.")
    note: str
    time_zone: str | None = Field(default=None, description="IANA zone of a rest-of-the-day period")


class SellerEvent(MessageData):
    seller_id: str
    actor: Actor
    rule: str


class AwayScheduled(SellerEvent):
    period: AwayPeriod


class AwayStarted(SellerEvent):
    period: AwayPeriod


EndCause = Literal["elapsed", "ended_by_seller", "replaced"]


class AwayEnded(SellerEvent):
    period: AwayPeriod
    cause: EndCause = Field(
        description="`elapsed`: it reached `until` (AVL-2); `ended_by_seller`: ended sooner (AVL-2); "
                    "`replaced`: the seller set another period")
    ended_at: datetime
    started: bool = Field(description="False when it ended before its start: it never refused an order")


class CapChanged(SellerEvent):
    max_active_orders: int | None = Field(default=None, description="The new cap; absent or null: no cap")
    previous: int | None = Field(default=None, description="The cap before; absent or null: there was none")


class GigPaused(SellerEvent):
    gig_id: str


class GigResumed(SellerEvent):
    gig_id: str


MESSAGE_TYPES: tuple[MessageType, ...] = (
    MessageType("availability.away_scheduled", AwayScheduled,
                "A seller set an away period that starts later; new orders are refused from its start.",
                "publish", rules=("AVL-1",)),
    MessageType("availability.away_started", AwayStarted,
                "A seller's away period began: new orders are refused until its return date, running "
                "orders are untouched.", "publish", rules=("AVL-1", "AVL-3")),
    MessageType("availability.away_ended", AwayEnded,
                "A seller's away period ended: by itself at its return date, sooner by the seller, or "
                "replaced by another.", "publish", rules=("AVL-2",)),
    MessageType("availability.cap_changed", CapChanged,
                "A seller set, changed or removed the cap on active orders (running orders are untouched).",
                "publish", rules=("AVL-4",)),
    MessageType("availability.gig_paused", GigPaused, "A seller paused a gig: its orders are refused.",
                "publish", rules=("AVL-5",)),
    MessageType("availability.gig_resumed", GigResumed, "A seller resumed a paused gig.", "publish",
                rules=("AVL-5",)),
)
