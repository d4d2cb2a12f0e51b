"""What sellers (and support) do to their availability, what the scheduler does
at a period's start and end, and the veto on new orders (ORD-5)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, time
from typing import TYPE_CHECKING, Any

import structlog

from core.errors import Conflict
from core.messages import Actor, PlaceOrder, new_id
from core.scheduler import Deadline
from core.vetoes import Veto
from plugins.availability import rules
from plugins.availability.messages import (
    SYSTEM,
    AwayEnded,
    AwayPeriod,
    AwayScheduled,
    AwayStarted,
    CapChanged,
    EndCause,
    GigPaused,
    GigResumed,
)
from plugins.availability.repository import ATTEMPTS, Change, SellerDocuments

if TYPE_CHECKING:
    from core.services import Services

log = structlog.get_logger("rescenter.availability")

NAME = "availability"  # the plugin's name (plugins/availability/__init__.py): it owns these deadlines
AWAY_START = "availability.away_start"
AWAY_END = "availability.away_end"


def _deadline(seller_id: str, period: dict[str, Any], kind: str, due_at: datetime) -> Deadline:
    what = "start" if kind == AWAY_START else "end"
    return Deadline(id=f"availability/{seller_id}/{period['period_id']}/{what}", owner=NAME, kind=kind,
                    subject=f"seller:{seller_id}", due_at=due_at,
                    payload={"seller_id": seller_id, "period_id": period["period_id"]})


def _period(away: dict[str, Any]) -> AwayPeriod:
    return AwayPeriod.model_validate({name: away.get(name) for name in AwayPeriod.model_fields})


def _ending(seller_id: str, away: dict[str, Any], now: datetime, actor: Actor, cause: EndCause) -> Change:
    """End `away`: clear it, cancel its deadlines, say so. A period already over whose
    end deadline has not fired yet (the plugin was off, say) ended at its `until`."""
    ended_at = min(now, away["until"])
    if away["until"] <= now:
        cause, actor = "elapsed", SYSTEM
    change = Change(set={"away": None},
                    cancel=[_deadline(seller_id, away, AWAY_START, away["starts_at"]).id,
                            _deadline(seller_id, away, AWAY_END, away["until"]).id])
    # Published as started (it began when it was set, or its start fired), or due to start before
    # it ended: it refused orders, even when it ends at the very instant it began.
    took_effect = bool(away.get("started")) or away["starts_at"] < ended_at
    if took_effect and not away.get("started"):
        # Its start deadline had not fired: say it started, so that a consumer always
        # sees a period that refused orders start before it ends.
        change.events.append(("availability.away_started", AwayStarted(
            seller_id=seller_id, actor=SYSTEM, rule=rules.away_rule(away), period=_period(away))))
    change.events.append(("availability.away_ended", AwayEnded(
        seller_id=seller_id, actor=actor, rule="AVL-2", period=_period(away), cause=cause, ended_at=ended_at,
        started=took_effect)))
    return change


class AvailabilityCommands:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.documents = SellerDocuments(services)

    # ------------------------------------------------------------ away periods (AVL-1 to AVL-3)

    async def set_away(self, seller_id: str, actor: Actor, *, starts_at: datetime | None, until: datetime,
                       note: str) -> dict[str, Any]:
        """AVL-1: away from `starts_at` (now when absent) until `until`, with a note."""
        def period(now: datetime) -> dict[str, Any]:
            start, end = rules.period_bounds(starts_at, until, now)
            return {"kind": rules.PERIOD, "starts_at": start, "until": end, "note": note, "time_zone": None}

        return await self._set_period(seller_id, actor, period)

    async def set_rest_of_day(self, seller_id: str, actor: Actor, *, time_zone: str, note: str,
                              until_local: time | None) -> dict[str, Any]:
        """AVL-3: away from now until later the same day in the seller's zone (midnight by default)."""
        zone = rules.seller_zone(time_zone)

        def period(now: datetime) -> dict[str, Any]:
            return {"kind": rules.REST_OF_DAY, "starts_at": now,
                    "until": rules.rest_of_day_until(now, zone, until_local), "note": note,
                    "time_zone": zone.key}

        return await self._set_period(seller_id, actor, period)

    async def _set_period(self, seller_id: str, actor: Actor,
                          make: Callable[[datetime], dict[str, Any]]) -> dict[str, Any]:
        def decide(doc: dict[str, Any], now: datetime) -> Change | None:
            wanted = make(now)
            if rules.same_period(doc.get("away"), wanted, now):
                return None  # a repeated request: nothing changes, nothing is published
            change = Change()
            if doc.get("away") is not None:
                change = _ending(seller_id, doc["away"], now, actor, "replaced")
            started = wanted["starts_at"] <= now
            away = {"period_id": new_id(), **wanted, "started": started, "set_at": now, "set_by": actor.id}
            rule = rules.away_rule(away)
            change.set["away"] = away
            if started:
                change.events.append(("availability.away_started", AwayStarted(
                    seller_id=seller_id, actor=actor, rule=rule, period=_period(away))))
            else:
                change.events.append(("availability.away_scheduled", AwayScheduled(
                    seller_id=seller_id, actor=actor, rule=rule, period=_period(away))))
                change.schedule.append(_deadline(seller_id, away, AWAY_START, away["starts_at"]))
            change.schedule.append(_deadline(seller_id, away, AWAY_END, away["until"]))  # AVL-2
            return change

        doc = await self.documents.change(seller_id, decide)
        assert doc is not None
        return doc

    async def end_away(self, seller_id: str, actor: Actor) -> dict[str, Any] | None:
        """AVL-2: the seller ends the period sooner (or withdraws one that has not begun)."""
        def decide(doc: dict[str, Any], now: datetime) -> Change | None:
            if doc.get("away") is None:
                return None
            return _ending(seller_id, doc["away"], now, actor, "ended_by_seller")

        return await self.documents.change(seller_id, decide, create=False)

    async def on_away_start(self, deadline: Deadline) -> None:
        """A period set for later begins: published once (the deadline may fire again)."""
        seller_id, period_id = deadline.payload["seller_id"], deadline.payload["period_id"]

        def decide(doc: dict[str, Any], now: datetime) -> Change | None:
            away = doc.get("away")
            if away is None or away["period_id"] != period_id or away.get("started"):
                return None  # ended, replaced or already announced meanwhile
            return Change(set={"away.started": True}, events=[("availability.away_started", AwayStarted(
                seller_id=seller_id, actor=SYSTEM, rule=rules.away_rule(away), period=_period(away)))])

        await self.documents.change(seller_id, decide, message_id=deadline.id, create=False)

    async def on_away_end(self, deadline: Deadline) -> None:
        """AVL-2: the period switches itself off at `until`."""
        seller_id, period_id = deadline.payload["seller_id"], deadline.payload["period_id"]

        def decide(doc: dict[str, Any], now: datetime) -> Change | None:
            away = doc.get("away")
            if away is None or away["period_id"] != period_id:
                return None  # ended sooner or replaced: that write already said so
            return _ending(seller_id, away, now, SYSTEM, "elapsed")

        await self.documents.change(seller_id, decide, message_id=deadline.id, create=False)

    # ------------------------------------------------------------ cap (AVL-4), paused gigs (AVL-5)

    async def set_cap(self, seller_id: str, actor: Actor, cap: int | None) -> dict[str, Any]:
        """AVL-4. Lowering it below the running orders leaves them untouched; new ones are refused."""
        def decide(doc: dict[str, Any], now: datetime) -> Change | None:
            previous = doc.get("max_active_orders")
            if previous == cap:
                return None
            return Change(set={"max_active_orders": cap}, events=[("availability.cap_changed", CapChanged(
                seller_id=seller_id, actor=actor, rule="AVL-4", max_active_orders=cap, previous=previous))])

        doc = await self.documents.change(seller_id, decide)
        assert doc is not None
        return doc

    async def pause_gig(self, seller_id: str, actor: Actor, gig_id: str) -> dict[str, Any]:
        """AVL-5."""
        def decide(doc: dict[str, Any], now: datetime) -> Change | None:
            paused = doc.get("paused_gigs", [])
            if any(p["gig_id"] == gig_id for p in paused):
                return None
            return Change(set={"paused_gigs": [*paused, {"gig_id": gig_id, "paused_at": now,
                                                        "paused_by": actor.id}]},
                          events=[("availability.gig_paused", GigPaused(
                              seller_id=seller_id, actor=actor, rule="AVL-5", gig_id=gig_id))])

        doc = await self.documents.change(seller_id, decide)
        assert doc is not None
        return doc

    async def resume_gig(self, seller_id: str, actor: Actor, gig_id: str) -> dict[str, Any] | None:
        """AVL-5."""
        def decide(doc: dict[str, Any], now: datetime) -> Change | None:
            paused = doc.get("paused_gigs", [])
            if not any(p["gig_id"] == gig_id for p in paused):
                return None
            return Change(set={"paused_gigs": [p for p in paused if p["gig_id"] != gig_id]},
                          events=[("availability.gig_resumed", GigResumed(
                              seller_id=seller_id, actor=actor, rule="AVL-5", gig_id=gig_id))])

        return await self.documents.change(seller_id, decide, create=False)

    # ------------------------------------------------------------ the veto (ORD-5)

    async def veto(self, order: PlaceOrder) -> Veto | None:
        doc = await self.documents.get(order.seller_id)
        if doc is None:
            return None  # the seller never set anything: always available
        refusal = rules.refusal_before_cap(doc, order.gig_id, self.services.clock.now())
        if refusal is None and doc.get("max_active_orders") is not None:
            refusal = await self._take_slot(order)
        if refusal is not None:
            log.info("order refused", seller_id=order.seller_id, order_id=order.order_id, rule=refusal.rule)
        return refusal

    async def _take_slot(self, order: PlaceOrder) -> Veto | None:
        """AVL-4: reserve a slot under the cap, atomically: concurrent placements let
        exactly the cap through. Released by `order_not_placed` when another plugin
        refuses; an order that ends frees its slot by leaving the core's active orders."""
        documents = self.documents
        async with documents.holding(order.seller_id):
            for _ in range(ATTEMPTS):
                doc = await documents.get(order.seller_id)
                if doc is None:
                    return None
                # Decided again on this read: the seller may have gone away or lifted the cap.
                refusal = rules.refusal_before_cap(doc, order.gig_id, self.services.clock.now())
                cap = doc.get("max_active_orders")
                if refusal is not None or cap is None:
                    return refusal
                held, in_flight = await documents.slots_held(doc, order.order_id)
                if len(held) >= cap:
                    log.info("cap reached", seller_id=order.seller_id, held=len(held), cap=cap)
                    return rules.full_queue_refusal()
                if await documents.reserve(doc, order.order_id, keep=in_flight):
                    return None
        raise Conflict("too many placements for this seller at once; try again", seller_id=order.seller_id)

    async def order_not_placed(self, order: PlaceOrder) -> None:
        await self.documents.release(order.seller_id, order.order_id)
