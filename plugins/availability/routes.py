"""HTTP routes of the availability plugin (AVL-1 to AVL-5).

Whether a seller is available, the note and the return date are public: a gig
page shows them to visitors who are not logged in, and they are what a refused
buyer is told anyway, so that route needs no token. The cap, the running
orders and the paused gigs are the seller's business: only the seller and
support (staff) read or change them.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, StringConstraints, field_validator

from core.http.responses import View
from core.http.routes import SELLER_OR_SUPPORT, Body, Call, Route
from plugins.availability import rules
from plugins.availability.commands import NAME, AvailabilityCommands

TAGS = ("availability",)

Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=rules.NOTE_MAX_LENGTH)]


# ---------------------------------------------------------------- bodies


class AwayBody(Body):
    """AVL-1: an away period, from `starts_at` (now when absent) until `until`."""

    starts_at: AwareDatetime | None = Field(
        default=None, description="When it begins; absent or past: now. New orders are refused from then.")
    until: AwareDatetime = Field(description="The return date: orders are taken again from this instant (AVL-2).")
    note: Note = Field(description="A short note shown to buyers with the return date.")


class RestOfDayBody(Body):
    """AVL-3: away from now until later the same day, in the seller's time zone."""

    time_zone: str = Field(min_length=1, max_length=64, examples=["Pacific/Kiritimati"],
                           description="The seller's IANA time zone.")
    note: Note = Field(description="A short note shown to buyers with the return time.")
    until: time | None = Field(
        default=None, examples=["18:30"],
        description="Local wall time, later today, when orders are taken again; absent: the end of the day "
                    "(the next local midnight).")

    @field_validator("until")
    @classmethod
    def _wall_time(cls, value: time | None) -> time | None:
        if value is not None and value.tzinfo is not None:
            raise ValueError("a local wall time without an offset (the zone is time_zone), e.g. 18:30")
        return value


class CapBody(Body):
    """AVL-4: the most active (non-final) orders the seller takes at once."""

    max_active_orders: int | None = Field(
        strict=True, ge=1, le=10_000, description="The cap; null removes it. Orders already running are never touched.")


# ---------------------------------------------------------------- answers


class Away(View):
    """The current (or next) away period: what a refused buyer is told (AVL-1)."""

    starts_at: datetime
    until: datetime = Field(description="The return date: orders are taken again from then (AVL-2).")
    note: str


class AwayDetails(Away):
    kind: Literal["period", "rest_of_day"] = Field(description="period: set with AVL-1; rest_of_day: with AVL-3.")
    time_zone: str | None = Field(description="The seller's IANA time zone, for rest_of_day.")
    period_id: str


class Availability(View):
    """Whether the seller takes orders now (public: no token)."""

    seller_id: str
    available: bool
    away: Away | None = Field(description="The current or upcoming away period; null: none.")


class PausedGig(View):
    gig_id: str
    paused_at: datetime


class AvailabilitySettings(View):
    """The seller's availability with what only the seller and support see (AVL-1 to AVL-5)."""

    seller_id: str
    available: bool
    away: AwayDetails | None
    max_active_orders: int | None = Field(description="The cap (AVL-4); null: none.")
    active_orders: int = Field(description="The seller's orders that are not completed or cancelled.")
    paused_gigs: list[PausedGig] = Field(description="AVL-5.")


# ---------------------------------------------------------------- views


def public_view(seller_id: str, doc: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    away = rules.current_or_upcoming((doc or {}).get("away"), now)
    return {
        "seller_id": seller_id,
        "available": not rules.is_away(away, now),
        "away": None if away is None else {
            "starts_at": away["starts_at"], "until": away["until"], "note": away["note"]},
    }


async def private_view(call: Call, seller_id: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    now = call.services.clock.now()
    view = public_view(seller_id, doc, now)
    doc = doc or {}
    away = rules.current_or_upcoming(doc.get("away"), now)
    if away is not None:
        view["away"].update(kind=away["kind"], time_zone=away.get("time_zone"), period_id=away["period_id"])
    active = await call.services.orders.active_orders(seller_id)
    view.update(
        max_active_orders=doc.get("max_active_orders"),
        active_orders=len(active),
        paused_gigs=[{"gig_id": p["gig_id"], "paused_at": p["paused_at"]} for p in doc.get("paused_gigs", [])],
    )
    return view


# ---------------------------------------------------------------- handlers


async def get_availability(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    doc = await AvailabilityCommands(call.services).documents.get(seller_id)
    return public_view(seller_id, doc, call.services.clock.now())


async def get_settings(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    call.acting_for_seller(seller_id)
    doc = await AvailabilityCommands(call.services).documents.get(seller_id)
    return await private_view(call, seller_id, doc)


async def set_away(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    body: AwayBody = call.body
    doc = await AvailabilityCommands(call.services).set_away(
        seller_id, call.acting_for_seller(seller_id), starts_at=body.starts_at, until=body.until, note=body.note)
    return await private_view(call, seller_id, doc)


async def set_rest_of_day(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    body: RestOfDayBody = call.body
    doc = await AvailabilityCommands(call.services).set_rest_of_day(
        seller_id, call.acting_for_seller(seller_id), time_zone=body.time_zone, note=body.note, until_local=body.until)
    return await private_view(call, seller_id, doc)


async def end_away(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    doc = await AvailabilityCommands(call.services).end_away(seller_id, call.acting_for_seller(seller_id))
    return await private_view(call, seller_id, doc)


async def set_cap(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    body: CapBody = call.body
    doc = await AvailabilityCommands(call.services).set_cap(
        seller_id, call.acting_for_seller(seller_id), body.max_active_orders)
    return await private_view(call, seller_id, doc)


async def pause_gig(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    doc = await AvailabilityCommands(call.services).pause_gig(
        seller_id, call.acting_for_seller(seller_id), call.match["gig_id"])
    return await private_view(call, seller_id, doc)


async def resume_gig(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    # A gig that is not paused is left as it is: a repeated DELETE answers the same.
    doc = await AvailabilityCommands(call.services).resume_gig(
        seller_id, call.acting_for_seller(seller_id), call.match["gig_id"])
    return await private_view(call, seller_id, doc)


def routes() -> list[Route]:
    seller = "/availability/sellers/{seller_id}"
    return [
        Route("GET", seller, get_availability,
              "Whether the seller is available now, and an away period's note and return date (public).",
              roles=None, response=Availability, rules=("AVL-1", "AVL-2", "AVL-3"), tags=TAGS,
              responses={"404": None}),  # any seller id: one never away is available
        Route("GET", f"{seller}/settings", get_settings,
              "The seller's availability with the cap, the running orders and the paused gigs "
              "(the seller and support).",
              roles=SELLER_OR_SUPPORT, response=AvailabilitySettings, rules=("AVL-1", "AVL-4", "AVL-5"), tags=TAGS),
        Route("PUT", f"{seller}/away", set_away,
              "Set an away period with a note: new orders are refused from its start until its return date; "
              "running orders are untouched. Replaces the current period.",
              roles=SELLER_OR_SUPPORT, response=AvailabilitySettings, body=AwayBody, rules=("AVL-1", "AVL-2"), tags=TAGS),
        Route("PUT", f"{seller}/away/rest-of-day", set_rest_of_day,
              "Away for the rest of the day: from now until later the same day in the seller's time zone "
              "(the next local midnight by default).",
              roles=SELLER_OR_SUPPORT, response=AvailabilitySettings, body=RestOfDayBody, rules=("AVL-3", "AVL-2"), tags=TAGS),
        Route("DELETE", f"{seller}/away", end_away,
              "End the away period now (or withdraw one that has not begun); orders are taken again.",
              roles=SELLER_OR_SUPPORT, response=AvailabilitySettings, rules=("AVL-2",), tags=TAGS),
        Route("PUT", f"{seller}/order-cap", set_cap,
              "Cap the seller's active orders (null removes the cap); orders beyond it are refused.",
              roles=SELLER_OR_SUPPORT, response=AvailabilitySettings, body=CapBody, rules=("AVL-4",), tags=TAGS),
        Route("PUT", f"{seller}/paused-gigs/{{gig_id}}", pause_gig,
              "Pause a gig: its orders are refused until it is resumed.",
              roles=SELLER_OR_SUPPORT, response=AvailabilitySettings, rules=("AVL-5",), tags=TAGS),
        Route("DELETE", f"{seller}/paused-gigs/{{gig_id}}", resume_gig,
              "Resume a paused gig: it takes orders again.",
              roles=SELLER_OR_SUPPORT, response=AvailabilitySettings, rules=("AVL-5",), tags=TAGS),
    ]


__all__ = ["routes", "NAME"]
