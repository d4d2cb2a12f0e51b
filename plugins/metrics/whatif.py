"""What-if replay of the metrics policy (MET-1, MET-2, MET-4): every seller's figures
folded from the event log and computed twice by the same rules (`rules.seller_figures`),
under the current and the proposed `policy.metrics`, and what moves between the two.

The log is read in pages (a cursor sorted by seller, `PAGE_SIZE` events per round
trip): one seller's orders are in memory at a time, never the whole log. Nothing is
written. Sellers are ranked by how far their score moves (then their rate); the answer
lists the first `limit` of them, the totals and the histograms count every seller.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pymongo import ASCENDING

from core.settings import MetricsPolicy
from core.store import Store
from core.whatif import PolicyReplay, ReplayRequest, Table
from plugins.metrics.facts import LoggedEvent, apply, facts_of
from plugins.metrics.repository import EVENTS
from plugins.metrics.rules import FactorName, OrderLine, SellerFigures, seller_figures

KEYS = (
    "policy.metrics.completion_window",
    "policy.metrics.mutual_cancel_reorder_window",
    "policy.metrics.success_score_weights.completion_rate",
    "policy.metrics.success_score_weights.on_time_delivery",
    "policy.metrics.success_score_weights.answers_within_deadline",
    "policy.metrics.success_score_weights.review_rating",
)

#: the edges (points) of the histogram buckets of a move, either way from zero
EDGES = (1.0, 5.0, 10.0, 20.0)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Figures(_Model):
    """A seller's figures under one policy."""

    completion_rate: float | None = Field(description="Percent (MET-1); null: no order that counts.")
    completed: int
    cancellations_counted: int
    cancellations_excluded: int = Field(description="MET-2 exclusions.")
    success_score: float | None = Field(description="MET-4, out of 100; null: no factor has data.")
    factors: dict[FactorName, float | None] = Field(description="Each MET-4 factor's value in percent.")


class Treatment(_Model):
    """How one order counts in the completion rate under one policy."""

    counted: bool
    reason: str
    rule: str
    explanation: str


class OrderMove(_Model):
    order_id: str
    change: Literal["entered_window", "left_window", "reclassified"]
    before: Treatment | None = Field(description="Now; null: outside the window now.")
    after: Treatment | None = Field(description="Under the proposed policy; null: outside its window.")


class SellerMove(_Model):
    seller_id: str
    before: Figures
    after: Figures
    completion_rate_change: float | None = Field(description="Points; null when either side has no rate.")
    success_score_change: float | None = Field(description="Points; null when either side has no score.")
    orders: list[OrderMove] = Field(description="The orders whose treatment changes (MET-1, MET-2).")


class Bucket(_Model):
    """Sellers whose figure moves this way by this many points."""

    bucket: str
    direction: Literal["down", "unchanged", "up", "undefined"] = Field(
        description="undefined: a figure exists on one side only (no order, or no data, on the other).")
    at_least: float | None = Field(description="The size of the move in points, at least; null for "
                                               "unchanged and undefined.")
    less_than: float | None = Field(description="... and less than; null: no upper end.")
    sellers: int


class MetricsWhatIf(_Model):
    """Every seller's completion rate and success score now and under the proposed policy."""

    window: dict[str, str] = Field(description="completion_window now and proposed (ISO 8601).")
    events_read: int
    sellers_total: int = Field(description="Sellers with events up to `at`.")
    sellers_moved: int = Field(description="Sellers whose figures or orders' treatment change.")
    sellers_left_off: int = Field(description="Sellers that move but are not listed (beyond `limit`).")
    sellers: list[SellerMove] = Field(description="The sellers that move most (score, then rate), up to `limit`.")
    completion_rate_histogram: list[Bucket] = Field(description="How many sellers' rate moves by how much.")
    success_score_histogram: list[Bucket] = Field(description="How many sellers' score moves by how much.")


# ---------------------------------------------------------------- comparing


def figures_of(figures: SellerFigures) -> Figures:
    rate, score = figures.completion_rate, figures.success_score
    return Figures(completion_rate=rate.percent, completed=rate.completed,
                   cancellations_counted=rate.cancellations_counted,
                   cancellations_excluded=rate.cancellations_excluded, success_score=score.score,
                   factors={f.name: f.value for f in score.factors})


def _treatment(line: OrderLine | None) -> Treatment | None:
    if line is None:
        return None
    return Treatment(counted=line.counted, reason=line.reason, rule=line.rule, explanation=line.explanation)


def order_moves(before: SellerFigures, after: SellerFigures) -> list[OrderMove]:
    """Orders that enter or leave the window, or change between counted and excluded (or reason)."""
    old = {line.order_id: line for line in before.completion_rate.orders}
    new = {line.order_id: line for line in after.completion_rate.orders}
    moves = []
    for order_id in sorted(old.keys() | new.keys()):
        was, now = old.get(order_id), new.get(order_id)
        if was is None:
            change: Literal["entered_window", "left_window", "reclassified"] = "entered_window"
        elif now is None:
            change = "left_window"
        elif (was.counted, was.reason) != (now.counted, now.reason):
            change = "reclassified"
        else:
            continue
        moves.append(OrderMove(order_id=order_id, change=change, before=_treatment(was), after=_treatment(now)))
    return moves


def _change(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


def compare(seller_id: str, orders: dict[str, dict[str, Any]], at: datetime, current: MetricsPolicy,
            proposed: MetricsPolicy) -> SellerMove | None:
    """The seller's move, or None when nothing moves. The same rules decide both sides."""
    before = seller_figures(seller_id, orders, at, current, source="event_log")
    after = seller_figures(seller_id, orders, at, proposed, source="event_log")
    moves = order_moves(before, after)
    was, now = figures_of(before), figures_of(after)
    if not moves and was == now:
        return None
    return SellerMove(seller_id=seller_id, before=was, after=now,
                      completion_rate_change=_change(was.completion_rate, now.completion_rate),
                      success_score_change=_change(was.success_score, now.success_score), orders=moves)


def _buckets() -> list[tuple[str, str, float | None, float | None]]:
    """(label, direction, at least, less than): the size of a move in points, either way."""
    sizes = list(zip((0.0, *EDGES), (*EDGES, None), strict=True))
    rows = [(f"down {_size(low, high)}", "down", low, high) for low, high in reversed(sizes)]
    rows.append(("unchanged", "unchanged", None, None))
    rows += [(f"up {_size(low, high)}", "up", low, high) for low, high in sizes]
    rows.append(("no figure on one side", "undefined", None, None))
    return rows


def _size(low: float, high: float | None) -> str:
    if high is None:
        return f"{low:g} or more"
    return f"less than {high:g}" if low == 0 else f"{low:g} to {high:g}"


BUCKETS = _buckets()


def bucket_of(change: float | None) -> str:
    """The bucket of a move in points (None: a side has no figure)."""
    if change is None:
        return "no figure on one side"
    if change == 0:
        return "unchanged"
    direction, size = ("up" if change > 0 else "down"), abs(change)
    return next(label for label, way, low, high in BUCKETS
                if way == direction and low is not None and size >= low and (high is None or size < high))


class Histogram:
    def __init__(self) -> None:
        self.counts = {label: 0 for label, *_ in BUCKETS}

    def add(self, before: float | None, after: float | None) -> None:
        self.counts["unchanged" if before is None and after is None else bucket_of(_change(before, after))] += 1

    def rows(self) -> list[Bucket]:
        return [Bucket(bucket=label, direction=way, at_least=low, less_than=high, sellers=self.counts[label])
                for label, way, low, high in BUCKETS]


# ---------------------------------------------------------------- reading the log


async def _sellers_events(store: Store, request: ReplayRequest) -> AsyncIterator[tuple[str, list[LoggedEvent]]]:
    """The log up to `at`, one seller at a time, read in pages of `page_size` events."""
    events = store.collection(EVENTS)
    query: dict[str, Any] = {"time": {"$lte": request.at}}
    if request.sellers:
        query["seller_id"] = {"$in": sorted(set(request.sellers))}
    total = await events.count_documents(query)
    task = request.progress.task("metrics: event log", total)
    # Facts commute (facts.py): within a seller, the order events are read in does not matter.
    cursor = events.find(query, {"type": 1, "time": 1, "seller_id": 1, "data": 1}).sort(
        [("seller_id", ASCENDING), ("time", ASCENDING)]).batch_size(request.page_size)
    seller: str | None = None
    batch: list[LoggedEvent] = []
    async for doc in cursor:
        if doc["seller_id"] != seller and batch:
            assert seller is not None
            yield seller, batch
            batch = []
        seller = doc["seller_id"]
        batch.append(LoggedEvent(id=doc["_id"], type=doc["type"], time=doc["time"], data=doc["data"]))
        task.advance(1)
    if batch and seller is not None:
        yield seller, batch


async def replay(store: Store, request: ReplayRequest) -> MetricsWhatIf:
    current, proposed = request.current.metrics, request.proposed.metrics
    rates, scores = Histogram(), Histogram()
    ranked: list[tuple[float, float, str, SellerMove]] = []  # a min-heap of the `limit` biggest moves
    total = moved = read = 0
    async for seller_id, logged in _sellers_events(store, request):
        read += len(logged)
        total += 1
        orders: dict[str, dict[str, Any]] = {}
        for event in logged:
            apply(orders, facts_of(event))
        move = compare(seller_id, orders, request.at, current, proposed)
        if move is None:
            rates.counts["unchanged"] += 1
            scores.counts["unchanged"] += 1
            continue
        moved += 1
        rates.add(move.before.completion_rate, move.after.completion_rate)
        scores.add(move.before.success_score, move.after.success_score)
        # Biggest move first; a side without a figure ranks as a move of 100 points.
        key = (abs(move.success_score_change) if move.success_score_change is not None else 100.0,
               abs(move.completion_rate_change) if move.completion_rate_change is not None else 100.0,
               _reverse(seller_id), move)
        if len(ranked) < request.limit:
            heapq.heappush(ranked, key)  # type: ignore[misc]
        else:
            heapq.heappushpop(ranked, key)  # type: ignore[misc]
    listed = [entry[3] for entry in sorted(ranked, key=lambda e: (-e[0], -e[1], e[3].seller_id))]
    return MetricsWhatIf(
        window={"now": _iso(current.completion_window), "proposed": _iso(proposed.completion_window)},
        events_read=read, sellers_total=total, sellers_moved=moved, sellers_left_off=moved - len(listed),
        sellers=listed, completion_rate_histogram=rates.rows(), success_score_histogram=scores.rows())


class _reverse(str):
    """Ties of the min-heap keep the sellers that come first by id (the heap pops the smallest)."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:
        return str.__lt__(self, other)


def _iso(length: timedelta) -> str:
    return str(TypeAdapter(timedelta).dump_python(length, mode="json"))


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+g}"


def _treated(treatment: Treatment | None) -> str:
    if treatment is None:
        return "outside the window"
    return f"{'counts' if treatment.counted else 'excluded'}: {treatment.reason} ({treatment.rule})"


def tables(answer: MetricsWhatIf) -> list[Table]:
    """The command line's tables: the sellers that move, their orders, the histograms."""
    listed = len(answer.sellers)
    sellers = [[m.seller_id,
                f"{_figure(m.before.completion_rate)} -> {_figure(m.after.completion_rate)}",
                _delta(m.completion_rate_change),
                f"{m.before.completed}/{m.before.cancellations_counted}/{m.before.cancellations_excluded} -> "
                f"{m.after.completed}/{m.after.cancellations_counted}/{m.after.cancellations_excluded}",
                f"{_figure(m.before.success_score)} -> {_figure(m.after.success_score)}",
                _delta(m.success_score_change), str(len(m.orders))] for m in answer.sellers]
    orders = [[m.seller_id, o.order_id, o.change, _treated(o.before), _treated(o.after)]
              for m in answer.sellers for o in m.orders]
    histogram = [[rate.bucket, str(rate.sellers), str(score.sellers)]
                 for rate, score in zip(answer.completion_rate_histogram, answer.success_score_histogram,
                                        strict=True)]
    window = f"completion window {answer.window['now']} -> {answer.window['proposed']}"
    return [
        (f"metrics: {answer.sellers_moved} of {answer.sellers_total} sellers move ({window}; "
         f"{answer.events_read} events read; {listed} listed, {answer.sellers_left_off} left off)",
         ["seller", "rate %", "change", "completed/counted/excluded", "score", "change", "orders"], sellers),
        ("metrics: orders whose treatment changes (MET-1, MET-2)",
         ["seller", "order", "change", "now", "proposed"], orders),
        ("metrics: sellers by move (points)", ["move", "completion rate", "success score"], histogram),
    ]


def policy_replay() -> PolicyReplay:
    return PolicyReplay(section="metrics", keys=KEYS, answer=MetricsWhatIf, run=replay, tables=tables,
                        description="Every seller's completion rate and success score (MET-1 to MET-4) now and "
                                    "under the proposed policy, with the orders whose treatment changes.")
