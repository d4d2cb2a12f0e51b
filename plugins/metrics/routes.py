"""HTTP routes of the metrics plugin (MET-1 to MET-4).

A seller's figures are private (MET-1): the seller and support read them;
anyone else gets 404, as for an order they are not a party to, so nobody
learns whether a seller has figures at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from core.errors import InvalidInput, NotFound
from core.http.responses import View
from core.http.routes import ALL_ROLES, Body, Call, Route
from plugins.metrics.flags import CancellationFlags
from plugins.metrics.messages import Flag, to_millisecond
from plugins.metrics.repository import MetricsRepository
from plugins.metrics.rules import Changes, SellerFigures, changes, seller_figures

NAME = "metrics"
SUPPORT = frozenset({"support"})


class FlagBody(Body):
    flag: Flag = Field(description="fraud, or mistaken_order (an order placed by mistake)")
    note: str = Field(min_length=1, max_length=2000, description="Why, for the record; the seller sees it.")


class CancellationFlag(View):
    """Support's flag on a cancelled order (MET-2); `flag: null` when there is none (any more)."""

    order_id: str
    rule: Literal["MET-2"]
    flag: Flag | None
    note: str | None
    revision: int | None = Field(description="Grows with every change of the flag; null: never flagged.")
    seller_id: str | None
    buyer_id: str | None
    changed_at: datetime | None
    changed_by: str | None = Field(description="The support user who changed it last.")


def _require_reader(call: Call, seller_id: str) -> None:
    """MET-1: only the seller and support read a seller's figures."""
    principal = call.principal
    assert principal is not None
    if principal.id != seller_id and "support" not in principal.roles:
        raise NotFound(f"no figures for seller {seller_id!r}", seller_id=seller_id)


def _instant(call: Call, name: str, *, required: bool) -> datetime | None:
    raw = call.request.query.get(name)
    if raw is None:
        if required:
            raise InvalidInput(f"'{name}' is required: an ISO 8601 date and time with its offset", field=name)
        return None
    try:
        # A '+' of an offset left unencoded in a query string arrives as a space.
        moment = datetime.fromisoformat(raw.strip().replace(" ", "+"))
    except ValueError:
        raise InvalidInput(f"'{name}' must be an ISO 8601 date and time, e.g. 2025-03-01T12:00:00Z",
                           field=name) from None
    if moment.tzinfo is None:
        raise InvalidInput(f"'{name}' needs an offset (Z or +01:00): the instant must be unambiguous", field=name)
    moment = to_millisecond(moment)
    now = call.services.clock.now()
    if moment > now:
        raise InvalidInput(f"'{name}' is later than now ({now.isoformat()}): figures exist up to now only",
                           field=name, now=now)
    return moment


async def _figures(call: Call, seller_id: str, at: datetime | None) -> SellerFigures:
    services = call.services
    repository = MetricsRepository(services.store)
    policy = services.settings.policy.metrics
    if at is None:
        now = services.clock.now()
        orders = await repository.live_orders(seller_id, now, policy.completion_window)
        return seller_figures(seller_id, orders, now, policy, source="live")
    return seller_figures(seller_id, await repository.orders_as_of(seller_id, at), at, policy, source="event_log")


async def seller_metrics(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    _require_reader(call, seller_id)
    figures = await _figures(call, seller_id, _instant(call, "at", required=False))
    return figures.model_dump(mode="json")


async def seller_metrics_changes(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    _require_reader(call, seller_id)
    since, until = _instant(call, "since", required=True), _instant(call, "until", required=True)
    assert since is not None and until is not None
    if since >= until:
        raise InvalidInput("'since' must be earlier than 'until'", since=since, until=until)
    before = await _figures(call, seller_id, since)
    after = await _figures(call, seller_id, until)
    return changes(before, after).model_dump(mode="json")


async def get_flag(call: Call) -> dict[str, Any]:
    return await CancellationFlags(call.services).get(call.match["order_id"], call.actor())


async def set_flag(call: Call) -> dict[str, Any]:
    body: FlagBody = call.body
    return await CancellationFlags(call.services).set(call.match["order_id"], body.flag, body.note, call.actor())


async def clear_flag(call: Call) -> dict[str, Any]:
    return await CancellationFlags(call.services).clear(call.match["order_id"], call.actor())


def routes() -> list[Route]:
    tags = ("metrics",)
    return [
        Route("GET", "/sellers/{seller_id}/metrics", seller_metrics,
              "A seller's completion rate with every order behind it (counted or excluded, why, the rule, when it "
              "leaves the window) and success score with each factor's contribution; ?at= for the figures as of "
              "a past instant, folded from the events kept. Only the seller and support (others: 404).",
              roles=ALL_ROLES, response=SellerFigures, rules=("MET-1", "MET-2", "MET-3", "MET-4"), tags=tags,
              query=("at",)),
        Route("GET", "/sellers/{seller_id}/metrics/changes", seller_metrics_changes,
              "Why a seller's figures moved between two instants (?since=&until=): orders that entered or left "
              "the window or were excluded meanwhile, and each factor's move. Only the seller and support.",
              roles=ALL_ROLES, response=Changes, rules=("MET-1", "MET-2", "MET-4"), tags=tags,
              query=("since", "until")),
        Route("GET", "/orders/{order_id}/cancellation-flag", get_flag,
              "Support: the flag of a cancelled order (fraud, mistaken order), if any.",
              roles=SUPPORT, response=CancellationFlag, rules=("MET-2",), tags=tags),
        Route("PUT", "/orders/{order_id}/cancellation-flag", set_flag,
              "Support flags a cancelled order as fraud or placed by mistake: it stops counting in the seller's "
              "completion rate.", roles=SUPPORT, body=FlagBody, response=CancellationFlag, rules=("MET-2",),
              tags=tags),
        Route("DELETE", "/orders/{order_id}/cancellation-flag", clear_flag,
              "Support clears the flag: the cancellation counts again unless another exclusion applies.",
              roles=SUPPORT, response=CancellationFlag, rules=("MET-2",), tags=tags),
    ]
