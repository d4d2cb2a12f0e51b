"""Sellers block and unblock buyers (BLK-1 to BLK-3); blocked buyers' new orders
are refused (ORD-5).

One document per seller (`blocking_sellers`, `_id` = seller id) holds the list
`blocked: [{buyer_id, blocked_at, blocked_by}]`. Every change is decided on the
document read by `_id` and written in one version-guarded update that carries
its event (`_outbox`), then flushed. The veto reads that one document.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from pymongo.errors import DuplicateKeyError

from core.errors import Conflict, InvalidInput, RuleViolation
from core.locks import KeyedLocks
from core.messages import Actor, MessageData, PlaceOrder, make_envelope
from core.outbox import Effect
from core.store import update_guarded
from core.vetoes import Veto
from plugins.blocking.messages import BuyerBlocked, BuyerUnblocked, subject

if TYPE_CHECKING:
    from core.services import Services

log = structlog.get_logger("rescenter.blocking")

NAME = "blocking"  # the plugin's name (plugins/blocking/__init__.py)
COLLECTION = "blocking_sellers"
ATTEMPTS = 8

#: What a blocked buyer reads (BLK-1): true, and it names no block: only the seller
#: (and support) know there is one.
REFUSAL = "This seller does not take orders from your account. You may find the same service from another seller."

# One writer per seller in this process; the version guard arbitrates between processes.
_writing = KeyedLocks()

#: the new list and the event saying so; None: nothing to change
Decision = tuple[list[dict[str, Any]], tuple[str, MessageData]]
Decide = Callable[[list[dict[str, Any]], datetime], Decision | None]


def is_blocked(doc: dict[str, Any] | None, buyer_id: str) -> bool:
    return doc is not None and any(entry["buyer_id"] == buyer_id for entry in doc.get("blocked", []))


class BlockingCommands:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.collection = services.store.collection(COLLECTION)
        self._database = services.settings.store.database

    async def get(self, seller_id: str) -> dict[str, Any] | None:
        # Read on every placement (ORD-5): concurrent placements share the round trip.
        return await self.services.store.batcher(COLLECTION).find_by_id(seller_id)

    async def blocked_buyers(self, seller_id: str) -> list[dict[str, Any]]:
        """BLK-3: the seller's list, oldest block first."""
        return list((await self.get(seller_id) or {}).get("blocked", []))

    # ------------------------------------------------------------ commands

    async def block(self, seller_id: str, buyer_id: str, actor: Actor) -> list[dict[str, Any]]:
        """BLK-1, refused while the buyer has an active order with the seller (BLK-2)."""
        if buyer_id == seller_id:
            raise InvalidInput("a seller cannot block themselves", rule="BLK-1", buyer_id=buyer_id)
        if is_blocked(await self.get(seller_id), buyer_id):
            return await self.blocked_buyers(seller_id)  # a repeated request: nothing changes
        # BLK-2, read from the core's orders (the truth) rather than from a copy.
        active = await self.services.orders.active_orders(seller_id, buyer_id)
        if active:
            ids = [order["_id"] for order in active]
            raise RuleViolation(
                f"{buyer_id} has {len(ids)} active order(s) with you ({', '.join(ids)}): a buyer can be blocked "
                "once every order with them is completed or cancelled",
                rule="BLK-2", buyer_id=buyer_id, order_ids=ids)

        def decide(blocked: list[dict[str, Any]], now: datetime) -> Decision | None:
            if any(entry["buyer_id"] == buyer_id for entry in blocked):
                return None
            entry = {"buyer_id": buyer_id, "blocked_at": now, "blocked_by": actor.model_dump()}
            return [*blocked, entry], ("blocking.buyer_blocked", BuyerBlocked(
                seller_id=seller_id, buyer_id=buyer_id, actor=actor, rule="BLK-1"))

        return await self._change(seller_id, decide)

    async def unblock(self, seller_id: str, buyer_id: str, actor: Actor) -> list[dict[str, Any]]:
        """BLK-3."""
        def decide(blocked: list[dict[str, Any]], now: datetime) -> Decision | None:
            if not any(entry["buyer_id"] == buyer_id for entry in blocked):
                return None  # not blocked (any more): a repeated request changes nothing
            return [e for e in blocked if e["buyer_id"] != buyer_id], ("blocking.buyer_unblocked", BuyerUnblocked(
                seller_id=seller_id, buyer_id=buyer_id, actor=actor, rule="BLK-3"))

        return await self._change(seller_id, decide)

    async def _change(self, seller_id: str, decide: Decide) -> list[dict[str, Any]]:
        clock, outbox = self.services.clock, self.services.outbox
        async with _writing.hold(f"{self._database}/{seller_id}"):
            for _ in range(ATTEMPTS):
                doc = await self._get_or_create(seller_id)
                now = clock.now()
                decided = decide(doc.get("blocked", []), now)
                if decided is None:
                    return list(doc.get("blocked", []))
                blocked, (type_, event) = decided
                envelope = make_envelope(type_, event, subject=subject(seller_id), time=now)
                update = outbox.stage({"$set": {"blocked": blocked}}, [Effect.publish(envelope)])
                written = await update_guarded(self.collection, seller_id, update, version=doc["_version"])
                if written is None:
                    continue  # changed meanwhile: decide again on what is there now
                try:
                    await outbox.flush(COLLECTION, written)
                except Exception as exc:  # stored: the outbox sweeper publishes it later
                    log.warning("publish deferred to the outbox sweeper", seller_id=seller_id, error=repr(exc))
                log.info("block list changed", seller_id=seller_id, published=type_)
                return list(written["blocked"])
        raise Conflict(f"the block list of {seller_id!r} is changing too fast; try again", seller_id=seller_id)

    async def _get_or_create(self, seller_id: str) -> dict[str, Any]:
        doc = await self.get(seller_id)
        if doc is None:
            try:
                await self.collection.insert_one({"_id": seller_id, "blocked": [], "_version": 0, "_outbox": []})
            except DuplicateKeyError:
                pass  # created meanwhile by another request
            doc = await self.get(seller_id)
        assert doc is not None
        return doc

    # ------------------------------------------------------------ the veto (ORD-5)

    async def veto(self, order: PlaceOrder) -> Veto | None:
        """BLK-1. The refusal names no block and gives no detail about one."""
        if not is_blocked(await self.get(order.seller_id), order.buyer_id):
            return None
        log.info("order refused: buyer blocked", seller_id=order.seller_id, buyer_id=order.buyer_id,
                 order_id=order.order_id)
        return Veto(reason=REFUSAL, rule="BLK-1", discreet=True)
