"""The order lifecycle (ORD-1 to ORD-7).

An order is one document. Every command loads it, decides with the rules
below, and writes the change, its timeline entries (ORD-6), the events to
publish and the deadlines to (un)schedule in one version-guarded update
(core.outbox). A command caused by a message carries the message id, so a
redelivery changes nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from pymongo import ASCENDING, DESCENDING, InsertOne, ReplaceOne

from core.batching import Outcome
from core.clock import Clock
from core.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RescenterError,
    RuleViolation,
)
from core.locks import KeyedLocks
from core.messages import (
    Actor,
    DeliveryRefused,
    MessageData,
    Money,
    OrderAmended,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderDeliveryExtended,
    OrderLate,
    OrderPlaced,
    PlaceOrder,
    RequirementsSubmitted,
    RevisionRequested,
    make_envelope,
)
from core.order_pages import LISTS, fill_lists, list_order
from core.outbox import Effect, Outbox
from core.scheduler import CORE_OWNER, Deadline
from core.settings import OrderPolicy
from core.store import APPLIED_KEEP, Store

log = structlog.get_logger("rescenter.orders")

COLLECTION = "orders"

AWAITING_REQUIREMENTS = "awaiting_requirements"
IN_PROGRESS = "in_progress"
DELIVERED = "delivered"
IN_REVISION = "in_revision"
COMPLETED = "completed"
CANCELLED = "cancelled"
FINAL_STATES = frozenset({COMPLETED, CANCELLED})
ACTIVE_STATES = frozenset({AWAITING_REQUIREMENTS, IN_PROGRESS, DELIVERED, IN_REVISION})

LATE = "order.late"
AUTO_COMPLETE = "order.auto_complete"

SYSTEM = Actor(id="rescenter", role="system")
STAFF_ROLES = frozenset({"support", "admin", "service"})
CENT = Decimal("0.01")


@dataclass
class Change:
    """What a command decided: fields to set, events (each also a timeline entry),
    deadlines to schedule or cancel, and an optional refusal raised after the
    write (ORD-3 records the refused attempt)."""

    set: dict[str, Any] = field(default_factory=dict)
    inc: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, MessageData]] = field(default_factory=list)
    schedule: list[Deadline] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    refusal: RescenterError | None = None


def _deadline_id(order_id: str, kind: str, at: datetime) -> str:
    return f"{COLLECTION}/{order_id}/{kind}/{at.isoformat()}"


def _common(order: dict[str, Any], actor: Actor, *, state: str, rule: str | None) -> dict[str, Any]:
    return {
        "order_id": order["_id"],
        "buyer_id": order["buyer_id"],
        "seller_id": order["seller_id"],
        "gig_id": order["gig_id"],
        "state": state,
        "previous_state": order["state"] if order["state"] != state else None,
        "actor": actor,
        "rule": rule,
    }


def can_see(order: dict[str, Any], actor: Actor) -> bool:
    """Only an order's parties, staff and services see it."""
    return actor.role in STAFF_ROLES or actor.id in (order["buyer_id"], order["seller_id"])


def public_view(order: dict[str, Any]) -> dict[str, Any]:
    """The order as the API shows it: no internal bookkeeping fields."""
    view = {k: v for k, v in order.items() if not k.startswith("_") and k != "timeline"}
    view["id"] = order["_id"]
    view["version"] = order.get("_version", 0)
    return view


class OrderService:
    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        clock: Clock,
        policy: OrderPolicy,
        ask_vetoes: Callable[[PlaceOrder], Awaitable[None]],
    ) -> None:
        self.collection = store.collection(COLLECTION)
        self.batcher = store.batcher(COLLECTION)  # the hot path's reads and inserts share round trips
        self.lists = store.batcher(LISTS)  # the parties' order lists (core.order_pages)
        self.outbox = outbox
        self.clock = clock
        self.policy = policy
        self._ask_vetoes = ask_vetoes  # the plugin registry's: raises the refusal (ORD-5)
        self._writing = KeyedLocks()
        outbox.register(COLLECTION)

    async def create_indexes(self) -> None:
        await self.collection.create_index([("seller_id", ASCENDING), ("placed_at", DESCENDING)])

    async def fill_lists(self) -> None:
        """List the orders stored before the parties' lists existed (once per database)."""
        await fill_lists(self.collection)

    # ------------------------------------------------------------ queries

    async def get(self, order_id: str, actor: Actor | None = None) -> dict[str, Any]:
        order = await self.collection.find_one({"_id": order_id}, {"_outbox": 0, "_applied": 0})
        if order is None or (actor is not None and not can_see(order, actor)):
            # 404 either way: a stranger learns nothing, not even that the order exists.
            raise NotFound(f"no order {order_id!r}", order_id=order_id)
        return order

    async def active_orders(self, seller_id: str, buyer_id: str | None = None) -> list[dict[str, Any]]:
        """The seller's orders that are not final (ORD-1), with one buyer when given:
        what a plugin may check before a change (BLK-2) without keeping a copy."""
        query: dict[str, Any] = {"seller_id": seller_id, "state": {"$in": sorted(ACTIVE_STATES)}}
        if buyer_id is not None:
            query["buyer_id"] = buyer_id
        projection = {"_outbox": 0, "_applied": 0, "timeline": 0, "deliveries": 0}
        return await self.collection.find(query, projection).sort("placed_at", ASCENDING).to_list()

    # ------------------------------------------------------------ placing (ORD-5)

    async def place(self, command: PlaceOrder, actor: Actor, *, message_id: str | None = None) -> dict[str, Any]:
        existing = await self.batcher.find_by_id(command.order_id)
        if existing is not None:
            if _same_order(existing, command):
                await list_order(self.lists, existing)  # a retried placement: listed, whatever came before
                if existing.get("_outbox"):  # and its event out, if the first attempt was cut off
                    async with self._writing.hold(existing["_id"]):
                        await self._flush_quietly(existing)
                return existing
            if message_id is not None and existing.get("placement_id") == message_id:
                raise InvalidInput("this Idempotency-Key was used for a different order", order_id=command.order_id)
            raise Conflict(f"order id {command.order_id!r} is taken", order_id=command.order_id)
        if actor.role == "buyer" and actor.id != command.buyer_id:
            raise Forbidden("a buyer places orders for themselves only")
        if command.buyer_id == command.seller_id:
            raise RuleViolation("a seller cannot order from themselves", rule="ORD-5")
        await self._ask_vetoes(command)  # ORD-5: every enabled plugin first
        now = self.clock.now()
        order: dict[str, Any] = {
            "_id": command.order_id,
            "buyer_id": command.buyer_id,
            "seller_id": command.seller_id,
            "gig_id": command.gig_id,
            "price": {"amount": str(command.price.amount.quantize(CENT)), "currency": command.price.currency},
            "delivery_days": command.delivery_days,
            "state": AWAITING_REQUIREMENTS,
            "placed_at": now,
            "late": False,
            "delivery_count": 0,
            "revision_count": 0,
            "placement_id": message_id or command.order_id,
            "_version": 1,
            "_applied": [message_id] if message_id else [],
        }
        event = OrderPlaced(
            **_common(order, actor, state=AWAITING_REQUIREMENTS, rule="ORD-1"),
            price=command.price,
            delivery_days=command.delivery_days,
        )
        envelope = make_envelope("order.placed", event, subject=order["_id"], time=now)
        order["timeline"] = [_timeline_entry(0, envelope.type, envelope.id, now, actor, "ORD-1", event)]
        order.update(self.outbox.initial([Effect.publish(envelope)]))
        await list_order(self.lists, order)  # first: an entry without its order is skipped, never the reverse
        if await self.batcher.write(InsertOne(order)) is Outcome.CONFLICT:
            raise Conflict(f"order id {command.order_id!r} is taken", order_id=command.order_id)
        async with self._writing.hold(order["_id"]):  # a reaction to order.placed waits for the flush
            await self._flush_quietly(order)  # stored: placed, even if the event waits for the sweeper
        log.info("order placed", order_id=order["_id"])
        return order

    # ------------------------------------------------------------ commands

    async def submit_requirements(self, order_id: str, actor: Actor, requirements: str,
                                  *, message_id: str | None = None) -> dict[str, Any]:
        def decide(order: dict[str, Any], now: datetime) -> Change:
            _require_party(order, actor, "buyer")
            _require_state(order, {AWAITING_REQUIREMENTS}, "submit requirements")
            # ORD-2: the delivery clock starts now.
            due_at = now + timedelta(days=order["delivery_days"])
            return Change(
                set={"state": IN_PROGRESS, "requirements": requirements, "started_at": now, "due_at": due_at},
                events=[("order.requirements_submitted", RequirementsSubmitted(
                    **_common(order, actor, state=IN_PROGRESS, rule="ORD-2"), started_at=now, due_at=due_at))],
                schedule=[Deadline(id=_deadline_id(order["_id"], "late", due_at), owner=CORE_OWNER,
                                   kind=LATE, subject=order["_id"], due_at=due_at)],
            )
        return await self._command(order_id, decide, message_id=message_id)

    async def deliver(self, order_id: str, actor: Actor, message: str, attachments: list[str],
                      *, message_id: str | None = None) -> dict[str, Any]:
        def decide(order: dict[str, Any], now: datetime) -> Change:
            _require_party(order, actor, "seller")
            _require_state(order, {IN_PROGRESS, IN_REVISION}, "deliver")
            if not message.strip() and not any(a.strip() for a in attachments):
                # ORD-3: refused, and the attempt stays on the timeline.
                reason = "a delivery needs a message or at least one attachment"
                return Change(
                    inc={"refused_delivery_count": 1},
                    events=[("order.delivery_refused", DeliveryRefused(
                        **_common(order, actor, state=order["state"], rule="ORD-3"), reason=reason))],
                    refusal=RuleViolation(f"empty delivery refused: {reason}", rule="ORD-3"),
                )
            number = order.get("delivery_count", 0) + 1
            auto_at = now + self.policy.auto_complete_after  # ORD-4
            cancel = [order["auto_complete_deadline"]] if order.get("auto_complete_deadline") else []
            late_id = order.get("due_at") and _deadline_id(order["_id"], "late", order["due_at"])
            if late_id and not order.get("late"):
                cancel.append(late_id)  # delivered in time: it will not be late
            # Numbered: a delivery, a revision and a new delivery at one instant (the test
            # clock) must not reuse the id of the deadline the revision cancelled.
            auto_id = _deadline_id(order["_id"], f"auto_complete/{number}", auto_at)
            return Change(
                set={"state": DELIVERED, "delivered_at": now, "auto_complete_at": auto_at,
                     "auto_complete_deadline": auto_id,
                     f"deliveries.{number - 1}": {"number": number, "at": now, "message": message,
                                                   "attachments": attachments}},
                inc={"delivery_count": 1},
                events=[("order.delivered", OrderDelivered(
                    **_common(order, actor, state=DELIVERED, rule="ORD-4"), delivery_number=number,
                    auto_complete_at=auto_at, late=bool(order.get("late"))))],
                schedule=[Deadline(id=auto_id, owner=CORE_OWNER, kind=AUTO_COMPLETE,
                                   subject=order["_id"], due_at=auto_at)],
                cancel=cancel,
            )
        return await self._command(order_id, decide, message_id=message_id)

    async def accept(self, order_id: str, actor: Actor, *, message_id: str | None = None) -> dict[str, Any]:
        def decide(order: dict[str, Any], now: datetime) -> Change:
            _require_party(order, actor, "buyer")
            _require_state(order, {DELIVERED}, "accept the delivery")
            return self._complete(order, actor, now, cause="accepted")
        return await self._command(order_id, decide, message_id=message_id)

    async def request_revision(self, order_id: str, actor: Actor, reason: str,
                               *, message_id: str | None = None) -> dict[str, Any]:
        def decide(order: dict[str, Any], now: datetime) -> Change:
            _require_party(order, actor, "buyer")
            _require_state(order, {DELIVERED}, "ask for a revision")
            number = order.get("revision_count", 0) + 1
            return Change(
                set={"state": IN_REVISION, "revision_reason": reason, "auto_complete_at": None,
                     "auto_complete_deadline": None},
                inc={"revision_count": 1},
                events=[("order.revision_requested", RevisionRequested(
                    **_common(order, actor, state=IN_REVISION, rule="ORD-4"), revision_number=number))],
                cancel=[order["auto_complete_deadline"]] if order.get("auto_complete_deadline") else [],
            )
        return await self._command(order_id, decide, message_id=message_id)

    async def cancel(self, order_id: str, actor: Actor, *, cause: str, reason: str | None = None,
                     rule: str = "ORD-1", requested_by: str | None = None, request_id: str | None = None,
                     message_id: str | None = None) -> dict[str, Any]:
        """Cancel an active order. Parties never call this directly: support does, payments
        through a chargeback (ORD-7), the resolution center after a mutual agreement, with
        `requested_by` the party whose request was accepted."""
        if requested_by is None:
            requested_by = {"chargeback": "payments", "support": "support"}.get(cause)

        def decide(order: dict[str, Any], now: datetime) -> Change:
            if actor.role not in STAFF_ROLES and actor.role != "system":
                raise Forbidden("only support cancels an order directly; parties use the resolution center")
            _require_state(order, ACTIVE_STATES, "cancel")
            return Change(
                set={"state": CANCELLED, "cancelled_at": now, "cancel_cause": cause,
                     "cancelled_from": order["state"], "cancel_requested_by": requested_by},
                events=[("order.cancelled", OrderCancelled(
                    **_common(order, actor, state=CANCELLED, rule=rule), cause=cause, reason=reason,
                    requested_by=requested_by, request_id=request_id))],
                cancel=_open_deadlines(order),
            )
        return await self._command(order_id, decide, message_id=message_id)

    async def extend_delivery(self, order_id: str, actor: Actor, days: int, *, rule: str = "DSP-7",
                              request_id: str | None = None, message_id: str | None = None) -> dict[str, Any]:
        """Move the due date by `days` once the parties agreed (DSP-7). Parties never call this
        directly: the resolution center does, when the buyer accepts or stays silent."""
        def decide(order: dict[str, Any], now: datetime) -> Change:
            _require_staff_or_system(actor, "extend the delivery date")
            _require_state(order, ACTIVE_STATES, "extend the delivery date")
            if days < 1:
                raise InvalidInput("an extension adds at least one day", rule=rule)
            moved = _move_due_date(order, days)
            return Change(
                set=moved.set,
                inc={"delivery_days": days},
                events=[("order.delivery_extended", OrderDeliveryExtended(
                    **_common(order, actor, state=order["state"], rule=rule), days=days,
                    previous_due_at=moved.previous, due_at=moved.due_at,
                    delivery_days=order["delivery_days"] + days, late=bool(order.get("late")),
                    request_id=request_id))],
                schedule=moved.schedule,
                cancel=moved.cancel,
            )
        return await self._command(order_id, decide, message_id=message_id)

    async def amend(self, order_id: str, actor: Actor, *, added_revisions: int = 0, added_days: int = 0,
                    added_price: Money | None = None, rule: str = "DSP-8", request_id: str | None = None,
                    message_id: str | None = None) -> dict[str, Any]:
        """Add revisions, days and price once the buyer accepted an offer (DSP-8). The price
        stays an exact decimal in the order's currency; the first amendment keeps the
        placed price as `original_price` (DSP-2 caps a partial refund on it)."""
        def decide(order: dict[str, Any], now: datetime) -> Change:
            _require_staff_or_system(actor, "amend an order")
            _require_state(order, ACTIVE_STATES, "amend the order")
            if added_revisions < 0 or added_days < 0 or not (added_revisions or added_days or added_price):
                raise InvalidInput("an amendment adds revisions, days or a price", rule=rule)
            previous_price = Money(amount=Decimal(order["price"]["amount"]), currency=order["price"]["currency"])
            if added_price is not None and added_price.currency != previous_price.currency:
                raise InvalidInput(f"the added price must be in the order's currency, {previous_price.currency}",
                                   rule=rule, currency=previous_price.currency)
            total = previous_price.amount + (added_price.amount if added_price else Decimal(0))
            price = Money(amount=total.quantize(CENT), currency=previous_price.currency)
            moved = _move_due_date(order, added_days) if added_days else _MovedDueDate(previous=order.get("due_at"),
                                                                                       due_at=order.get("due_at"))
            fields: dict[str, Any] = {**moved.set, "price": {"amount": str(price.amount), "currency": price.currency}}
            if "original_price" not in order:
                fields["original_price"] = order["price"]
            inc = {name: value for name, value in (("extra_revisions", added_revisions),
                                                   ("delivery_days", added_days)) if value}
            return Change(
                set=fields,
                inc=inc,
                events=[("order.amended", OrderAmended(
                    **_common(order, actor, state=order["state"], rule=rule), added_revisions=added_revisions,
                    added_days=added_days, added_price=added_price, previous_price=previous_price, price=price,
                    extra_revisions=order.get("extra_revisions", 0) + added_revisions,
                    delivery_days=order["delivery_days"] + added_days, previous_due_at=moved.previous,
                    due_at=moved.due_at, request_id=request_id))],
                schedule=moved.schedule,
                cancel=moved.cancel,
            )
        return await self._command(order_id, decide, message_id=message_id)

    async def chargeback(self, order_id: str, *, message_id: str) -> dict[str, Any]:
        """ORD-7: payments reported a chargeback: cancel with cause `chargeback`."""
        return await self.cancel(order_id, Actor(id="payments", role="service"), cause="chargeback",
                                 rule="ORD-7", message_id=message_id)

    # ------------------------------------------------------------ deadlines

    async def on_late(self, deadline: Deadline) -> None:
        def decide(order: dict[str, Any], now: datetime) -> Change:
            # ORD-2: not delivered at due_at -> late, published once.
            if order["state"] not in {IN_PROGRESS} or order.get("late") or order.get("due_at") != deadline.due_at:
                return Change()
            return Change(set={"late": True, "late_at": now},
                          events=[("order.late", OrderLate(
                              **_common(order, SYSTEM, state=order["state"], rule="ORD-2"),
                              due_at=order["due_at"]))])
        await self._command(deadline.subject, decide, message_id=deadline.id)

    async def on_auto_complete(self, deadline: Deadline) -> None:
        def decide(order: dict[str, Any], now: datetime) -> Change:
            # ORD-4: a delivery left unanswered completes itself.
            if order["state"] != DELIVERED or order.get("auto_complete_deadline") != deadline.id:
                return Change()
            return self._complete(order, SYSTEM, now, cause="auto_completed")
        await self._command(deadline.subject, decide, message_id=deadline.id)

    def _complete(self, order: dict[str, Any], actor: Actor, now: datetime, *, cause: str) -> Change:
        return Change(
            set={"state": COMPLETED, "completed_at": now, "completion_cause": cause},
            events=[("order.completed", OrderCompleted(
                **_common(order, actor, state=COMPLETED, rule="ORD-4"), cause=cause))],
            cancel=_open_deadlines(order),
        )

    # ------------------------------------------------------------ the write

    async def _command(
        self,
        order_id: str,
        decide: Callable[[dict[str, Any], datetime], Change],
        *,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        # One writer per order in this process: the version guard arbitrates between
        # processes; here a second writer waits instead of losing the race and retrying,
        # and an order's events are published in the order of its changes.
        async with self._writing.hold(order_id):
            return await self._decide_and_write(order_id, decide, message_id=message_id)

    async def _decide_and_write(
        self,
        order_id: str,
        decide: Callable[[dict[str, Any], datetime], Change],
        *,
        message_id: str | None = None,
        attempts: int = 8,
    ) -> dict[str, Any]:
        for _ in range(attempts):
            order = await self.batcher.find_by_id(order_id)
            if order is None:
                raise NotFound(f"no order {order_id!r}", order_id=order_id)
            if message_id is not None and message_id in order.get("_applied", []):
                # A redelivery: already applied. If the first attempt was cut off between its
                # write and its flush (its task cancelled when the consumer's channel closed),
                # the effects still wait in the outbox: apply them now, once their lease ends.
                if order.get("_outbox"):
                    await self._flush_quietly(order)
                return order
            now = self.clock.now()
            change = decide(order, now)
            if not (change.set or change.inc or change.events or change.cancel or change.schedule):
                if message_id is None:
                    return order
                # Remember the message even when it changed nothing, so it stays a no-op.
            effects: list[Effect] = []
            entries = []
            seq = len(order.get("timeline", []))
            for offset, (type_, data) in enumerate(change.events):
                envelope = make_envelope(type_, data, subject=order_id, time=now)
                effects.append(Effect.publish(envelope))
                actor = getattr(data, "actor", SYSTEM)
                entries.append(_timeline_entry(seq + offset, type_, envelope.id, now, actor,
                                               getattr(data, "rule", None), data))
            effects += [Effect.cancel(deadline_id) for deadline_id in change.cancel]
            effects += [Effect.schedule(deadline) for deadline in change.schedule]
            written = _changed(order, change, entries, message_id)
            self.outbox.append(written, effects)
            # The whole new document, written only if the order is still at the version it
            # was decided on, with the outbox as read (a guarded upsert: core.batching),
            # sharing a round trip with other orders' writes.
            guard = {"_id": order_id, "_version": order.get("_version", 0), **Outbox.guard(order)}
            if await self.batcher.write(ReplaceOne(guard, written, upsert=True)) is Outcome.CONFLICT:
                continue  # someone else changed it first: decide again on the new state
            await self._flush_quietly(written)
            if change.refusal is not None:
                raise change.refusal
            return written
        raise Conflict(f"order {order_id!r} is changing too fast; try again", order_id=order_id)

    async def _flush_quietly(self, doc: dict[str, Any]) -> None:
        """The change is stored: if publishing fails now, the sweeper publishes later."""
        try:
            await self.outbox.flush(COLLECTION, doc)
        except Exception as exc:
            log.warning("publish deferred to the outbox sweeper", order_id=doc["_id"], error=repr(exc))


def _same_order(existing: dict[str, Any], command: PlaceOrder) -> bool:
    return (
        existing["buyer_id"] == command.buyer_id
        and existing["seller_id"] == command.seller_id
        and existing["gig_id"] == command.gig_id
        and Decimal(existing["price"]["amount"]) == command.price.amount
        and existing["price"]["currency"] == command.price.currency
        and existing["delivery_days"] == command.delivery_days
    )


def _require_party(order: dict[str, Any], actor: Actor, party: str) -> None:
    if actor.role == "service":
        return  # services act on behalf of users; they are trusted
    if actor.id != order[f"{party}_id"]:
        if actor.id in (order["buyer_id"], order["seller_id"]) or actor.role in STAFF_ROLES:
            raise Forbidden(f"only the order's {party} can do this", order_id=order["_id"])
        raise NotFound(f"no order {order['_id']!r}", order_id=order["_id"])


def _require_state(order: dict[str, Any], allowed: set[str] | frozenset[str], what: str) -> None:
    if order["state"] in allowed:
        return
    if order["state"] in FINAL_STATES:
        raise RuleViolation(f"cannot {what}: the order is {order['state']}, a final state", rule="ORD-1",
                            state=order["state"])
    raise RuleViolation(f"cannot {what} while the order is {order['state']}", rule="ORD-1",
                        state=order["state"])


def _require_staff_or_system(actor: Actor, what: str) -> None:
    if actor.role not in STAFF_ROLES and actor.role != "system":
        raise Forbidden(f"parties cannot {what} directly: they agree on it in the resolution center")


@dataclass
class _MovedDueDate:
    previous: datetime | None
    due_at: datetime | None
    set: dict[str, Any] = field(default_factory=dict)
    cancel: list[str] = field(default_factory=list)
    schedule: list[Deadline] = field(default_factory=list)


def _move_due_date(order: dict[str, Any], days: int) -> _MovedDueDate:
    """ORD-2 after an agreed extension: `due_at` moves by `days`; before the requirements
    there is no due date yet and the longer `delivery_days` moves it when the clock starts.

    The late deadline is keyed by the due instant, so the old one is cancelled and a new
    one scheduled while the order is in progress. An order already late stays late:
    `order.late` was published once and is not taken back (nor published again)."""
    previous = order.get("due_at")
    if previous is None:
        return _MovedDueDate(previous=None, due_at=None)
    due_at = previous + timedelta(days=days)
    moved = _MovedDueDate(previous=previous, due_at=due_at, set={"due_at": due_at})
    if not order.get("late"):
        moved.cancel.append(_deadline_id(order["_id"], "late", previous))
        if order["state"] == IN_PROGRESS:
            moved.schedule.append(Deadline(id=_deadline_id(order["_id"], "late", due_at), owner=CORE_OWNER,
                                           kind=LATE, subject=order["_id"], due_at=due_at))
    return moved


def _changed(order: dict[str, Any], change: Change, entries: list[dict[str, Any]],
             message_id: str | None) -> dict[str, Any]:
    """The order after `change`: its fields set (a dotted path sets a key of an embedded
    document, as MongoDB's `$set` does), its counters moved, the timeline entries added,
    the version bumped and the message remembered (`_applied`, the last APPLIED_KEEP)."""
    # A new top-level document and a copy of each embedded document on a changed path; what
    # does not change (the timeline, past deliveries) is shared with `order`, never changed.
    new = dict(order)
    for path, value in change.set.items():
        *parents, leaf = path.split(".")
        target = new
        for name in parents:
            inner = target.get(name) or {}
            if not isinstance(inner, dict):
                raise TypeError(f"{path}: {name} is not an embedded document")
            target[name] = inner = dict(inner)
            target = inner
        target[leaf] = value
    for name, by in change.inc.items():
        new[name] = new.get(name, 0) + by
    new["timeline"] = [*order.get("timeline", []), *entries]
    new["_version"] = order.get("_version", 0) + 1
    if message_id is not None:
        new["_applied"] = [*order.get("_applied", []), message_id][-APPLIED_KEEP:]
    return new


def _open_deadlines(order: dict[str, Any]) -> list[str]:
    ids = []
    if order.get("auto_complete_deadline"):
        ids.append(order["auto_complete_deadline"])
    if order.get("due_at") and not order.get("late"):
        ids.append(_deadline_id(order["_id"], "late", order["due_at"]))
    return ids


def _timeline_entry(seq: int, type_: str, event_id: str, at: datetime, actor: Actor,
                    rule: str | None, data: MessageData) -> dict[str, Any]:
    details = data.model_dump(mode="json", exclude_none=True,
                              exclude={"order_id", "buyer_id", "seller_id", "gig_id", "actor", "rule"})
    return {
        "seq": seq,
        "type": type_,
        "event_id": event_id,
        "at": at,
        "actor": actor.model_dump(),
        "rule": rule,
        "details": details,
    }
