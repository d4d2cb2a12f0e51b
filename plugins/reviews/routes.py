"""HTTP routes of the reviews plugin (REV-1 to REV-9)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from core.errors import InvalidInput
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
              roles=BUYER_OR_STAFF, rules=("REV-1", "REV-2", "REV-3", "REV-4", "REV-9"), tags=tags),
        Route("POST", "/orders/{order_id}/review", publish_review,
              "The buyer reviews the cancelled order (rating 1-5 and text), once, inside the window; the "
              "review carries the label \"cancelled order\". The seller is refused (REV-7).",
              roles=frozenset({"buyer", "seller"}), body=ReviewBody, status=201,
              rules=("REV-1", "REV-2", "REV-3", "REV-4", "REV-6", "REV-7", "REV-9"), tags=tags),
        Route("GET", "/orders/{order_id}/review", get_review,
              "The order's review, for its parties and staff; its author and staff also see why support "
              "removed it.", rules=("REV-6", "REV-8"), tags=tags),
        Route("POST", "/orders/{order_id}/review/reply", reply_to_review,
              "The seller replies to the review, once, publicly, after the buyer's window closed.",
              roles=frozenset({"seller", "buyer"}), body=ReplyBody, rules=("REV-5", "REV-7"), tags=tags),
        Route("POST", "/reviews/{review_id}/removal", remove_review,
              "Support removes a review that breaks the terms; the reason is kept on record and sent to "
              "the author (a statement of reasons).",
              roles=SUPPORT, body=RemovalBody, rules=("REV-8",), tags=tags),
        Route("GET", "/sellers/{seller_id}/reviews", seller_reviews,
              "A seller's published reviews, newest first (public, no token): each cancelled-order review "
              "with its label and the seller's reply (?limit=1..100, default 20).",
              roles=None, rules=("REV-5", "REV-6", "REV-8"), tags=tags, query=("limit",)),
    ]
