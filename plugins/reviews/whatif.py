"""What-if replay of the reviews policy (REV-1, REV-2, REV-4): every cancelled order's
eligibility decided twice by the same rules (`rules.evaluate`), under the current and
the proposed `policy.reviews`, as of the same instant, and the orders whose verdict moves.

The plugin's own facts are read in pages of cancelled orders (by `_id`), each page with
its buyers' facts and its reviews (REV-9) in one read each. Nothing is written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.store import Store
from core.whatif import PolicyReplay, ReplayRequest, Table
from plugins.reviews.repository import BUYERS, ORDERS, REVIEWS, buyer_facts_of, order_facts_of, review_id_for
from plugins.reviews.routes import Condition as ConditionView
from plugins.reviews.rules import Eligibility, RuleVerdict, evaluate

KEYS = (
    "policy.reviews.late_threshold",
    "policy.reviews.unanswered_threshold",
    "policy.reviews.min_completed_orders",
    "policy.reviews.review_window",
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VerdictView(_Model):
    rule: str
    satisfied: bool
    requirement: str
    conditions: list[ConditionView]


class RuleMove(_Model):
    rule: str
    before: VerdictView = Field(description="Now.")
    after: VerdictView = Field(description="Under the proposed policy.")


class EligibilityMove(_Model):
    order_id: str
    buyer_id: str
    seller_id: str
    cancelled_at: datetime
    eligible_before: bool
    eligible_after: bool
    window_closes_at_before: datetime | None = Field(description="The end of the window now (REV-4).")
    window_closes_at_after: datetime | None = Field(description="... and under the proposed policy.")
    review_id: str | None = Field(description="Its review, when published by `at` (REV-9: refused either way).")
    rules: list[RuleMove] = Field(description="The rules whose verdict changes, each with its conditions.")


class ReviewsWhatIf(_Model):
    """Cancelled orders whose review eligibility would change under the proposed policy."""

    orders_total: int = Field(description="Cancelled orders (up to `at`) replayed.")
    orders_moved: int = Field(description="Orders where eligibility or a rule's verdict changes.")
    became_eligible: int
    became_ineligible: int
    orders_left_off: int = Field(description="Orders that move but are not listed (beyond `limit`).")
    orders: list[EligibilityMove] = Field(description="The orders that move, by cancellation time, newest first, "
                                                      "up to `limit`.")


def _verdict(verdict: RuleVerdict) -> VerdictView:
    return VerdictView.model_validate(verdict.as_dict())


def compare(before: Eligibility, after: Eligibility) -> list[RuleMove]:
    return [RuleMove(rule=was.rule, before=_verdict(was), after=_verdict(now))
            for was, now in zip(before.rules, after.rules, strict=True) if was.satisfied != now.satisfied]


async def replay(store: Store, request: ReplayRequest) -> ReviewsWhatIf:
    current, proposed, at = request.current.reviews, request.proposed.reviews, request.at
    orders, buyers, reviews = store.collection(ORDERS), store.collection(BUYERS), store.collection(REVIEWS)
    query: dict[str, Any] = {"cancelled.at": {"$lte": at}}
    if request.sellers:
        query["seller_id"] = {"$in": sorted(set(request.sellers))}
    task = request.progress.task("reviews: cancelled orders", await orders.count_documents(query))
    moved: list[EligibilityMove] = []
    total = count_moved = became_eligible = became_ineligible = 0
    last_id: str | None = None
    while True:
        page_query = {**query, "_id": {"$gt": last_id}} if last_id is not None else query
        page = await orders.find(page_query, {"_applied": 0}).sort("_id", 1).limit(request.page_size).to_list()
        if not page:
            break
        last_id = page[-1]["_id"]
        buyer_ids = sorted({doc["buyer_id"] for doc in page if doc.get("buyer_id")})
        buyer_docs = {d["_id"]: d async for d in buyers.find({"_id": {"$in": buyer_ids}}, {"_applied": 0})}
        published = {d["_id"] async for d in reviews.find(
            {"_id": {"$in": [review_id_for(doc["_id"]) for doc in page]}, "published_at": {"$lte": at}}, {"_id": 1})}
        for doc in page:
            facts = order_facts_of(doc)
            task.advance(1)
            if facts is None:
                continue
            total += 1
            buyer = buyer_facts_of(facts.buyer_id, buyer_docs.get(facts.buyer_id))
            review_id = review_id_for(facts.order_id)
            review_id = review_id if review_id in published else None
            before = evaluate(facts, buyer, current, at, review_id=review_id)
            after = evaluate(facts, buyer, proposed, at, review_id=review_id)
            rules = compare(before, after)
            if not rules and before.eligible == after.eligible:
                continue
            count_moved += 1
            became_eligible += after.eligible and not before.eligible
            became_ineligible += before.eligible and not after.eligible
            assert facts.cancelled_at is not None
            moved.append(EligibilityMove(
                order_id=facts.order_id, buyer_id=facts.buyer_id, seller_id=facts.seller_id,
                cancelled_at=facts.cancelled_at, eligible_before=before.eligible, eligible_after=after.eligible,
                window_closes_at_before=before.window_closes_at, window_closes_at_after=after.window_closes_at,
                review_id=review_id, rules=rules))
            if len(moved) > 2 * request.limit:  # bounded: keep the newest cancellations
                moved = _newest(moved, request.limit)
    listed = _newest(moved, request.limit)
    return ReviewsWhatIf(orders_total=total, orders_moved=count_moved, became_eligible=became_eligible,
                         became_ineligible=became_ineligible, orders_left_off=count_moved - len(listed),
                         orders=listed)


def _newest(moves: list[EligibilityMove], limit: int) -> list[EligibilityMove]:
    return sorted(moves, key=lambda m: (m.cancelled_at, m.order_id), reverse=True)[:limit]


def _verdicts(move: EligibilityMove) -> str:
    return "; ".join(
        f"{rule.rule} {'holds' if rule.before.satisfied else 'fails'} -> "
        f"{'holds' if rule.after.satisfied else 'fails'}: "
        + ", ".join(c.detail for c in rule.after.conditions if c.holds == rule.after.satisfied or rule.rule == "REV-1")
        for rule in move.rules)


def tables(answer: ReviewsWhatIf) -> list[Table]:
    rows = [[m.order_id, m.buyer_id, m.seller_id, m.cancelled_at.isoformat(),
             f"{'yes' if m.eligible_before else 'no'} -> {'yes' if m.eligible_after else 'no'}", _verdicts(m)]
            for m in answer.orders]
    return [(f"reviews: {answer.orders_moved} of {answer.orders_total} cancelled orders move "
             f"({answer.became_eligible} become eligible, {answer.became_ineligible} ineligible; "
             f"{len(answer.orders)} listed, {answer.orders_left_off} left off)",
             ["order", "buyer", "seller", "cancelled at", "eligible", "rules that change"], rows)]


def policy_replay() -> PolicyReplay:
    return PolicyReplay(section="reviews", keys=KEYS, answer=ReviewsWhatIf, run=replay, tables=tables,
                        description="Cancelled orders whose review eligibility (REV-1, REV-2, REV-4) changes "
                                    "under the proposed policy, condition by condition.")
