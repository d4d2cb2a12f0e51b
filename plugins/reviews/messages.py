"""Messages of the reviews plugin: the facts it learns from other marketplace
services (consumed) and the events it publishes (REV-1 to REV-9).

Inbound facts carry the time they happened (`sent_at`, `changed_at`): the
plugin keeps that time, never the arrival time, so facts that arrive out of
order still give the right verdict for the moment that counts (see rules.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, Field, model_validator

from core.messages import Actor, MessageData, MessageType

#: REV-6: every review this plugin publishes is about a cancelled order and says so
LABEL = "cancelled_order"
LABEL_TEXT = "cancelled order"

# ---------------------------------------------------------------- consumed: facts from other services


class ConversationMessageSent(MessageData):
    """The conversation service: one message between the parties of an order (REV-1)."""

    order_id: str = Field(min_length=1, max_length=100)
    sender_id: str = Field(min_length=1, max_length=200)
    recipient_id: str = Field(min_length=1, max_length=200)
    sent_at: AwareDatetime
    message_id: str | None = Field(
        default=None, max_length=200,
        description="The conversation service's id of the message: the same message reported twice counts once.")


class SellerStatusChanged(MessageData):
    """The accounts service: a user's seller account became active or inactive (REV-3)."""

    user_id: str = Field(min_length=1, max_length=200)
    active: bool
    changed_at: AwareDatetime


class ReviewRightChanged(MessageData):
    """The platform withdrew (or restored) a buyer's right to review cancelled orders (REV-3)."""

    user_id: str = Field(min_length=1, max_length=200)
    withdrawn: bool
    changed_at: AwareDatetime
    reason: str | None = Field(default=None, max_length=2000,
                               description="Why; required when the right is withdrawn (the terms broken).")

    @model_validator(mode="after")
    def _a_withdrawal_says_why(self) -> ReviewRightChanged:
        if self.withdrawn and not (self.reason and self.reason.strip()):
            raise ValueError("a withdrawal needs a reason: the terms the buyer broke")
        return self


# ---------------------------------------------------------------- published


class ReviewPublished(MessageData):
    review_id: str
    order_id: str
    buyer_id: str
    seller_id: str
    rating: int = Field(ge=1, le=5)
    text: str
    label: Literal["cancelled_order"] = LABEL
    published_at: datetime
    #: REV-4: the buyer's window closes then; the seller may reply from then on (REV-5)
    window_closes_at: datetime
    rule: str = "REV-4"


class ReviewReplyPublished(MessageData):
    review_id: str
    order_id: str
    buyer_id: str
    seller_id: str
    text: str
    replied_at: datetime
    rule: str = "REV-5"


class ReviewRemoved(MessageData):
    """A statement of reasons to the review's author (REV-8): `addressed_to` is the buyer."""

    review_id: str
    order_id: str
    buyer_id: str
    seller_id: str
    rating: int = Field(ge=1, le=5)
    reason: str
    removed_by: Actor
    removed_at: datetime
    addressed_to: str
    statement: str
    rule: str = "REV-8"


MESSAGE_TYPES: tuple[MessageType, ...] = (
    MessageType("conversation.message_sent", ConversationMessageSent,
                "A message between the buyer and the seller of an order; a buyer left unanswered for more than "
                "24 h makes a cancelled order reviewable.", "consume", rules=("REV-1",)),
    MessageType("account.seller_status_changed", SellerStatusChanged,
                "A user's seller account became active or inactive; a buyer with an active seller account cannot "
                "review a cancelled order.", "consume", rules=("REV-3",)),
    MessageType("account.review_right_changed", ReviewRightChanged,
                "The platform withdrew or restored a buyer's right to review cancelled orders (terms broken).",
                "consume", rules=("REV-3",)),
    MessageType("review.published", ReviewPublished,
                "The buyer reviewed a cancelled order, inside the window; labelled \"cancelled order\".",
                "publish", rules=("REV-1", "REV-2", "REV-3", "REV-4", "REV-6", "REV-9")),
    MessageType("review.reply_published", ReviewReplyPublished,
                "The seller replied to a review, once, after the buyer's window closed.", "publish",
                rules=("REV-5", "REV-7")),
    MessageType("review.removed", ReviewRemoved,
                "Support removed a review that breaks the terms; the reason is kept and told to the author.",
                "publish", rules=("REV-8",)),
)
