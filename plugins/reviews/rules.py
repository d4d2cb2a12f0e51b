"""Pure decisions: may this cancelled order be reviewed, and why (REV-1 to REV-4, REV-9).

Facts in (what the plugin learned from the bus, each with the time it
happened), the policy and "now" in, a verdict per condition out. No I/O, no
clock: the caller passes `now`, so the same facts give the same answer in a
test, in the eligibility query and in the review command.

Which moment counts, per condition (README.md explains why):

- REV-1 is about the order's own story, which ends with the cancellation:
  lateness is measured up to the first delivery or, without one, the
  cancellation, against the due date in force then; a buyer message counts
  only if sent before the cancellation, and its wait ends at the seller's
  next message or at the cancellation; a delivery counts if received before
  the cancellation.
- REV-2 and REV-3 (seller account, withdrawn right) are about who the buyer
  is when they review: evaluated as of the review attempt (for the query,
  as of now). A chargeback is a fact of the cancellation itself.
- REV-4: the window is [cancelled_at, cancelled_at + review_window): open one
  second before its end, closed exactly at it. REV-5 uses the same instant:
  the seller may reply from `window_closes_at` on.

Facts are sorted by the time they happened, so the order of arrival never
changes a verdict; duplicates (a fact reported twice) count once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core.settings import ReviewPolicy

CANCELLED = "cancelled"


# ---------------------------------------------------------------- facts


@dataclass(frozen=True)
class Message:
    """One message between users about an order (conversation service)."""

    key: str  # the same message reported twice has the same key
    sender_id: str
    recipient_id: str
    sent_at: datetime


@dataclass(frozen=True)
class DueDate:
    """A due date the core set (requirements, extension, amendment, lateness) and when it did."""

    set_at: datetime
    due_at: datetime
    source: str


@dataclass(frozen=True)
class SellerSilence:
    """A buyer's update request the seller let expire unanswered (DSP-5)."""

    request_id: str
    at: datetime


@dataclass(frozen=True)
class Change:
    """A switch that took effect at `at`: seller account active, review right withdrawn."""

    at: datetime
    on: bool
    reason: str | None = None


@dataclass(frozen=True)
class OrderFacts:
    order_id: str
    buyer_id: str
    seller_id: str
    state: str | None = None
    cancelled_at: datetime | None = None
    cancel_cause: str | None = None
    due_dates: tuple[DueDate, ...] = ()
    deliveries: tuple[datetime, ...] = ()
    messages: tuple[Message, ...] = ()
    seller_silences: tuple[SellerSilence, ...] = ()

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at is not None


@dataclass(frozen=True)
class BuyerFacts:
    buyer_id: str
    completed_orders: tuple[tuple[str, datetime], ...] = ()  # (order_id, completed_at)
    seller_account: tuple[Change, ...] = ()  # on: active
    review_right: tuple[Change, ...] = ()  # on: withdrawn


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Condition:
    name: str
    holds: bool
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "holds": self.holds, "detail": self.detail, "facts": self.facts}


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    satisfied: bool
    requirement: str
    conditions: tuple[Condition, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "satisfied": self.satisfied, "requirement": self.requirement,
                "conditions": [c.as_dict() for c in self.conditions]}


@dataclass(frozen=True)
class Refusal:
    rule: str
    reason: str


@dataclass(frozen=True)
class Eligibility:
    order_id: str
    as_of: datetime
    state: str | None
    cancelled_at: datetime | None
    window_closes_at: datetime | None
    window_open: bool
    rules: tuple[RuleVerdict, ...]
    refusals: tuple[Refusal, ...]
    review_id: str | None = None

    @property
    def eligible(self) -> bool:
        return not self.refusals

    def verdict(self, rule: str) -> RuleVerdict:
        return next(v for v in self.rules if v.rule == rule)

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "as_of": self.as_of,
            "state": self.state,
            "cancelled_at": self.cancelled_at,
            "eligible": self.eligible,
            "window_closes_at": self.window_closes_at,
            "window_open": self.window_open,
            "review_id": self.review_id,
            "refusals": [{"rule": r.rule, "reason": r.reason} for r in self.refusals],
            "rules": [v.as_dict() for v in self.rules],
        }


# ---------------------------------------------------------------- the decision


def window_closes_at(cancelled_at: datetime, policy: ReviewPolicy) -> datetime:
    """REV-4: the buyer has `review_window` from the cancellation."""
    return cancelled_at + policy.review_window


def evaluate(order: OrderFacts, buyer: BuyerFacts, policy: ReviewPolicy, now: datetime,
             *, review_id: str | None = None) -> Eligibility:
    """Every condition of REV-1 to REV-4 and REV-9 for `order`, as of `now`."""
    rev1 = RuleVerdict(
        "REV-1", False,
        f"at least one holds: late by more than {human(policy.late_threshold)} past the due date; the seller "
        f"left the buyer's messages unanswered for more than {human(policy.unanswered_threshold)}; "
        "the buyer received a delivery",
        (late(order, policy, now), unanswered(order, policy, now), delivery_received(order)),
    )
    rev1 = _with(rev1, any(c.holds for c in rev1.conditions))
    rev2 = RuleVerdict(
        "REV-2", False,
        f"the buyer completed at least {policy.min_completed_orders} order(s) on the platform before",
        (completed_before(order, buyer, policy, now),),
    )
    rev2 = _with(rev2, all(c.holds for c in rev2.conditions))
    rev3 = RuleVerdict(
        "REV-3", False,
        "none holds: the buyer has an active seller account; the order was cancelled through a chargeback; "
        "the platform withdrew the option from this buyer",
        (active_seller_account(buyer, now), chargeback(order), review_right_withdrawn(buyer, now)),
    )
    rev3 = _with(rev3, not any(c.holds for c in rev3.conditions))
    window = review_window(order, policy, now)
    rev4 = _with(RuleVerdict("REV-4", False, f"the review is left within {human(policy.review_window)} of the "
                             "cancellation", (window,)), window.holds)
    reviewed = Condition(
        "already_reviewed", review_id is not None,
        "this order already has its review" if review_id else "no review yet on this order",
        {"review_id": review_id} if review_id else {},
    )
    rev9 = _with(RuleVerdict("REV-9", False, "one review per order", (reviewed,)), not reviewed.holds)

    refusals: list[Refusal] = []
    if order.cancelled:
        # The most final reasons first: a second review, a closed window; then the rules in order.
        checked = (rev9, rev4, rev1, rev2, rev3)
    else:
        refusals.append(Refusal("REV-1", f"the order is {order.state or 'not known to be cancelled'}, not "
                                         "cancelled: only a cancelled order can receive a review here"))
        checked = (rev9, rev1, rev2, rev3)  # no window yet: REV-4 starts with the cancellation
    refusals += [Refusal(v.rule, _why_not(v)) for v in checked if not v.satisfied]
    closes = window_closes_at(order.cancelled_at, policy) if order.cancelled_at else None
    return Eligibility(
        order_id=order.order_id, as_of=now, state=order.state, cancelled_at=order.cancelled_at,
        window_closes_at=closes, window_open=window.holds, rules=(rev1, rev2, rev3, rev4, rev9),
        refusals=tuple(refusals), review_id=review_id,
    )


def _with(verdict: RuleVerdict, satisfied: bool) -> RuleVerdict:
    return RuleVerdict(verdict.rule, satisfied, verdict.requirement, verdict.conditions)


def _why_not(verdict: RuleVerdict) -> str:
    if verdict.rule == "REV-1":  # none of the three held: each says why
        return "; ".join(c.detail for c in verdict.conditions)
    if verdict.rule == "REV-3":  # the exclusions that hold
        return "; ".join(c.detail for c in verdict.conditions if c.holds)
    return "; ".join(c.detail for c in verdict.conditions)


# ---------------------------------------------------------------- REV-1


def _story_end(order: OrderFacts, now: datetime) -> datetime:
    """The order's story ends at its cancellation (REV-1 looks no further)."""
    return order.cancelled_at if order.cancelled_at is not None else now


def _deliveries(order: OrderFacts, now: datetime) -> list[datetime]:
    end = _story_end(order, now)
    return sorted({at for at in order.deliveries if at <= end})


def due_in_force(due_dates: Iterable[DueDate], at: datetime) -> DueDate | None:
    """The due date the core had set at `at`: the last one set by then (an extension moves it)."""
    ordered = sorted(due_dates, key=lambda d: d.set_at)
    current = None
    for due in ordered:
        if due.set_at <= at:
            current = due
    return current or (ordered[0] if ordered else None)


def late(order: OrderFacts, policy: ReviewPolicy, now: datetime) -> Condition:
    """REV-1 (a): late by more than `late_threshold` past the due date."""
    threshold = policy.late_threshold
    facts: dict[str, Any] = {"threshold_seconds": int(threshold.total_seconds())}
    if not order.due_dates:
        return Condition("late", False, "no due date: the delivery clock never started (no requirements "
                         "submitted)", facts)
    deliveries = _deliveries(order, now)
    if deliveries:
        end, what = deliveries[0], "first delivery"
    elif order.cancelled_at is not None:
        end, what = order.cancelled_at, "cancellation"
    else:
        end, what = now, "moment (the order is not cancelled)"
    due = due_in_force(order.due_dates, end)
    assert due is not None
    late_by = end - due.due_at
    facts.update(due_at=due.due_at, measured_until=end, measured_at=what,
                 late_by_seconds=int(late_by.total_seconds()))
    holds = late_by > threshold
    if late_by > timedelta(0):
        detail = (f"late by {human(late_by)} past the due date at the {what} "
                  f"({'more than' if holds else 'not more than'} {human(threshold)})")
    elif late_by == timedelta(0):
        detail = f"the {what} came exactly at the due date: not late"
    else:
        detail = f"the {what} came {human(-late_by)} before the due date: not late"
    return Condition("late", holds, detail, facts)


def unanswered(order: OrderFacts, policy: ReviewPolicy, now: datetime) -> Condition:
    """REV-1 (b): the seller left the buyer's messages unanswered for more than `unanswered_threshold`.

    A wait starts at the first buyer message after the seller's last one and
    ends at the seller's next message, or at the cancellation. An update request
    that expired unanswered in the resolution center counts too (DSP-5)."""
    threshold = policy.unanswered_threshold
    end = _story_end(order, now)
    unique = {m.key: m for m in order.messages}.values()
    conversation = sorted((m for m in unique if m.sent_at <= end), key=lambda m: m.sent_at)
    waiting_since: datetime | None = None
    longest: tuple[datetime, datetime, bool] | None = None  # (since, until, answered)
    from_buyer = from_seller = 0

    def close(since: datetime, until: datetime, answered: bool) -> None:
        nonlocal longest
        if longest is None or until - since > longest[1] - longest[0]:
            longest = (since, until, answered)

    for message in conversation:
        if message.sender_id == order.buyer_id and message.recipient_id == order.seller_id:
            from_buyer += 1
            if waiting_since is None:
                waiting_since = message.sent_at
        elif message.sender_id == order.seller_id and message.recipient_id == order.buyer_id:
            from_seller += 1
            if waiting_since is not None:
                close(waiting_since, message.sent_at, True)
                waiting_since = None
    if waiting_since is not None:
        close(waiting_since, end, False)

    silences = sorted({s.request_id: s for s in order.seller_silences if s.at <= end}.values(), key=lambda s: s.at)
    facts: dict[str, Any] = {
        "threshold_seconds": int(threshold.total_seconds()),
        "buyer_messages": from_buyer,
        "seller_messages": from_seller,
        "unanswered_update_requests": [s.request_id for s in silences],
    }
    details = []
    holds = False
    if longest is not None:
        since, until, answered = longest
        wait = until - since
        facts.update(longest_wait_seconds=int(wait.total_seconds()), longest_wait_since=since,
                     longest_wait_until=until, longest_wait_answered=answered)
        holds = wait > threshold
        ending = "before the seller answered" if answered else (
            "without an answer before the cancellation" if order.cancelled else "without an answer so far")
        details.append(f"the buyer waited {human(wait)} {ending} "
                       f"({'more than' if holds else 'not more than'} {human(threshold)})")
    elif from_buyer == 0:
        details.append("no message from the buyer to the seller is known")
    if silences:
        holds = True
        ids = ", ".join(s.request_id for s in silences)
        details.append(f"the seller let the buyer's update request go unanswered in the resolution center "
                       f"(DSP-5: {ids})")
    return Condition("unanswered", holds, "; ".join(details), facts)


def delivery_received(order: OrderFacts) -> Condition:
    """REV-1 (c): the buyer received a delivery (before the cancellation)."""
    end = order.cancelled_at
    received = sorted({at for at in order.deliveries if end is None or at <= end})
    if received:
        return Condition("delivery_received", True, f"the buyer received a delivery on {received[0].isoformat()}",
                         {"deliveries": len(received), "first_delivery_at": received[0]})
    return Condition("delivery_received", False, "the buyer received no delivery", {"deliveries": 0})


# ---------------------------------------------------------------- REV-2, REV-3


def completed_before(order: OrderFacts, buyer: BuyerFacts, policy: ReviewPolicy, at: datetime) -> Condition:
    """REV-2: orders the buyer completed before the review (this one is cancelled, so never among them)."""
    done = {order_id: when for order_id, when in buyer.completed_orders
            if when <= at and order_id != order.order_id}
    needed = policy.min_completed_orders
    holds = len(done) >= needed
    facts: dict[str, Any] = {"completed_orders": len(done), "needed": needed}
    if done:
        facts["first_completed_at"] = min(done.values())
    if holds:
        detail = f"the buyer completed {len(done)} order(s) before (at least {needed} needed)"
    elif not done:
        detail = f"a first-time buyer: no completed order yet (at least {needed} needed)"
    else:
        detail = f"the buyer completed only {len(done)} order(s) (at least {needed} needed)"
    return Condition("completed_orders", holds, detail, facts)


def state_at(changes: Iterable[Change], at: datetime) -> Change | None:
    """The switch in effect at `at`: the last change that happened by then, whatever order they arrived in."""
    current = None
    for change in sorted(changes, key=lambda c: c.at):  # stable: equal times keep arrival order
        if change.at <= at:
            current = change
    return current


def active_seller_account(buyer: BuyerFacts, at: datetime) -> Condition:
    """REV-3: the buyer also has an active seller account (at the review attempt)."""
    status = state_at(buyer.seller_account, at)
    if status is None:
        return Condition("active_seller_account", False, "the buyer has no seller account", {"changed_at": None})
    facts = {"active": status.on, "changed_at": status.at, "known_changes": len(set(buyer.seller_account))}
    if status.on:
        return Condition("active_seller_account", True,
                         f"the buyer has an active seller account (since {status.at.isoformat()})", facts)
    return Condition("active_seller_account", False,
                     f"the buyer's seller account is inactive (since {status.at.isoformat()})", facts)


def chargeback(order: OrderFacts) -> Condition:
    """REV-3: the order was cancelled through a chargeback (ORD-7)."""
    holds = order.cancel_cause == "chargeback"
    detail = ("the order was cancelled through a chargeback" if holds else
              f"the order was not cancelled through a chargeback (cause: {order.cancel_cause})"
              if order.cancelled else "the order is not cancelled")
    return Condition("chargeback", holds, detail, {"cause": order.cancel_cause})


def review_right_withdrawn(buyer: BuyerFacts, at: datetime) -> Condition:
    """REV-3: the platform withdrew the option from this buyer (at the review attempt)."""
    status = state_at(buyer.review_right, at)
    if status is None or not status.on:
        detail = ("the platform has not withdrawn the buyer's right to review" if status is None else
                  f"the buyer's right to review was restored on {status.at.isoformat()}")
        return Condition("review_right_withdrawn", False, detail,
                         {"changed_at": status.at if status else None})
    return Condition("review_right_withdrawn", True,
                     f"the platform withdrew the buyer's right to review on {status.at.isoformat()}: {status.reason}",
                     {"changed_at": status.at, "reason": status.reason})


# ---------------------------------------------------------------- REV-4


def review_window(order: OrderFacts, policy: ReviewPolicy, now: datetime) -> Condition:
    """REV-4: open from the cancellation for `review_window`; closed exactly at its end."""
    if order.cancelled_at is None:
        return Condition("window_open", False, "the window opens when the order is cancelled", {})
    closes = window_closes_at(order.cancelled_at, policy)
    facts = {"opens_at": order.cancelled_at, "closes_at": closes}
    if now < order.cancelled_at:  # the cancellation is stamped by the service clock: cannot happen in practice
        return Condition("window_open", False, "the window is not open yet", facts)
    if now < closes:
        return Condition("window_open", True, f"the window is open until {closes.isoformat()} "
                         f"({human(closes - now)} left)", facts)
    return Condition("window_open", False, f"the window closed on {closes.isoformat()}, "
                     f"{human(policy.review_window)} after the cancellation", facts)


# ---------------------------------------------------------------- words


def human(duration: timedelta) -> str:
    """A duration to the second, in hours below two days: "31 h", "24 h 1 s", "5 d", "4 d 16 h"."""
    total = int(duration.total_seconds())
    days, rest = divmod(total, 86400) if total >= 2 * 86400 else (0, total)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if seconds or not parts:
        parts.append(f"{seconds} s")
    return " ".join(parts)
