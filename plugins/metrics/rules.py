"""Pure decisions of the metrics plugin (MET-1 to MET-4): a seller's orders and
their facts (facts.py) and an instant in, figures out, each explained. No I/O, no clock:
the instant is given, and every fact after it is ignored, so the same function
gives the live figures (the projection's orders, now) and the figures "as of"
any past instant (facts folded from the event log up to it).

Windows are half-open, like every deadline of the service: a window of 60 days
that starts at `t` holds `t` and ends at `t + 60 days` exactly.

- MET-1: an order counts while it ended (completed or cancelled) in the rolling
  window `(at - completion_window, at]`; it leaves the window at
  `ended_at + completion_window`. Rate = completed / (completed + cancellations
  that count); no order in the window: no rate.
- MET-2: a cancellation does not count when the buyer had it cancelled while
  the order awaited requirements; when support flagged it (fraud, order placed
  by mistake; the latest revision of the flag at `at` decides); when it was a
  mutual cancellation and the same buyer placed a new order with the seller at
  or after the cancellation and before `cancelled_at +
  mutual_cancel_reorder_window` (that order must have been placed by `at`: the
  exclusion takes effect when the new order comes).
- MET-3: an accepted partial refund is shown on its order and changes nothing.
- MET-4: the success score combines the completion rate, on-time delivery,
  answers within resolution-center deadlines and review ratings over the same
  window, each with its policy weight. A factor without data is left out and
  its weight is shared by the others in proportion to theirs; no data at all:
  no score.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from core.settings import MetricsPolicy

AWAITING_REQUIREMENTS = "awaiting_requirements"

FactorName = Literal["completion_rate", "on_time_delivery", "answers_within_deadline", "review_rating"]
Orders = dict[str, dict[str, Any]]  # order id -> its facts (facts.py)


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class FlagView(_View):
    flag: str
    note: str
    by: str
    at: datetime
    revision: int


class RefundView(_View):
    request_id: str
    amount: str
    currency: str
    at: datetime


class OrderLine(_View):
    """One order behind the completion rate: counted or not, why, and until when."""

    order_id: str
    buyer_id: str | None
    outcome: Literal["completed", "cancelled"]
    ended_at: datetime
    counted: bool
    #: what decided it: completed, cancelled_by_support, chargeback, mutual_cancellation,
    #: cancelled, buyer_cancelled_awaiting_requirements, flagged_fraud,
    #: flagged_mistaken_order, mutual_cancellation_then_new_order
    reason: str
    rule: str
    explanation: str
    leaves_window_at: datetime
    cancel_cause: str | None = None
    cancel_requested_by: str | None = None
    cancelled_from: str | None = None
    flag: FlagView | None = None
    new_order_id: str | None = None
    #: a mutual cancellation still counting: excluded if the buyer orders again before this
    excluded_if_buyer_reorders_before: datetime | None = None
    partial_refunds: list[RefundView] = []


class CompletionRate(_View):
    rule: Literal["MET-1"] = "MET-1"
    #: completed / (completed + cancellations that count), in percent; None: no order ended in the window
    percent: float | None
    completed: int
    cancellations_counted: int
    cancellations_excluded: int
    window: timedelta
    window_start: datetime
    window_end: datetime
    explanation: str
    orders: list[OrderLine]


class FactorItem(_View):
    """One fact behind a success-score factor."""

    id: str
    order_id: str | None
    at: datetime
    good: bool | None = None
    rating: int | None = None
    detail: str
    leaves_window_at: datetime


class Factor(_View):
    name: FactorName
    rules: tuple[str, ...]
    #: the factor's own value in percent; None: no data in the window
    value: float | None
    #: the policy weight, and the share of the score it gets once factors without data are left out
    weight: float
    share: float
    #: points of the score (out of 100) this factor brings: share x value
    contribution: float
    data_points: int
    explanation: str
    items: list[FactorItem]


class SuccessScore(_View):
    rule: Literal["MET-4"] = "MET-4"
    #: out of 100; None when no factor has data
    score: float | None
    explanation: str
    factors: list[Factor]


class SellerFigures(_View):
    seller_id: str
    at: datetime
    #: live: the maintained projection; event_log: folded from the kept events up to `at`
    source: Literal["live", "event_log"]
    completion_rate: CompletionRate
    success_score: SuccessScore


# ---------------------------------------------------------------- helpers


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(length: timedelta) -> str:
    """A policy duration in words: "60 days", "36 hours"."""
    if length % timedelta(days=1) == timedelta(0):
        return f"{length.days} days"
    if length % timedelta(hours=1) == timedelta(0):
        return f"{int(length.total_seconds() // 3600)} hours"
    return str(length)


def _percent(value: Fraction | None) -> float | None:
    return None if value is None else round(float(value * 100), 2)


def _known(moment: datetime | None, at: datetime) -> bool:
    """A fact counts as of `at` once it happened."""
    return moment is not None and moment <= at


def _in_window(moment: datetime | None, at: datetime, window: timedelta) -> bool:
    return moment is not None and at - window < moment <= at


def current_flag(order: dict[str, Any], at: datetime) -> FlagView | None:
    """MET-2: the latest revision of the order's flag known at `at`; None if none or cleared."""
    known = [f for f in (order.get("flags") or {}).values() if _known(f["at"], at)]
    if not known:
        return None
    latest = max(known, key=lambda f: f["revision"])
    if latest["flag"] is None:
        return None
    return FlagView(flag=latest["flag"], note=latest["note"], by=latest["by"], at=latest["at"],
                    revision=latest["revision"])


# ---------------------------------------------------------------- MET-1, MET-2, MET-3


def completion_rate(orders_by_id: Orders, at: datetime, policy: MetricsPolicy) -> CompletionRate:
    window = policy.completion_window
    orders = list(orders_by_id.values())
    placed_by_buyer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for order in orders:
        if _known(order.get("placed_at"), at):
            placed_by_buyer[order["buyer_id"]].append(order)

    lines = []
    for order in orders:
        completed_at, cancelled_at = order.get("completed_at"), order.get("cancelled_at")
        if _in_window(completed_at, at, window):
            lines.append(_completed_line(order, completed_at, window, at))
        elif _in_window(cancelled_at, at, window):
            lines.append(_cancelled_line(order, cancelled_at, window, at, policy, placed_by_buyer))
    lines.sort(key=lambda line: (line.ended_at, line.order_id), reverse=True)

    completed = sum(1 for line in lines if line.outcome == "completed")
    counted = sum(1 for line in lines if line.outcome == "cancelled" and line.counted)
    excluded = sum(1 for line in lines if line.outcome == "cancelled" and not line.counted)
    rate = Fraction(completed, completed + counted) if completed + counted else None
    if rate is None:
        explanation = (f"No order ended in the last {_span(window)}"
                       + (f" that counts ({excluded} cancellations excluded)" if excluded else "")
                       + ": no completion rate yet.")
    else:
        explanation = (f"{completed} completed of {completed + counted} orders that count, over the "
                       f"{_span(window)} up to {_day(at)}"
                       + (f"; {excluded} cancellations excluded (MET-2)" if excluded else "") + ".")
    return CompletionRate(percent=_percent(rate), completed=completed, cancellations_counted=counted,
                          cancellations_excluded=excluded, window=window, window_start=at - window,
                          window_end=at, explanation=explanation, orders=lines)


def _refunds(order: dict[str, Any], at: datetime) -> list[RefundView]:
    refunds = [RefundView(**r) for r in (order.get("refunds") or {}).values() if _known(r["at"], at)]
    return sorted(refunds, key=lambda r: (r.at, r.request_id))


def _refund_note(refunds: list[RefundView]) -> str:
    if not refunds:
        return ""
    return " A partial refund was accepted on this order; it does not change the rate (MET-3)."


def _completed_line(order: dict[str, Any], completed_at: datetime, window: timedelta, at: datetime) -> OrderLine:
    refunds = _refunds(order, at)
    return OrderLine(
        order_id=order["order_id"], buyer_id=order.get("buyer_id"), outcome="completed", ended_at=completed_at,
        counted=True, reason="completed", rule="MET-1",
        explanation=f"Completed on {_day(completed_at)}: counts as a completion (MET-1)." + _refund_note(refunds),
        leaves_window_at=completed_at + window, partial_refunds=refunds)


def _cancelled_line(order: dict[str, Any], cancelled_at: datetime, window: timedelta, at: datetime,
                    policy: MetricsPolicy, placed_by_buyer: dict[str, list[dict[str, Any]]]) -> OrderLine:
    cause, requested_by = order.get("cancel_cause"), order.get("cancel_requested_by")
    common: dict[str, Any] = {
        "order_id": order["order_id"], "buyer_id": order.get("buyer_id"), "outcome": "cancelled",
        "ended_at": cancelled_at, "leaves_window_at": cancelled_at + window, "cancel_cause": cause,
        "cancel_requested_by": requested_by, "cancelled_from": order.get("cancelled_from"),
        "partial_refunds": _refunds(order, at),
    }
    when = f"Cancelled on {_day(cancelled_at)}"
    note = _refund_note(common["partial_refunds"])

    # MET-2, first case: the buyer cancelled while the order awaited requirements.
    if order.get("cancelled_from") == AWAITING_REQUIREMENTS and requested_by == "buyer":
        return OrderLine(**common, counted=False, reason="buyer_cancelled_awaiting_requirements", rule="MET-2",
                         explanation=f"{when} at the buyer's request while it awaited requirements: does not "
                                     f"count (MET-2)." + note)
    # MET-2, support's flags.
    flag = current_flag(order, at)
    if flag is not None:
        what = {"fraud": "fraud", "mistaken_order": "an order placed by mistake"}.get(flag.flag, flag.flag)
        return OrderLine(**common, counted=False, reason=f"flagged_{flag.flag}", rule="MET-2", flag=flag,
                         explanation=f"{when}; support flagged it as {what} on {_day(flag.at)}: does not count "
                                     f"(MET-2)." + note)
    # MET-2, a mutual cancellation followed by a new order from the same buyer.
    if cause == "mutual_agreement":
        reorder_by = cancelled_at + policy.mutual_cancel_reorder_window
        reorders = sorted(
            (o for o in placed_by_buyer.get(order.get("buyer_id") or "", ())
             if o["order_id"] != order["order_id"] and cancelled_at <= o["placed_at"] < reorder_by),
            key=lambda o: (o["placed_at"], o["order_id"]))
        if reorders:
            new = reorders[0]
            return OrderLine(**common, counted=False, reason="mutual_cancellation_then_new_order", rule="MET-2",
                             new_order_id=new["order_id"],
                             explanation=f"{when} by mutual agreement; the buyer placed a new order "
                                         f"({new['order_id']}) on {_day(new['placed_at'])}, within "
                                         f"{_span(policy.mutual_cancel_reorder_window)}: does not count "
                                         f"(MET-2)." + note)
        pending = reorder_by if at < reorder_by else None
        hint = (f" It stops counting if the buyer orders again before {_day(reorder_by)} (MET-2)."
                if pending else "")
        return OrderLine(**common, counted=True, reason="mutual_cancellation", rule="MET-1",
                         excluded_if_buyer_reorders_before=pending,
                         explanation=f"{when} by mutual agreement: counts as a cancellation (MET-1)." + hint + note)
    reason, words = {
        "support": ("cancelled_by_support", "by support"),
        "chargeback": ("chargeback", "after a chargeback"),
    }.get(cause or "", ("cancelled", ""))
    return OrderLine(**common, counted=True, reason=reason, rule="MET-1",
                     explanation=f"{when}{' ' + words if words else ''}: counts as a cancellation (MET-1)." + note)


# ---------------------------------------------------------------- MET-4


def on_time_items(orders: Orders, at: datetime, window: timedelta) -> list[FactorItem]:
    """An order's delivery is decided on time by its first delivery when it was not late
    (ORD-2), and late when it went late or its first delivery was late; decided in the window."""
    items = []
    for order in orders.values():
        deliveries = [d for d in (order.get("deliveries") or {}).values() if _known(d["at"], at)]
        first = min(deliveries, key=lambda d: d["number"]) if deliveries else None
        late_at = order.get("late_at") if _known(order.get("late_at"), at) else None
        if first is not None and not first["late"] and (late_at is None or first["at"] <= late_at):
            decided, good, detail = first["at"], True, "first delivery on time"
        elif late_at is not None:
            decided, good, detail = late_at, False, "not delivered by its due date"
        elif first is not None:
            decided, good, detail = first["at"], False, "first delivery after its due date"
        else:
            continue
        if _in_window(decided, at, window):
            items.append(FactorItem(id=order["order_id"], order_id=order["order_id"], at=decided, good=good,
                                    detail=detail, leaves_window_at=decided + window))
    return sorted(items, key=lambda i: (i.at, i.id), reverse=True)


def answer_items(orders: Orders, at: datetime, window: timedelta) -> list[FactorItem]:
    items = []
    for order_id, request in _nested(orders, "requests"):
        answered, missed = request.get("answered_at"), request.get("missed_at")
        if _known(answered, at):
            decided, good, detail = answered, True, f"{request['kind']}: answered in time"
        elif _known(missed, at):
            decided, good, detail = missed, False, f"{request['kind']}: left unanswered until its deadline"
        else:
            continue
        if _in_window(decided, at, window):
            items.append(FactorItem(id=request["request_id"], order_id=order_id, at=decided,
                                    good=good, detail=detail, leaves_window_at=decided + window))
    return sorted(items, key=lambda i: (i.at, i.id), reverse=True)


def review_items(orders: Orders, at: datetime, window: timedelta) -> list[FactorItem]:
    items = []
    for order_id, review in _nested(orders, "reviews"):
        published = review.get("published_at")
        if not _in_window(published, at, window) or _known(review.get("removed_at"), at):
            continue  # REV-8: a removed review no longer counts
        items.append(FactorItem(id=review["review_id"], order_id=order_id, at=published,
                                rating=review["rating"], detail=f"{review['rating']} of 5 stars",
                                leaves_window_at=published + window))
    return sorted(items, key=lambda i: (i.at, i.id), reverse=True)


def _nested(orders: Orders, name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(order["order_id"], item) for order in orders.values() for item in (order.get(name) or {}).values()]


def success_score(orders: Orders, at: datetime, policy: MetricsPolicy,
                  completion: CompletionRate) -> SuccessScore:
    window = policy.completion_window
    weights = policy.success_score_weights
    completion_value = (Fraction(completion.completed, completion.completed + completion.cancellations_counted)
                        if completion.percent is not None else None)
    on_time = on_time_items(orders, at, window)
    answers = answer_items(orders, at, window)
    reviews = review_items(orders, at, window)

    def share_good(items: list[FactorItem]) -> Fraction | None:
        return Fraction(sum(1 for i in items if i.good), len(items)) if items else None

    mean_rating = Fraction(sum(i.rating or 0 for i in reviews), len(reviews)) if reviews else None
    # 1 star is 0 %, 5 stars 100 %: the whole scale, so a 1-star average weighs nothing.
    review_value = (mean_rating - 1) / 4 if mean_rating is not None else None
    rows: list[tuple[FactorName, tuple[str, ...], Fraction | None, int, str, list[FactorItem]]] = [
        ("completion_rate", ("MET-1", "MET-2", "MET-3"), completion_value,
         completion.completed + completion.cancellations_counted,
         "The completion rate; the orders behind it are under completion_rate.orders.", []),
        ("on_time_delivery", ("ORD-2",), share_good(on_time), len(on_time),
         f"{sum(1 for i in on_time if i.good)} of {len(on_time)} orders delivered on time.", on_time),
        ("answers_within_deadline", ("DSP-5", "DSP-9", "DSP-10"), share_good(answers), len(answers),
         f"{sum(1 for i in answers if i.good)} of {len(answers)} resolution-center requests to the seller "
         "answered before their deadline.", answers),
        ("review_rating", ("REV-4", "REV-8"), review_value, len(reviews),
         (f"{len(reviews)} reviews averaging {float(mean_rating):.2f} of 5 stars (1 star counts 0 %, 5 stars "
          "100 %)." if mean_rating is not None else "No review."), reviews),
    ]
    weight_of = {name: Fraction(str(getattr(weights, name))) for name, *_ in rows}
    with_data = sum((weight_of[name] for name, _, value, *_ in rows if value is not None), Fraction(0))
    factors = []
    total = Fraction(0)
    for name, rules, value, points, explanation, items in rows:
        share = weight_of[name] / with_data if value is not None and with_data else Fraction(0)
        contribution = share * value * 100 if value is not None else Fraction(0)
        total += contribution
        if value is None:
            explanation = f"No data in the window: left out, its weight shared by the other factors. {explanation}"
        factors.append(Factor(name=name, rules=rules, value=_percent(value), weight=float(weight_of[name]),
                              share=round(float(share), 4), contribution=round(float(contribution), 2),
                              data_points=points, explanation=explanation, items=items))
    if not with_data:
        return SuccessScore(score=None, factors=factors,
                            explanation=f"No factor has data (or weight) in the last {_span(window)}: no score.")
    score = round(float(total), 2)
    return SuccessScore(score=score, factors=factors,
                        explanation=f"Sum of each factor's value times its share, over the {_span(window)} "
                                    f"up to {_day(at)}; factors without data are left out and their weight is "
                                    "shared by the others in proportion.")


def seller_figures(seller_id: str, orders: Orders, at: datetime, policy: MetricsPolicy,
                   *, source: Literal["live", "event_log"]) -> SellerFigures:
    completion = completion_rate(orders, at, policy)
    return SellerFigures(seller_id=seller_id, at=at, source=source, completion_rate=completion,
                         success_score=success_score(orders, at, policy, completion))


# ---------------------------------------------------------------- between two instants


class OrderChange(_View):
    order_id: str
    change: Literal["entered_window", "left_window", "reclassified"]
    before: OrderLine | None
    after: OrderLine | None
    explanation: str


class FactorChange(_View):
    name: FactorName
    before: float | None
    after: float | None
    contribution_before: float
    contribution_after: float


class Changes(_View):
    seller_id: str
    since: datetime
    until: datetime
    completion_rate_before: float | None
    completion_rate_after: float | None
    score_before: float | None
    score_after: float | None
    orders: list[OrderChange]
    factors: list[FactorChange]


def changes(before: SellerFigures, after: SellerFigures) -> Changes:
    """Why the figures moved between two instants: the orders that entered or left the
    window, or changed from counted to excluded (or back), and each factor's move."""
    old = {line.order_id: line for line in before.completion_rate.orders}
    new = {line.order_id: line for line in after.completion_rate.orders}
    moved = []
    for order_id in sorted(old.keys() | new.keys()):
        was, now = old.get(order_id), new.get(order_id)
        if was is None and now is not None:
            moved.append(OrderChange(order_id=order_id, change="entered_window", before=None, after=now,
                                     explanation=f"Ended in the meantime. {now.explanation}"))
        elif now is None and was is not None:
            moved.append(OrderChange(order_id=order_id, change="left_window", before=was, after=None,
                                     explanation=f"Left the window on {_day(was.leaves_window_at)} (MET-1)."))
        elif was is not None and now is not None and (was.counted, was.reason) != (now.counted, now.reason):
            moved.append(OrderChange(order_id=order_id, change="reclassified", before=was, after=now,
                                     explanation=now.explanation))
    factors = [
        FactorChange(name=a.name, before=b.value, after=a.value, contribution_before=b.contribution,
                     contribution_after=a.contribution)
        for b, a in zip(before.success_score.factors, after.success_score.factors, strict=True)
    ]
    return Changes(seller_id=after.seller_id, since=before.at, until=after.at,
                   completion_rate_before=before.completion_rate.percent,
                   completion_rate_after=after.completion_rate.percent,
                   score_before=before.success_score.score, score_after=after.success_score.score,
                   orders=moved, factors=factors)
