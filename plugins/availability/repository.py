"""The sellers' availability documents (`availability_sellers`, `_id` = seller id).

Every change is decided on the document read by `_id` and written in one
version-guarded update that carries its events and deadlines (`_outbox`), then
flushed, as `core.orders` does; a guard that fails means someone changed the
document first, and the change is decided again on what they wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pymongo.errors import DuplicateKeyError

from core.clock import utcnow
from core.errors import Conflict, NotFound
from core.locks import KeyedLocks
from core.messages import MessageData, make_envelope
from core.outbox import Effect
from core.scheduler import Deadline
from core.store import update_guarded
from plugins.availability.messages import subject

if TYPE_CHECKING:
    from core.services import Services

log = structlog.get_logger("rescenter.availability")

COLLECTION = "availability_sellers"
ATTEMPTS = 8

#: How long a cap reservation (AVL-4) holds a slot for an order that does not
#: exist yet. A placement inserts its order milliseconds after the vetoes; a
#: reservation still orderless after this belongs to a placement that died in
#: between, and stops counting. Real time, not the service clock: it measures a
#: process, not business time (as the outbox and scheduler leases do).
RESERVATION_LEASE = timedelta(seconds=60)

# One writer per seller in this process: placements for a capped seller queue here
# instead of spinning on the version guard (the guard still arbitrates between
# processes, on MongoDB). Keyed by database too: tests run several services in one process.
_writing = KeyedLocks()


@dataclass
class Change:
    """What a command decided: fields to set or unset, events, deadlines."""

    set: dict[str, Any] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    events: list[tuple[str, MessageData]] = field(default_factory=list)
    schedule: list[Deadline] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.set or self.unset or self.events or self.schedule or self.cancel)


Decide = Callable[[dict[str, Any], datetime], Change | None]


def new_document(seller_id: str) -> dict[str, Any]:
    return {"_id": seller_id, "away": None, "max_active_orders": None, "paused_gigs": [],
            "reservations": {}, "_version": 0, "_applied": [], "_outbox": []}


class SellerDocuments:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.collection = services.store.collection(COLLECTION)
        self.clock = services.clock
        self.outbox = services.outbox
        self._database = services.settings.store.database

    def holding(self, seller_id: str) -> Any:
        return _writing.hold(f"{self._database}/{seller_id}")

    async def get(self, seller_id: str) -> dict[str, Any] | None:
        # Read on every placement (ORD-5): concurrent placements share the round trip.
        return await self.services.store.batcher(COLLECTION).find_by_id(seller_id)

    async def _get_or_create(self, seller_id: str) -> dict[str, Any]:
        doc = await self.get(seller_id)
        if doc is not None:
            return doc
        try:
            await self.collection.insert_one(new_document(seller_id))
        except DuplicateKeyError:
            pass  # another request created it first
        doc = await self.get(seller_id)
        assert doc is not None
        return doc

    async def change(self, seller_id: str, decide: Decide, *, message_id: str | None = None,
                     create: bool = True) -> dict[str, Any] | None:
        """Decide on the seller's document and write the change with its effects.

        Returns the document as written (or as it was when nothing changed);
        None when it does not exist and `create` is false."""
        async with self.holding(seller_id):
            for _ in range(ATTEMPTS):
                doc = await (self._get_or_create(seller_id) if create else self.get(seller_id))
                if doc is None:
                    return None
                if message_id is not None and message_id in doc.get("_applied", []):
                    return doc  # a deadline fired again: already applied
                now = self.clock.now()
                change = decide(doc, now)
                if not change:
                    return doc
                update = self._update(seller_id, change, now)
                written = await update_guarded(self.collection, seller_id, update,
                                               version=doc["_version"], message_id=message_id)
                if written is None:
                    continue
                await self._flush_quietly(written)
                for type_, _ in change.events:
                    log.info("availability changed", seller_id=seller_id, published=type_)
                return written
        raise Conflict(f"the availability of seller {seller_id!r} is changing too fast; try again",
                       seller_id=seller_id)

    def _update(self, seller_id: str, change: Change, now: datetime) -> dict[str, Any]:
        update: dict[str, Any] = {}
        if change.set:
            update["$set"] = dict(change.set)
        if change.unset:
            update["$unset"] = {name: "" for name in change.unset}
        effects = [Effect.publish(make_envelope(type_, data, subject=subject(seller_id), time=now))
                   for type_, data in change.events]
        effects += [Effect.cancel(deadline_id) for deadline_id in change.cancel]
        effects += [Effect.schedule(deadline) for deadline in change.schedule]
        return self.outbox.stage(update, effects)

    async def _flush_quietly(self, doc: dict[str, Any]) -> None:
        """The change is stored: if publishing fails now, the outbox sweeper publishes it later."""
        try:
            await self.outbox.flush(COLLECTION, doc)
        except Exception as exc:
            log.warning("publish deferred to the outbox sweeper", seller_id=doc["_id"], error=repr(exc))

    # ------------------------------------------------------------ cap reservations (AVL-4)

    async def slots_held(self, doc: dict[str, Any], placing: str) -> tuple[set[str], set[str]]:
        """The seller's orders that count against the cap, other than `placing`:
        the core's active orders (the truth, whatever placed them: with this plugin
        off, before the cap was set...) and the reservations of placements still
        in flight. Returns (held, in_flight)."""
        in_flight = set()
        # Reservations first, the core's orders second: an order inserted between the
        # two reads is then seen at least once (in flight, then active), never zero times.
        for order_id, reservation in (doc.get("reservations") or {}).items():
            if order_id == placing or utcnow() - reservation["at"] >= RESERVATION_LEASE:
                continue
            try:
                await self.services.orders.get(order_id)
            except NotFound:
                in_flight.add(order_id)  # not inserted yet: it holds its slot
        active = {order["_id"] for order in await self.services.orders.active_orders(doc["_id"])}
        active.discard(placing)
        return active | in_flight, in_flight

    async def reserve(self, doc: dict[str, Any], order_id: str, keep: set[str]) -> bool:
        """Take a slot for `order_id` if the document is still the one the decision was made on;
        the reservations not in `keep` (placed, or dead) are dropped in the same write."""
        update: dict[str, Any] = {"$set": {f"reservations.{order_id}": {"at": utcnow()}}}
        # PlaceOrder ids match ^[A-Za-z0-9_-]+$, so an order id is a safe field name.
        stale = [f"reservations.{other}" for other in (doc.get("reservations") or {})
                 if other not in keep and other != order_id]
        if stale:
            update["$unset"] = {name: "" for name in stale}
        written = await update_guarded(self.collection, doc["_id"], update, version=doc["_version"])
        return written is not None

    async def release(self, seller_id: str, order_id: str) -> None:
        """Free the slot of a placement another plugin refused (ORD-5). It bumps the
        version, so a reservation decided meanwhile is decided again, with the slot free."""
        async with self.holding(seller_id):
            doc = await self.get(seller_id)
            if doc is None or order_id not in (doc.get("reservations") or {}):
                return
            await update_guarded(self.collection, seller_id, {"$unset": {f"reservations.{order_id}": ""}},
                                 version=None)
        log.info("cap reservation released", seller_id=seller_id, order_id=order_id)
