"""A party's orders, a page at a time: keyset pagination, newest first.

A buyer's (or seller's) orders are read in the order of the `(buyer_id,
placed_at desc)` / `(seller_id, placed_at desc)` indexes, ties broken by `_id`
(descending too: the test clock places many orders at one instant). A page
starts after a *position*, the `placed_at` and `_id` of the last order of the
previous page, so reading it costs the page, not the orders before it (no
skip/offset). An order placed between two pages is newer than any position
already handed out: it neither shifts nor repeats what the next pages hold.

The client gets the position as an opaque cursor (base64url of a small JSON
object); it is only ever compared with the caller's own orders, so a forged
cursor reveals nothing, and one that does not decode is invalid input (422).

The list is read from a read model written with each placement, `order_lists`,
in which everything is read by `_id`: per party, a head document naming the
months it placed (or received) orders in (`buyer|<id>`), and one document per
month listing the orders of that month with their placement time
(`buyer|<id>|2026-11`). A page reads the head, the months it needs, newest
first, and the orders by `_id`. The embedded store uses no index but `_id`:
read through `(buyer_id, placed_at)` there, every page was a scan of every
stored order (about 200 ms at 20,000 orders, while other reads waited).

The entries are written before the order (an intent): if the placement then
fails (a crash, a refusal, an id already taken), the entry names an order that
does not exist, or not with this party and time, and a page skips it. So an
order is never missing from its parties' lists. Lists written before this read
model existed are filled once at start-up, from the stored orders.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog
from pymongo import UpdateOne

from core.batching import Batcher, Outcome
from core.errors import InvalidInput
from core.store import Collection

log = structlog.get_logger("rescenter.orders")

Party = Literal["buyer", "seller"]
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: what a list leaves out of each order: bookkeeping and the timeline (`GET /orders/{id}/timeline`)
PROJECTION = {"_outbox": 0, "_applied": 0, "timeline": 0}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the read model's collection
LISTS = "order_lists"
#: a document there saying the lists cover every order stored before it (the start-up fill)
FILLED = "|filled"
#: months read per round trip while a page fills
MONTHS_PER_READ = 3
PARTIES: tuple[Party, ...] = ("buyer", "seller")


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last order's placement time (milliseconds, as stored) and id."""

    party: Party
    placed_at: datetime
    order_id: str

    def cursor(self) -> str:
        millis = (self.placed_at - _EPOCH) // timedelta(milliseconds=1)
        raw = json.dumps({"as": self.party, "at": millis, "id": self.order_id}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()

    @classmethod
    def of_cursor(cls, cursor: str, party: Party) -> Position:
        """The position a cursor names; InvalidInput for anything a page did not hand out,
        or a cursor of the other party's list."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            fields = json.loads(raw)
            if not isinstance(fields, dict) or fields.keys() != {"as", "at", "id"}:
                raise ValueError(fields)
            at, order_id, of = fields["at"], fields["id"], fields["as"]
            if type(at) is not int or not isinstance(order_id, str) or of not in ("buyer", "seller"):
                raise ValueError(fields)
            placed_at = _EPOCH + timedelta(milliseconds=at)
        except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
            raise InvalidInput("'cursor' is not one a page of this list gave: pass `next_cursor` as it came",
                               field="cursor") from None
        if of != party:
            raise InvalidInput(f"this cursor pages the list as {of}, not as {party}", field="cursor")
        return cls(party=party, placed_at=placed_at, order_id=order_id)


@dataclass(frozen=True)
class Page:
    orders: list[dict[str, Any]]
    #: where the next page starts; None: this page is the last
    next: Position | None


def _head_id(party: Party, party_id: str) -> str:
    return f"{party}|{party_id}"


def _month_id(party: Party, party_id: str, month: str) -> str:
    return f"{party}|{party_id}|{month}"


def _month(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


def list_writes(order: dict[str, Any]) -> list[UpdateOne]:
    """The writes that list a placed order for its buyer and its seller (idempotent)."""
    month = _month(order["placed_at"])
    entry = {"at": order["placed_at"], "id": order["_id"]}
    writes = []
    for party in PARTIES:
        party_id = order[f"{party}_id"]
        writes.append(UpdateOne({"_id": _head_id(party, party_id)}, {"$addToSet": {"months": month}}, upsert=True))
        writes.append(UpdateOne({"_id": _month_id(party, party_id, month)}, {"$addToSet": {"entries": entry}},
                                upsert=True))
    return writes


async def list_order(lists: Batcher, order: dict[str, Any]) -> None:
    """Write the order's list entries, sharing round trips with other placements."""

    async def write(op: UpdateOne) -> None:
        # Two first upserts of one document at once: one inserts, the other hits the
        # unique `_id` (a conflict); the second attempt finds the document and updates it.
        for _ in range(3):
            if await lists.write(op) is Outcome.APPLIED:
                return
        raise RuntimeError(f"could not list order {order['_id']!r}")

    await asyncio.gather(*(write(op) for op in list_writes(order)))


async def fill_lists(orders: Collection, *, page: int = 1000) -> int:
    """List every stored order once (orders stored before the read model existed), unless
    done already. Idempotent: instances that run it at once write the same entries."""
    lists = orders.database[LISTS]
    if await lists.find_one({"_id": FILLED}) is not None:
        return 0
    filled = 0
    batch: list[UpdateOne] = []
    async for order in orders.find({}, {"buyer_id": 1, "seller_id": 1, "placed_at": 1}).batch_size(page):
        batch += list_writes(order)
        filled += 1
        if len(batch) >= page:
            await lists.bulk_write(batch, ordered=False)
            batch = []
    if batch:
        await lists.bulk_write(batch, ordered=False)
    await lists.update_one({"_id": FILLED}, {"$set": {"orders": filled}}, upsert=True)
    if filled:
        log.info("order lists filled from the stored orders", orders=filled)
    return filled


async def order_page(orders: Collection, party: Party, party_id: str, *, limit: int = DEFAULT_LIMIT,
                     after: Position | None = None) -> Page:
    """Up to `limit` of the party's orders, newest first, after `after` (from the newest when None)."""
    lists = orders.database[LISTS]
    head = await lists.find_one({"_id": _head_id(party, party_id)})
    months = sorted((head or {}).get("months", []), reverse=True)
    if after is not None:
        months = [m for m in months if m <= _month(after.placed_at)]
    field = f"{party}_id"
    found: list[dict[str, Any]] = []
    # One more than asked: whether a next page exists, without a second query or an empty last page.
    while months and len(found) <= limit:
        reading, months = months[:MONTHS_PER_READ], months[MONTHS_PER_READ:]
        docs = await lists.find({"_id": {"$in": [_month_id(party, party_id, m) for m in reading]}}).to_list()
        entries = sorted({(e["at"], e["id"]) for doc in docs for e in doc.get("entries", [])}, reverse=True)
        if after is not None:
            entries = [e for e in entries if e < (after.placed_at, after.order_id)]
        while entries and len(found) <= limit:
            # Ask for a few more than needed: an entry may name an order that was never stored.
            wanted, entries = entries[:limit + 1 - len(found) + 5], entries[limit + 1 - len(found) + 5:]
            stored = {o["_id"]: o for o in await orders.find(
                {"_id": {"$in": [order_id for _, order_id in wanted]}}, PROJECTION).to_list()}
            for at, order_id in wanted:
                order = stored.get(order_id)
                if order is not None and order[field] == party_id and order["placed_at"] == at:
                    found.append(order)
    if len(found) <= limit:
        return Page(orders=found, next=None)
    last = found[limit - 1]
    return Page(orders=found[:limit], next=Position(party=party, placed_at=last["placed_at"], order_id=last["_id"]))


__all__ = ["DEFAULT_LIMIT", "LISTS", "MAX_LIMIT", "Page", "Position", "fill_lists", "list_order", "list_writes",
           "order_page"]
