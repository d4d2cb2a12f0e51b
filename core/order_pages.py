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
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import DESCENDING

from core.errors import InvalidInput
from core.store import Collection

Party = Literal["buyer", "seller"]
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: what a list leaves out of each order: bookkeeping and the timeline (`GET /orders/{id}/timeline`)
PROJECTION = {"_outbox": 0, "_applied": 0, "timeline": 0}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


async def order_page(orders: Collection, party: Party, party_id: str, *, limit: int = DEFAULT_LIMIT,
                     after: Position | None = None) -> Page:
    """Up to `limit` of the party's orders, newest first, after `after` (from the newest when None)."""
    field = "buyer_id" if party == "buyer" else "seller_id"
    query: dict[str, Any] = {field: party_id}
    if after is not None:
        query["$or"] = [
            {"placed_at": {"$lt": after.placed_at}},
            {"placed_at": after.placed_at, "_id": {"$lt": after.order_id}},
        ]
    # One more than asked: whether a next page exists, without a second query or an empty last page.
    cursor = orders.find(query, PROJECTION).sort([("placed_at", DESCENDING), ("_id", DESCENDING)]).limit(limit + 1)
    docs = await cursor.to_list()
    if len(docs) <= limit:
        return Page(orders=docs, next=None)
    last = docs[limit - 1]
    return Page(orders=docs[:limit], next=Position(party=party, placed_at=last["placed_at"], order_id=last["_id"]))


def page_limit(raw: str | None) -> int:
    """`limit` from the query string: a whole number from 1 to MAX_LIMIT, DEFAULT_LIMIT when absent."""
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidInput(f"'limit' must be a whole number from 1 to {MAX_LIMIT}", field="limit", limit=raw)
    return int(raw)


__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Page", "Position", "order_page", "page_limit"]
