"""The events the resolution center publishes (the contract of docs/plugins.md).

Every event names the request (`request_id`, `kind`), who made it (`from_party`)
and who must answer (`to_party`), and is meant for both parties and for other
services: none carries a confidential reason (DSP-2, DSP-6), nor any free text a
party wrote. The parties read the texts over HTTP, where each sees what its
role may see.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from core.messages import Actor, MessageData, MessageType, Money

Kind = Literal[
    "partial_refund",
    "seller_cancel_request",
    "buyer_cancel_request",
    "update_request",
    "extension_request",
    "extra_offer",
]
Party = Literal["buyer", "seller"]
#: what happened to a request when its window ended in silence (DSP-10)
SilenceOutcome = Literal["accepted", "declined", "unanswered"]


class DisputeEvent(MessageData):
    order_id: str
    buyer_id: str
    seller_id: str
    request_id: str
    kind: Kind
    from_party: Party
    to_party: Party
    actor: Actor
    rule: str


class Terms(MessageData):
    """The public, structured terms of a request (never its texts)."""

    amount: Money | None = None  # partial_refund (DSP-2)
    days: int | None = None  # extension_request (DSP-7), extra_offer (DSP-8)
    revisions: int | None = None  # extra_offer
    price: Money | None = None  # extra_offer; none: the extra comes free


class RequestOpened(DisputeEvent):
    opened_at: datetime
    #: none: no window (a partial refund stays open until answered or withdrawn)
    answer_by: datetime | None = None
    silence_outcome: SilenceOutcome | None = None
    terms: Terms


class RequestAnswered(DisputeEvent):
    answer: Literal["accepted", "declined", "replied"]
    answered_at: datetime
    answer_by: datetime | None = None


class RequestWithdrawn(DisputeEvent):
    withdrawn_at: datetime


class RequestExpired(DisputeEvent):
    outcome: SilenceOutcome
    silent_party: Party
    answer_by: datetime
    expired_at: datetime
    #: what silence did and why, in words both parties can be shown (DSP-10)
    explanation: str


class RefundIssued(DisputeEvent):
    amount: Money
    accepted_at: datetime


class RequestClosed(DisputeEvent):
    cause: Literal["order_completed", "order_cancelled"]
    closed_at: datetime


MESSAGE_TYPES: tuple[MessageType, ...] = (
    MessageType("dispute.request_opened", RequestOpened,
                "A party opened a resolution request; the other party must answer by answer_by, "
                "and silence_outcome says what silence will do.", "publish",
                rules=("DSP-1", "DSP-2", "DSP-4", "DSP-5", "DSP-6", "DSP-7", "DSP-8", "DSP-9")),
    MessageType("dispute.request_answered", RequestAnswered,
                "The other party accepted, declined or replied to a request within its window.", "publish",
                rules=("DSP-3", "DSP-4", "DSP-5", "DSP-6", "DSP-7", "DSP-8", "DSP-9")),
    MessageType("dispute.request_withdrawn", RequestWithdrawn,
                "The author withdrew a request before it was answered.", "publish", rules=("DSP-9",)),
    MessageType("dispute.request_expired", RequestExpired,
                "A request's window ended in silence; outcome is what the policy made of it. An "
                "update_request with outcome unanswered is the seller's silence (REV-1, MET-4).", "publish",
                rules=("DSP-4", "DSP-5", "DSP-6", "DSP-7", "DSP-8", "DSP-10")),
    MessageType("dispute.refund_issued", RefundIssued,
                "The buyer accepted a partial refund: payments refunds the amount, in the order's currency; "
                "the order goes on and the completion rate is not touched.", "publish",
                rules=("DSP-3", "MET-3")),
    MessageType("dispute.request_closed", RequestClosed,
                "An open request lapsed because its order completed or was cancelled.", "publish",
                rules=("DSP-9",)),
)
