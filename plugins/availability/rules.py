"""Pure decisions of the availability plugin (AVL-1 to AVL-5): they take the
seller's document and the clock's `now`, and never do I/O.

The seller's document (`availability_sellers`, one per seller, `_id` = seller id):

    away:               the away period (AVL-1, AVL-3), or None
        period_id, kind ("period" | "rest_of_day"), starts_at, until, note,
        time_zone (rest of the day only), started (its start was published)
    max_active_orders:  the cap of AVL-4, or None
    paused_gigs:        [{gig_id, paused_at, paused_by}] (AVL-5)
    reservations:       {order_id: {at}}: placements that passed the cap check
                        and are not (yet) orders (AVL-4)
"""

from __future__ import annotations

import functools
import importlib.resources
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from core.errors import InvalidInput
from core.vetoes import Veto

#: "a short note" (AVL-1): what fits on a gig page next to the return date
NOTE_MAX_LENGTH = 300

PERIOD = "period"
REST_OF_DAY = "rest_of_day"


# ---------------------------------------------------------------- the away period (AVL-1 to AVL-3)


def away_rule(away: dict[str, Any]) -> str:
    """The rule a period applies: AVL-3 for the rest of the day, AVL-1 otherwise."""
    return "AVL-3" if away["kind"] == REST_OF_DAY else "AVL-1"


def is_away(away: dict[str, Any] | None, now: datetime) -> bool:
    """AVL-1/AVL-2: on from `starts_at` (included) until `until` (excluded).

    Decided from the times, not from whether the end deadline has fired: a
    deadline may fire late (scheduler busy, plugin switched off), a refusal
    must not."""
    return away is not None and away["starts_at"] <= now < away["until"]


def current_or_upcoming(away: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
    """The period a buyer may be told about: on now, or set for later; None once over."""
    if away is None or away["until"] <= now:
        return None
    return away


def period_bounds(starts_at: datetime | None, until: datetime, now: datetime) -> tuple[datetime, datetime]:
    """AVL-1: an away period runs from `starts_at` (now when absent or past) to `until`."""
    start = now if starts_at is None or starts_at < now else starts_at
    start, until = _to_millisecond(start), _to_millisecond(until)
    if until <= start:
        raise InvalidInput(
            "an away period must end after it starts"
            + (" (and after now)" if start == now else ""),
            rule="AVL-1", starts_at=start, until=until,
        )
    return start, until


def _to_millisecond(moment: datetime) -> datetime:
    """In UTC, to the millisecond: what BSON keeps, so what we answer is what we stored."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@functools.cache
def _known_zones() -> frozenset[str]:
    # The IANA list that the tzdata package (a dependency) ships. zoneinfo.available_timezones()
    # also reports files of the system's zone directory such as `localtime`, which is not a zone.
    return frozenset(importlib.resources.files("tzdata").joinpath("zones").read_text().split())


def seller_zone(name: str) -> ZoneInfo:
    """AVL-3: an IANA zone name, such as Pacific/Kiritimati."""
    if name not in _known_zones():
        raise InvalidInput(
            f"unknown time zone {name!r}: give an IANA zone name such as 'Europe/Paris' or 'Pacific/Kiritimati'",
            rule="AVL-3", time_zone=name,
        )
    return ZoneInfo(name)


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    # fold=0: a wall time that a DST change skips maps to the instant of the change,
    # one it repeats maps to its first occurrence: the earliest instant the day reaches it.
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def rest_of_day_until(now: datetime, zone: ZoneInfo, until_local: time | None) -> datetime:
    """AVL-3: "away for the rest of the day" starts now and ends later the same
    day in the seller's zone: at `until_local` when given, else when the day
    ends (the next local midnight: 23, 24 or 25 hours after the last one)."""
    local_now = now.astimezone(zone)
    today = local_now.date()
    end_of_day = _local_instant(today + timedelta(days=1), time(0), zone)
    if until_local is None:
        return end_of_day
    until = _local_instant(today, until_local.replace(tzinfo=None), zone)
    if until <= now:
        raise InvalidInput(
            f"{until_local.isoformat('minutes')} has passed today in {zone.key} "
            f"(it is {local_now.strftime('%H:%M')} there): the rest of the day ends later the same day",
            rule="AVL-3", time_zone=zone.key, local_now=local_now.isoformat(),
        )
    return until


def same_period(away: dict[str, Any] | None, wanted: dict[str, Any], now: datetime) -> bool:
    """The period asked for is the one already set: a repeated request changes nothing.
    A start of "now" matches a period that has already started."""
    if away is None or away["until"] <= now:
        return False
    keys = ("kind", "until", "note", "time_zone")
    if any(away.get(k) != wanted.get(k) for k in keys):
        return False
    return away["starts_at"] == wanted["starts_at"] or (away["starts_at"] <= now and wanted["starts_at"] <= now)


# ---------------------------------------------------------------- refusals a buyer reads (ORD-5)


def _when(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment.strftime('%B %Y')}, {moment.strftime('%H:%M')} UTC"


def away_refusal(away: dict[str, Any]) -> Veto:
    """AVL-1, AVL-3: refused with the note and the return date."""
    return Veto(
        reason=(f"The seller is away until {_when(away['until'])} and takes no new orders before then. "
                f"Their note: {away['note']}"),
        rule=away_rule(away),
        details={"away_until": away["until"].astimezone(UTC).isoformat(), "note": away["note"]},
    )


def paused_gig_refusal(gig_id: str) -> Veto:
    """AVL-5."""
    return Veto(reason="The seller has paused this gig: it takes no orders for now.", rule="AVL-5",
                details={"gig_id": gig_id})


def full_queue_refusal() -> Veto:
    """AVL-4. The cap itself is the seller's business: the buyer is told the queue
    is full, not how long it is."""
    return Veto(reason="The seller has as many orders as they can take right now; please try again later.",
                rule="AVL-4")


def refusal_before_cap(doc: dict[str, Any], gig_id: str, now: datetime) -> Veto | None:
    """What refuses an order whatever the seller's queue: away (AVL-1, AVL-3), paused gig (AVL-5)."""
    if is_away(doc.get("away"), now):
        return away_refusal(doc["away"])
    if any(p["gig_id"] == gig_id for p in doc.get("paused_gigs", [])):
        return paused_gig_refusal(gig_id)
    return None
