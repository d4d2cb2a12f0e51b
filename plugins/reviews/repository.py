"""The reviews plugin's collections: its own copy of the facts it needs, and the reviews.

- `reviews_orders`: one document per order (`_id` = order id): the parties,
  due dates, deliveries, the cancellation, the conversation and the seller's
  silences in the resolution center, each fact with the time it happened.
- `reviews_buyers`: one document per user (`_id` = user id): the orders they
  completed as a buyer, their seller-account switches and the platform's
  withdrawals of their right to review.
- `reviews_reviews`: one document per review (`_id` = review id, derived from
  the order id, so a second review of an order cannot be inserted: REV-9). It
  carries its pending events (`_outbox`).

Facts are appended, never overwritten, so they commute: whatever order they
arrive in, the same set is stored, and rules.py sorts them by the time they
happened. Each write is guarded by the message id (`_applied`): a redelivered
message changes nothing twice; rules.py also counts a fact reported twice once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, UpdateOne

from core.batching import Outcome
from core.store import Store, guard_filter, guarded_update
from plugins.reviews.rules import BuyerFacts, Change, DueDate, Message, OrderFacts, SellerSilence

ORDERS = "reviews_orders"
BUYERS = "reviews_buyers"
REVIEWS = "reviews_reviews"

#: How many facts of one kind a document keeps (the most recent arrivals): bounded documents.
#: A conversation keeps more, a longer one loses its oldest messages first.
KEEP = 200
KEEP_MESSAGES = 5000

FINAL_STATES = ("cancelled", "completed")


def review_id_for(order_id: str) -> str:
    """One review per order (REV-9): its id is the order's, so the store refuses a second one."""
    return f"rev-{order_id}"


def push(field: str, entry: dict[str, Any], keep: int = KEEP) -> dict[str, Any]:
    return {"$push": {field: {"$each": [entry], "$slice": -keep}}}


def merge(*updates: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for update in updates:
        for operator, fields in update.items():
            merged.setdefault(operator, {}).update(fields)
    return merged


class Repository:
    def __init__(self, store: Store) -> None:
        self.orders = store.collection(ORDERS)
        self.buyers = store.collection(BUYERS)
        self.reviews = store.collection(REVIEWS)
        self._batchers = {ORDERS: store.batcher(ORDERS), BUYERS: store.batcher(BUYERS)}

    async def create_indexes(self) -> None:
        # The public listing of a seller's reviews, newest first.
        await self.reviews.create_index([("seller_id", ASCENDING), ("published_at", DESCENDING)],
                                        name="reviews_by_seller")

    # ------------------------------------------------------------ facts

    async def record_order_fact(self, order_id: str, update: dict[str, Any], *, message_id: str) -> bool:
        return await self._record(ORDERS, order_id, update, message_id)

    async def record_buyer_fact(self, user_id: str, update: dict[str, Any], *, message_id: str) -> bool:
        return await self._record(BUYERS, user_id, update, message_id)

    async def _record(self, collection: str, doc_id: str, update: dict[str, Any], message_id: str) -> bool:
        """Apply `update` once per message; create the document the first time any fact names it
        (facts may come before the order's own events). False: this message was already applied.

        One guarded upsert (core.batching): applied to the document if it has not seen the
        message, creating it if it does not exist; refused as a duplicate `_id` if it has."""
        outcome = await self._batchers[collection].write(UpdateOne(
            guard_filter(doc_id, message_id=message_id),
            guarded_update(update, message_id=message_id),
            upsert=True,
        ))
        return outcome is Outcome.APPLIED

    async def order_facts(self, order_id: str) -> OrderFacts | None:
        """What the plugin knows of the order, or None while no order event named its parties."""
        return order_facts_of(await self.orders.find_one({"_id": order_id}, {"_applied": 0}))

    async def buyer_facts(self, user_id: str) -> BuyerFacts:
        return buyer_facts_of(user_id, await self.buyers.find_one({"_id": user_id}, {"_applied": 0}))

    # ------------------------------------------------------------ reviews

    async def review(self, review_id: str) -> dict[str, Any] | None:
        return await self.reviews.find_one({"_id": review_id}, {"_applied": 0})

    async def seller_reviews(self, seller_id: str, *, limit: int) -> list[dict[str, Any]]:
        cursor = (self.reviews.find({"seller_id": seller_id, "removal": None},
                                    {"_outbox": 0, "_applied": 0, "eligibility": 0})
                  .sort("published_at", DESCENDING).limit(limit))
        return await cursor.to_list()


def order_facts_of(doc: dict[str, Any] | None) -> OrderFacts | None:
    """An order's facts from its document; None while no order event named its parties."""
    if doc is None or not doc.get("buyer_id"):
        return None
    cancelled = doc.get("cancelled") or {}
    return OrderFacts(
        order_id=doc["_id"],
        buyer_id=doc["buyer_id"],
        seller_id=doc["seller_id"],
        state=_state(doc),
        cancelled_at=cancelled.get("at"),
        cancel_cause=cancelled.get("cause"),
        due_dates=tuple(DueDate(d["set_at"], d["due_at"], d["source"]) for d in doc.get("due_dates", [])),
        deliveries=tuple(d["at"] for d in doc.get("deliveries", [])),
        messages=tuple(Message(m["key"], m["sender_id"], m["recipient_id"], m["sent_at"])
                       for m in doc.get("messages", [])),
        seller_silences=tuple(SellerSilence(s["request_id"], s["at"]) for s in doc.get("seller_silences", [])),
    )


def buyer_facts_of(user_id: str, doc: dict[str, Any] | None) -> BuyerFacts:
    doc = doc or {}
    return BuyerFacts(
        buyer_id=user_id,
        completed_orders=tuple((c["order_id"], c["at"]) for c in doc.get("completed_orders", [])),
        seller_account=tuple(Change(c["at"], c["on"]) for c in doc.get("seller_account", [])),
        review_right=tuple(Change(c["at"], c["on"], c.get("reason")) for c in doc.get("review_right", [])),
    )


def _state(doc: dict[str, Any]) -> str | None:
    """Final states win whatever arrives after them; otherwise the latest state by the time it happened."""
    if doc.get("cancelled"):
        return "cancelled"
    if doc.get("completed_at"):
        return "completed"
    states: list[dict[str, Any]] = sorted(doc.get("states", []), key=lambda s: s["at"])
    return states[-1]["state"] if states else None


def fact_time(value: datetime) -> datetime:
    """BSON keeps milliseconds: store what we will read back, so equal instants stay equal."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)
