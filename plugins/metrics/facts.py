"""From events to facts: what each consumed event tells about an order of a seller.

The live projection (`metrics_orders`) is one document per order (`_id` = order id):

    order_id, seller_id, buyer_id, placed_at, late_at,
    deliveries.n<number>: {number, at, late}                  (MET-4, on time)
    completed_at, completion_cause,
    cancelled_at, cancel_cause, cancelled_from, cancel_requested_by,
    refunds.<request>: {request_id, at, amount, currency}     (MET-3)
    flags.r<revision>: {revision, at, flag, note, by}         (MET-2)
    requests.<request>: request_id, kind, answered_at | missed_at   (MET-4, to the seller)
    reviews.<review>: review_id, rating, published_at, removed_at  (MET-4)
    last_at: the latest time of any fact (what a rolling window needs to read)

The seller's read model (`metrics_sellers`) says which of a seller's orders have
a fact in a given month, so that the live figures read only the orders of their
window, by key, however many orders are stored. One document per seller and
calendar month (UTC), `_id` = `<seller id>|<YYYY-MM>`:

    seller_id, month,
    orders.<order>: {order_id, at}    the latest fact time of the order in that month

An event adds its order to the month of each of its fact times, with `$max`:
like the facts, applying it twice or in any order gives the same document.

Each event becomes assignments (`path: value`) that depend on that event alone,
never on what is stored: applying them twice changes nothing (a redelivered
event) and events applied in any order give the same document (the queue does
not promise order across orders; `last_at` is a maximum). So the live
projection, written one event at a time with `$set`/`$max`, and the same events
folded in memory from the event log (`fold`) are equal by construction;
`rescenter metrics rebuild` checks it. Every fact keeps its time, so figures
"as of" an instant ignore what came after it (rules.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from plugins.metrics.messages import (
    CancelledFacts,
    CompletedFacts,
    DeliveredFacts,
    FlagClearedFacts,
    FlagSetFacts,
    LateFacts,
    PlacedFacts,
    RefundFacts,
    RequestAnsweredFacts,
    RequestExpiredFacts,
    ReviewPublishedFacts,
    ReviewRemovedFacts,
    read_facts,
    to_millisecond,
)

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")


def field_key(raw_id: str) -> str:
    """An id as a field name. Ids from other services may hold '.' or start with '$',
    which MongoDB reads as a path or an operator: those are hashed (the id itself is
    kept inside the record)."""
    if _PLAIN_KEY.fullmatch(raw_id):
        return raw_id
    return "~" + hashlib.sha256(raw_id.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class LoggedEvent:
    """A consumed event as the event log keeps it: its id, type, time and the fields the
    metrics read (nothing else is kept)."""

    id: str
    type: str
    time: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class Facts:
    seller_id: str
    order_id: str
    #: dotted path in the order's document -> value; empty when the event changes nothing here
    assignments: dict[str, Any]
    #: the latest time among these facts (the order document's `last_at` is the maximum)
    latest: datetime
    #: every time this event tells about (its own and its facts'): the months it indexes
    times: tuple[datetime, ...] = ()

    def months(self) -> dict[str, datetime]:
        """The seller's months this event puts its order in, with its latest time in each."""
        if not self.assignments:
            return {}
        found: dict[str, datetime] = {}
        for time in self.times:
            month = month_of(time)
            found[month] = max(found.get(month, time), time)
        return found


def facts_of(event: LoggedEvent) -> Facts:
    """What `event` tells about its order. Raises InvalidInput when a field the metrics
    need is missing."""
    data = read_facts(event.type, event.data)
    at = to_millisecond(event.time)
    sets: dict[str, Any] = {}
    match data:
        case PlacedFacts():
            sets["placed_at"] = at  # MET-2: a new order after a mutual cancellation
        case DeliveredFacts():
            sets[f"deliveries.n{data.delivery_number}"] = {"number": data.delivery_number, "at": at, "late": data.late}
        case LateFacts():
            sets["late_at"] = at
        case CompletedFacts():
            sets.update(completed_at=at, completion_cause=data.cause)
        case CancelledFacts():
            sets.update(cancelled_at=at, cancel_cause=data.cause, cancelled_from=data.previous_state,
                        cancel_requested_by=data.requested_by)
        case RefundFacts():
            # MET-3: kept to explain the order, never counted in the rate.
            sets[f"refunds.{field_key(data.request_id)}"] = {
                "request_id": data.request_id, "at": data.accepted_at or at,
                "amount": str(data.amount.amount), "currency": data.amount.currency}
        case RequestAnsweredFacts() | RequestExpiredFacts():
            sets.update(_request_facts(data, at))
        case ReviewPublishedFacts():
            review = f"reviews.{field_key(data.review_id)}"
            sets.update({f"{review}.review_id": data.review_id, f"{review}.rating": data.rating,
                         f"{review}.published_at": data.published_at or at})
        case ReviewRemovedFacts():
            review = f"reviews.{field_key(data.review_id)}"
            sets.update({f"{review}.review_id": data.review_id, f"{review}.removed_at": data.removed_at or at})
        case FlagSetFacts() | FlagClearedFacts():
            sets[f"flags.r{data.revision}"] = {
                "revision": data.revision, "at": at, "flag": data.flag if isinstance(data, FlagSetFacts) else None,
                "note": data.note, "by": data.actor.id}
        case _:  # pragma: no cover - read_facts knows every consumed type
            raise AssertionError(f"no facts for {event.type}")
    times = (at, *_times(sets.values()))
    if sets:
        sets.update(order_id=data.order_id, seller_id=data.seller_id, buyer_id=data.buyer_id)
    return Facts(seller_id=data.seller_id, order_id=data.order_id, assignments=sets, latest=max(times),
                 times=times)


def _times(values: Iterable[Any]) -> list[datetime]:
    found = []
    for value in values:
        if isinstance(value, datetime):
            found.append(value)
        elif isinstance(value, dict):
            found += _times(value.values())
    return found


def _request_facts(data: RequestAnsweredFacts | RequestExpiredFacts, at: datetime) -> dict[str, Any]:
    """MET-4 "answers within resolution-center deadlines": only requests the seller had to
    answer. An answer is always within the deadline (DSP-9 refuses a late one); a request
    that expired while the seller was the silent party is a missed deadline, whatever
    silence then did (DSP-10)."""
    if data.to_party != "seller":
        return {}
    request = f"requests.{field_key(data.request_id)}"
    sets = {f"{request}.request_id": data.request_id, f"{request}.kind": data.kind}
    if isinstance(data, RequestAnsweredFacts):
        sets[f"{request}.answered_at"] = data.answered_at or at
    elif data.silent_party in (None, "seller"):
        sets[f"{request}.missed_at"] = data.expired_at or at
    else:
        return {}
    return sets


def month_of(time: datetime) -> str:
    return time.astimezone(UTC).strftime("%Y-%m")


def months_between(start: datetime, end: datetime) -> list[str]:
    """Every calendar month (UTC) from the one holding `start` to the one holding `end`."""
    year, month = start.astimezone(UTC).year, start.astimezone(UTC).month
    last = month_of(end)
    found = []
    while (current := f"{year:04d}-{month:02d}") <= last:
        found.append(current)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return found


def seller_month_id(seller_id: str, month: str) -> str:
    """The `_id` of a seller's month in `metrics_sellers`. The month has a fixed length at the
    end, so two different (seller, month) pairs never share an id, whatever a seller id holds."""
    return f"{seller_id}|{month}"


def index_entries(facts: Facts) -> dict[str, dict[str, dict[str, Any]]]:
    """What an event adds to the seller's read model: for each of its months (by `_id`), the
    order's entry {order key: {order_id, at}}, `at` its latest time there (written with `$max`)."""
    key = field_key(facts.order_id)
    return {seller_month_id(facts.seller_id, month): {key: {"order_id": facts.order_id, "at": latest}}
            for month, latest in facts.months().items()}


def fold_index(events: Iterable[LoggedEvent]) -> dict[str, dict[str, dict[str, Any]]]:
    """The read model the events give, in memory: {seller month id: {order key: {order_id, at}}}."""
    index: dict[str, dict[str, dict[str, Any]]] = {}
    for event in events:
        for month_id, added in index_entries(facts_of(event)).items():
            entries = index.setdefault(month_id, {})
            for key, entry in added.items():
                if key not in entries or entries[key]["at"] < entry["at"]:
                    entries[key] = entry
    return index


def apply(orders: dict[str, dict[str, Any]], facts: Facts) -> None:
    """Apply the assignments to a seller's orders in memory, as `$set` and `$max` do in the store."""
    if not facts.assignments:
        return
    document = orders.setdefault(facts.order_id, {})
    for path, value in facts.assignments.items():
        *parents, leaf = path.split(".")
        node = document
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    document["last_at"] = max(document.get("last_at", facts.latest), facts.latest)


def fold(events: Iterable[LoggedEvent]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every seller's orders from events, in any order: {seller_id: {order_id: facts}}."""
    sellers: dict[str, dict[str, dict[str, Any]]] = {}
    for event in events:
        facts = facts_of(event)
        apply(sellers.setdefault(facts.seller_id, {}), facts)
    return {seller_id: orders for seller_id, orders in sellers.items() if orders}


def facts_only(document: dict[str, Any]) -> dict[str, Any]:
    """A stored order document without its bookkeeping (`_id`, `_version`)."""
    return {k: v for k, v in document.items() if not k.startswith("_")}
