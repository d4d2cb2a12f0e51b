"""What the reviews plugin does: learn facts from the bus, answer the eligibility
query, publish reviews, replies and removals (REV-1 to REV-9).

Each command decides on one document and writes it once, with its event in the
document's outbox (core.outbox); the event is published right after, or by the
sweeper if this process dies in between.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from pymongo.errors import DuplicateKeyError

from core.bus import Subscription
from core.errors import Conflict, Forbidden, NotFound, RuleViolation
from core.messages import Actor, Envelope, MessageData, make_envelope
from core.outbox import Effect
from core.store import update_guarded
from plugins.reviews.messages import (
    LABEL,
    LABEL_TEXT,
    ConversationMessageSent,
    ReviewPublished,
    ReviewRemoved,
    ReviewReplyPublished,
    ReviewRightChanged,
    SellerStatusChanged,
)
from plugins.reviews.repository import (
    BUYERS,
    KEEP_MESSAGES,
    ORDERS,
    REVIEWS,
    Repository,
    fact_time,
    merge,
    push,
    review_id_for,
)
from plugins.reviews.rules import Eligibility, OrderFacts, evaluate

log = structlog.get_logger("rescenter.reviews")

NAME = "reviews"
STAFF = frozenset({"support", "admin", "service"})

ORDER_EVENTS = (
    "order.placed",
    "order.requirements_submitted",
    "order.delivered",
    "order.late",
    "order.delivery_extended",
    "order.amended",
    "order.completed",
    "order.cancelled",
)
INBOUND_FACTS = ("conversation.message_sent", "account.seller_status_changed", "account.review_right_changed")
#: DSP-5: an update request the seller let expire counts as unanswered (REV-1); the disputes plugin defines it
DISPUTE_EXPIRED = "dispute.request_expired"

WRITE_ATTEMPTS = 8


class Reviews:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.repo = Repository(services.store)
        self.policy = services.settings.policy.reviews
        self.clock = services.clock

    # ------------------------------------------------------------ facts from the bus

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(types=(*ORDER_EVENTS, *INBOUND_FACTS, DISPUTE_EXPIRED), handler=self.on_message)]

    async def on_message(self, envelope: Envelope, data: MessageData) -> None:
        """Keep the fact with the time it happened (the data's own time, else the envelope's)."""
        at = fact_time(envelope.time)
        mid = envelope.id
        if envelope.type in ORDER_EVENTS:
            await self._on_order_event(envelope.type, data, at, mid)
        elif isinstance(data, ConversationMessageSent):
            entry = {"key": data.message_id or mid, "sender_id": data.sender_id,
                     "recipient_id": data.recipient_id, "sent_at": fact_time(data.sent_at)}
            await self.repo.record_order_fact(data.order_id, push("messages", entry, KEEP_MESSAGES), message_id=mid)
        elif isinstance(data, SellerStatusChanged):
            entry = {"at": fact_time(data.changed_at), "on": data.active}
            await self.repo.record_buyer_fact(data.user_id, push("seller_account", entry), message_id=mid)
        elif isinstance(data, ReviewRightChanged):
            entry = {"at": fact_time(data.changed_at), "on": data.withdrawn, "reason": data.reason}
            await self.repo.record_buyer_fact(data.user_id, push("review_right", entry), message_id=mid)
            log.info("review right changed", user_id=data.user_id, withdrawn=data.withdrawn)
        elif envelope.type == DISPUTE_EXPIRED:
            await self._on_request_expired(data, at, mid)

    async def _on_order_event(self, type_: str, data: Any, at: datetime, mid: str) -> None:
        parties = {"$set": {"buyer_id": data.buyer_id, "seller_id": data.seller_id}}
        update = merge(parties, push("states", {"state": data.state, "at": at}))
        if type_ == "order.requirements_submitted" or (
                type_ in ("order.delivery_extended", "order.amended", "order.late") and data.due_at is not None):
            due = {"set_at": at, "due_at": fact_time(data.due_at), "source": type_}
            update = merge(update, push("due_dates", due))
        elif type_ == "order.delivered":
            update = merge(update, push("deliveries", {"at": at, "number": data.delivery_number}))
        elif type_ == "order.cancelled":
            update = merge(update, {"$set": {"cancelled": {"at": at, "cause": data.cause,
                                                           "requested_by": data.requested_by}}})
        elif type_ == "order.completed":
            update = merge(update, {"$set": {"completed_at": at}})
            # REV-2 counts the buyer's completed orders: kept on the buyer too.
            await self.repo.record_buyer_fact(
                data.buyer_id, push("completed_orders", {"order_id": data.order_id, "at": at}), message_id=mid)
        await self.repo.record_order_fact(data.order_id, update, message_id=mid)

    async def _on_request_expired(self, data: Any, at: datetime, mid: str) -> None:
        # Only the buyer's update request left unanswered by the seller counts (DSP-5 -> REV-1).
        if getattr(data, "kind", None) != "update_request" or getattr(data, "outcome", None) != "unanswered":
            return
        if getattr(data, "silent_party", "seller") != "seller":
            return
        expired_at = getattr(data, "expired_at", None)
        entry = {"request_id": str(getattr(data, "request_id", mid)),
                 "at": fact_time(expired_at) if isinstance(expired_at, datetime) else at}
        await self.repo.record_order_fact(data.order_id, push("seller_silences", entry), message_id=mid)
        log.info("seller silence recorded", order_id=data.order_id, dispute_request_id=entry["request_id"])

    # ------------------------------------------------------------ REV-9: the eligibility query

    async def eligibility(self, order_id: str, actor: Actor) -> Eligibility:
        order = await self._order_for(order_id, actor)
        if actor.role not in STAFF and actor.id != order.buyer_id:
            raise Forbidden("only the order's buyer (and support) can ask whether it can be reviewed",
                            rule="REV-9", order_id=order_id)
        return await self._evaluate(order)

    async def _evaluate(self, order: OrderFacts) -> Eligibility:
        buyer = await self.repo.buyer_facts(order.buyer_id)
        existing = await self.repo.review(review_id_for(order.order_id))
        return evaluate(order, buyer, self.policy, self.clock.now(),
                        review_id=existing["_id"] if existing else None)

    async def _order_for(self, order_id: str, actor: Actor) -> OrderFacts:
        order = await self.repo.order_facts(order_id)
        if order is None or (actor.role not in STAFF and actor.id not in (order.buyer_id, order.seller_id)):
            # 404 either way: a stranger learns nothing, not even that the order exists.
            raise NotFound(f"no order {order_id!r}", order_id=order_id)
        return order

    # ------------------------------------------------------------ the buyer's review

    async def publish(self, order_id: str, actor: Actor, *, rating: int, text: str,
                      request_key: str | None = None) -> dict[str, Any]:
        order = await self._order_for(order_id, actor)
        if actor.id == order.seller_id and actor.id != order.buyer_id:
            raise RuleViolation("the seller cannot review the buyer of a cancelled order; the seller may only "
                                "reply to the buyer's review once its window has closed", rule="REV-7",
                                order_id=order_id)
        if actor.id != order.buyer_id:
            raise Forbidden("only the order's buyer can review it", order_id=order_id)
        review_id = review_id_for(order_id)
        existing = await self.repo.review(review_id)
        if existing is not None:
            return self._again(existing, request_key)
        eligibility = await self._evaluate(order)
        if eligibility.review_id is not None:
            # Another request of the same buyer published it since our first look (REV-9).
            existing = await self.repo.review(eligibility.review_id)
            if existing is not None:
                return self._again(existing, request_key)
        if not eligibility.eligible:
            first = eligibility.refusals[0]
            log.info("review refused", order_id=order_id, rules=[r.rule for r in eligibility.refusals])
            raise RuleViolation(
                f"this order cannot be reviewed: {first.reason}", rule=first.rule, order_id=order_id,
                refusals=[{"rule": r.rule, "reason": r.reason} for r in eligibility.refusals],
                window_closes_at=eligibility.window_closes_at,
            )
        now = self.clock.now()
        assert eligibility.window_closes_at is not None
        event = ReviewPublished(
            review_id=review_id, order_id=order_id, buyer_id=order.buyer_id, seller_id=order.seller_id,
            rating=rating, text=text, label=LABEL, published_at=now,
            window_closes_at=eligibility.window_closes_at,
        )
        doc: dict[str, Any] = {
            "_id": review_id,
            "order_id": order_id,
            "buyer_id": order.buyer_id,
            "seller_id": order.seller_id,
            "rating": rating,
            "text": text,
            "label": LABEL,  # REV-6
            "published_at": now,
            "cancelled_at": order.cancelled_at,
            "window_closes_at": eligibility.window_closes_at,
            "reply": None,
            "removal": None,
            "request_key": request_key,
            # What the decision rested on, for support: each condition as it stood then.
            "eligibility": eligibility.as_dict(),
            "_version": 1,
            "_applied": [],
            **self.services.outbox.initial([Effect.publish(self._envelope("review.published", event, order_id))]),
        }
        try:
            await self.repo.reviews.insert_one(doc)
        except DuplicateKeyError:
            # Another request of the same buyer won the race (REV-9).
            existing = await self.repo.review(review_id)
            assert existing is not None
            return self._again(existing, request_key)
        await self._flush(doc)
        log.info("review published", order_id=order_id, review_id=review_id, rating=rating)
        return doc

    def _again(self, existing: dict[str, Any], request_key: str | None) -> dict[str, Any]:
        """REV-9: one review per order; the same request repeated (Idempotency-Key) gets the same answer."""
        if request_key is not None and existing.get("request_key") == request_key:
            return existing
        raise RuleViolation("this order already has its review: one review per order", rule="REV-9",
                            order_id=existing["order_id"], review_id=existing["_id"])

    # ------------------------------------------------------------ REV-5: the seller's reply

    async def reply(self, order_id: str, actor: Actor, *, text: str) -> dict[str, Any]:
        order = await self._order_for(order_id, actor)
        if actor.id != order.seller_id:
            raise Forbidden("only the order's seller replies to its review", rule="REV-5", order_id=order_id)
        review_id = review_id_for(order_id)
        for _ in range(WRITE_ATTEMPTS):
            review = await self.repo.review(review_id)
            if review is None:
                raise NotFound("this order has no review to reply to", order_id=order_id)
            if review.get("removal"):
                raise RuleViolation("support removed this review; there is nothing to reply to", rule="REV-8",
                                    review_id=review_id)
            if review.get("reply"):
                if review["reply"]["text"] == text:
                    return review  # the same reply sent again: nothing changes
                raise RuleViolation("the seller replies once; this review already has its reply", rule="REV-5",
                                    review_id=review_id, replied_at=review["reply"]["at"])
            now = self.clock.now()
            if now < review["window_closes_at"]:
                raise RuleViolation(
                    f"the seller may reply once the buyer's window has closed, on "
                    f"{review['window_closes_at'].isoformat()}", rule="REV-5",
                    review_id=review_id, window_closes_at=review["window_closes_at"])
            event = ReviewReplyPublished(review_id=review_id, order_id=order_id, buyer_id=review["buyer_id"],
                                         seller_id=review["seller_id"], text=text, replied_at=now)
            written = await self._write(review, {"$set": {"reply": {"text": text, "at": now}}},
                                        self._envelope("review.reply_published", event, order_id))
            if written is not None:
                log.info("review reply published", order_id=order_id, review_id=review_id)
                return written
        raise Conflict("the review is changing too fast; try again", review_id=review_id)

    # ------------------------------------------------------------ REV-8: support removes a review

    async def remove(self, review_id: str, actor: Actor, *, reason: str) -> dict[str, Any]:
        for _ in range(WRITE_ATTEMPTS):
            review = await self.repo.review(review_id)
            if review is None:
                raise NotFound(f"no review {review_id!r}", review_id=review_id)
            if review.get("removal"):
                if review["removal"]["reason"] == reason:
                    return review  # the same removal again: nothing changes
                raise RuleViolation("this review was already removed, for another reason (kept on record)",
                                    rule="REV-8", review_id=review_id, removed_at=review["removal"]["at"])
            now = self.clock.now()
            statement = (f"Your review of a cancelled order (rated {review['rating']}/5, published on "
                         f"{review['published_at'].date().isoformat()}) was removed by support on "
                         f"{now.date().isoformat()} because it breaks the terms: {reason}")
            removal = {"reason": reason, "by": actor.model_dump(), "at": now, "statement": statement}
            event = ReviewRemoved(review_id=review_id, order_id=review["order_id"], buyer_id=review["buyer_id"],
                                  seller_id=review["seller_id"], rating=review["rating"], reason=reason,
                                  removed_by=actor, removed_at=now, addressed_to=review["buyer_id"],
                                  statement=statement)
            written = await self._write(review, {"$set": {"removal": removal}},
                                        self._envelope("review.removed", event, review["order_id"]))
            if written is not None:
                log.info("review removed", review_id=review_id, order_id=review["order_id"], by=actor.id)
                return written
        raise Conflict("the review is changing too fast; try again", review_id=review_id)

    # ------------------------------------------------------------ reading

    async def review_of(self, order_id: str, actor: Actor) -> dict[str, Any]:
        order = await self._order_for(order_id, actor)
        review = await self.repo.review(review_id_for(order_id))
        if review is None:
            raise NotFound("this order has no review", order_id=order_id)
        return party_view(review, actor, author=order.buyer_id)

    async def seller_reviews(self, seller_id: str, *, limit: int) -> list[dict[str, Any]]:
        return [public_view(doc) for doc in await self.repo.seller_reviews(seller_id, limit=limit)]

    # ------------------------------------------------------------ the write

    def _envelope(self, type_: str, data: MessageData, order_id: str) -> Envelope:
        return make_envelope(type_, data, subject=order_id, time=self.clock.now())

    async def _write(self, review: dict[str, Any], update: dict[str, Any], envelope: Envelope) -> dict[str, Any] | None:
        """One version-guarded write with its event; None when someone changed the review first."""
        self.services.outbox.stage(update, [Effect.publish(envelope)])
        written = await update_guarded(self.repo.reviews, review["_id"], update, version=review["_version"])
        if written is not None:
            await self._flush(written)
        return written

    async def _flush(self, doc: dict[str, Any]) -> None:
        """The change is stored: if publishing fails now, the outbox sweeper publishes later."""
        try:
            await self.services.outbox.flush(REVIEWS, doc)
        except Exception as exc:
            log.warning("publish deferred to the outbox sweeper", review_id=doc["_id"], error=repr(exc))


# ---------------------------------------------------------------- views


def public_view(review: dict[str, Any]) -> dict[str, Any]:
    """What anyone may read: the review with its label (REV-6) and the seller's reply (REV-5)."""
    reply = review.get("reply")
    return {
        "review_id": review["_id"],
        "seller_id": review["seller_id"],
        "author_id": review["buyer_id"],
        "rating": review["rating"],
        "text": review["text"],
        "label": review["label"],
        "label_text": LABEL_TEXT,
        "published_at": review["published_at"],
        "reply": {"text": reply["text"], "replied_at": reply["at"]} if reply else None,
    }


def party_view(review: dict[str, Any], actor: Actor, *, author: str) -> dict[str, Any]:
    """The order's parties and staff also see the window and whether support removed it;
    the reason (the statement of reasons, REV-8) goes to the author and staff only."""
    view = public_view(review)
    view.update(order_id=review["order_id"], buyer_id=review["buyer_id"],
                window_closes_at=review["window_closes_at"],
                status="removed" if review.get("removal") else "published")
    removal = review.get("removal")
    if removal:
        view["removal"] = {"removed_at": removal["at"]}
        if actor.id == author or actor.role in STAFF:
            view["removal"].update(reason=removal["reason"], statement=removal["statement"])
        if actor.role in STAFF:
            view["removal"]["removed_by"] = removal["by"]
    if actor.role in STAFF:
        view["eligibility"] = review.get("eligibility")
    return view


__all__ = ["NAME", "Reviews", "BUYERS", "ORDERS", "REVIEWS", "party_view", "public_view"]
