"""HTTP routes of the reviews plugin (REV-1 to REV-9)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from core.errors import InvalidInput
from core.http.responses import ActorView, OrderState, View
from core.http.routes import Body, Call, Route
from plugins.reviews.commands import Reviews, party_view

BUYER_OR_STAFF = frozenset({"buyer", "seller", "support", "admin", "service"})
SUPPORT = frozenset({"support", "admin"})
MAX_LISTED = 100


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


class ReviewBody(Body):
    rating: int = Field(ge=1, le=5, strict=True, description="1 (worst) to 5 (best).")
    text: str = Field(min_length=1, max_length=5_000)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        return _not_blank(value)


class ReplyBody(Body):
    text: str = Field(min_length=1, max_length=5_000)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        return _not_blank(value)


class RemovalBody(Body):
    reason: str = Field(min_length=1, max_length=2_000,
                        description="Which terms the review breaks: kept on record and told to its author.")

    @field_validator("reason")
    @classmethod
    def _reason_not_blank(cls, value: str) -> str:
        return _not_blank(value)


# ---------------------------------------------------------------- answers


class Condition(View):
    name: str
    holds: bool
    detail: str = Field(description="Why it holds or not, in words.")
    facts: dict[str, Any] = Field(description="The facts and times the verdict rests on.")


class RuleVerdict(View):
    rule: str
    satisfied: bool
    requirement: str
    conditions: list[Condition]


class Refusal(View):
    rule: str
    reason: str


class Eligibility(View):
    """Whether the buyer may review the cancelled order, condition by condition (REV-1 to REV-4, REV-9)."""

    order_id: str
    as_of: datetime
    state: OrderState | None = Field(description="The order's state as the plugin knows it.")
    cancelled_at: datetime | None
    eligible: bool
    window_closes_at: datetime | None = Field(description="The end of the 5-day window (REV-4).")
    window_open: bool
    review_id: str | None = Field(description="The order's review, once there is one (REV-9).")
    refusals: list[Refusal] = Field(description="Empty when eligible.")
    rules: list[RuleVerdict]


class Reply(View):
    text: str
    replied_at: datetime


class PublicReview(View):
    """A review as anyone reads it: its label (REV-6) and the seller's reply (REV-5)."""

    review_id: str
    seller_id: str
    author_id: str
    rating: int = Field(ge=1, le=5)
    text: str
    label: Literal["cancelled_order"]
    label_text: str
    published_at: datetime
    reply: Reply | None


class Removal(View):
    removed_at: datetime
    reason: str | None = Field(default=None, description="The review's author and staff only (REV-8).")
    statement: str | None = Field(default=None, description="The statement of reasons: the author and staff only.")
    removed_by: ActorView | None = Field(default=None, description="Staff only.")


class Review(PublicReview):
    """The order's review as its parties and staff read it."""

    order_id: str
    buyer_id: str
    window_closes_at: datetime
    status: Literal["published", "removed"]
    removal: Removal | None = Field(default=None, description="Present once support removed it (REV-8).")
    eligibility: Eligibility | None = Field(default=None, description="Staff only: the eligibility it was "
                                                                      "published on.")


class SellerReviews(View):
    seller_id: str
    reviews: list[PublicReview] = Field(description="Newest first; removed reviews are not listed.")


def routes() -> list[Route]:
    async def review_eligibility(call: Call) -> dict[str, Any]:
        eligibility = await Reviews(call.services).eligibility(call.match["order_id"], call.actor("buyer"))
        return eligibility.as_dict()

    async def publish_review(call: Call) -> dict[str, Any]:
        body: ReviewBody = call.body
        actor = call.actor("buyer")
        review = await Reviews(call.services).publish(call.match["order_id"], actor, rating=body.rating,
                                                      text=body.text, request_key=call.idempotency_key)
        return party_view(review, actor, author=review["buyer_id"])

    async def get_review(call: Call) -> dict[str, Any]:
        return await Reviews(call.services).review_of(call.match["order_id"], call.actor())

    async def reply_to_review(call: Call) -> dict[str, Any]:
        actor = call.actor("seller")
        review = await Reviews(call.services).reply(call.match["order_id"], actor, text=call.body.text)
        return party_view(review, actor, author=review["buyer_id"])

    async def remove_review(call: Call) -> dict[str, Any]:
        actor = call.actor()
        review = await Reviews(call.services).remove(call.match["review_id"], actor, reason=call.body.reason)
        return party_view(review, actor, author=review["buyer_id"])

    async def seller_reviews(call: Call) -> dict[str, Any]:
        raw = call.request.query.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LISTED:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LISTED}")
        seller_id = call.match["seller_id"]
        reviews = await Reviews(call.services).seller_reviews(seller_id, limit=int(raw))
        return {"seller_id": seller_id, "reviews": reviews}

    tags = ("reviews",)
    return [
        Route("GET", "/orders/{order_id}/review-eligibility", review_eligibility,
              "Whether the buyer can review this cancelled order, and why: each condition of REV-1 to REV-3 "
              "with its verdict and facts, the window (REV-4), an existing review (REV-9).",
              roles=BUYER_OR_STAFF, response=Eligibility, rules=("REV-1", "REV-2", "REV-3", "REV-4", "REV-9"),
              tags=tags),
        Route("POST", "/orders/{order_id}/review", publish_review,
              "The buyer reviews the cancelled order (rating 1-5 and text), once, inside the window; the "
              "review carries the label \"cancelled order\". The seller is refused (REV-7).",
              roles=frozenset({"buyer", "seller"}), body=ReviewBody, response=Review, status=201,
              rules=("REV-1", "REV-2", "REV-3", "REV-4", "REV-6", "REV-7", "REV-9"), tags=tags),
        Route("GET", "/orders/{order_id}/review", get_review,
              "The order's review, for its parties and staff; its author and staff also see why support "
              "removed it.", response=Review, rules=("REV-6", "REV-8"), tags=tags),
        Route("POST", "/orders/{order_id}/review/reply", reply_to_review,
              "The seller replies to the review, once, publicly, after the buyer's window closed.",
              roles=frozenset({"seller", "buyer"}), body=ReplyBody, response=Review, rules=("REV-5", "REV-7"),
              tags=tags),
        Route("POST", "/reviews/{review_id}/removal", remove_review,
              "Support removes a review that breaks the terms; the reason is kept on record and sent to "
              "the author (a statement of reasons).",
              roles=SUPPORT, body=RemovalBody, response=Review, rules=("REV-8",), tags=tags),
        Route("GET", "/sellers/{seller_id}/reviews", seller_reviews,
              "A seller's published reviews, newest first (public, no token): each cancelled-order review "
              "with its label and the seller's reply (?limit=1..100, default 20).",
              roles=None, response=SellerReviews, rules=("REV-5", "REV-6", "REV-8"), tags=tags, query=("limit",),
              responses={"404": None}),  # any seller id: one never reviewed has an empty list
    ]
