"""The core's routes: orders (ORD-*), admin (plugins, test clock), system."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BeforeValidator, Field, TypeAdapter, ValidationError, model_validator

from core.errors import InvalidInput, RuleViolation, Unavailable
from core.http.dead_letter_routes import dead_letter_routes
from core.http.openapi import openapi_document
from core.http.responses import (
    AsyncAPIDocument,
    ClockAdvanced,
    ClockState,
    Health,
    OpenAPIDocument,
    Order,
    OrderDeadlines,
    OrderList,
    PluginList,
    PluginState,
    Ready,
    Timeline,
)
from core.http.routes import Body, Call, QueryParam, Route, page_limit
from core.messages import Money, PlaceOrder, asyncapi_document, new_id
from core.order_pages import DEFAULT_LIMIT, MAX_LIMIT, Position, order_page
from core.orders import COLLECTION as ORDERS
from core.orders import public_view
from core.settings import Duration

log = structlog.get_logger("rescenter.http")

ADMIN = frozenset({"admin"})
#: The test clock goes no further: every instant the service computes from "now" (a due date,
#: an answer window, a metrics window) must still be a date, and Python's end at the year 9999.
LATEST_TEST_TIME = datetime(9000, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- bodies


class PlaceOrderBody(Body):
    seller_id: str = Field(min_length=1, max_length=200)
    gig_id: str = Field(min_length=1, max_length=200)
    price: Money
    delivery_days: int = Field(ge=1, le=365)
    buyer_id: str | None = Field(default=None, min_length=1, max_length=200,
                                 description="Only services and support set it; a buyer orders for themselves.")


class RequirementsBody(Body):
    requirements: str = Field(min_length=1, max_length=20_000)


class DeliveryBody(Body):
    message: str = Field(default="", max_length=20_000)
    attachments: list[str] = Field(default_factory=list, max_length=50)


class RevisionBody(Body):
    reason: str = Field(min_length=1, max_length=5_000)


class CancelBody(Body):
    reason: str = Field(min_length=1, max_length=5_000)


class PluginSwitchBody(Body):
    enabled: bool


_ISO_DURATION: TypeAdapter[timedelta] = TypeAdapter(Duration)


def _iso_duration(value: object) -> timedelta:
    """ISO 8601 only, as in the configuration ("1 day" and bare seconds are refused); read
    here because a body's strict mode takes no string for a timedelta after a validator."""
    try:
        return _ISO_DURATION.validate_python(value)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


IsoDuration = Annotated[timedelta, BeforeValidator(_iso_duration)]


class AdvanceClockBody(Body):
    to: AwareDatetime | None = None
    by: IsoDuration | None = Field(default=None, description="ISO 8601 duration, e.g. PT48H")

    @model_validator(mode="after")
    def _one_of(self) -> AdvanceClockBody:
        if (self.to is None) == (self.by is None):
            raise ValueError("give exactly one of 'to' and 'by'")
        if self.by is not None and self.by <= timedelta(0):
            raise ValueError("'by' must be a positive duration")
        return self


# ---------------------------------------------------------------- orders


async def place_order(call: Call) -> dict[str, Any]:
    body: PlaceOrderBody = call.body
    principal = call.principal
    assert principal is not None
    if principal.is_staff:
        if body.buyer_id is None:
            raise InvalidInput("buyer_id is required when staff or a service places an order")
        buyer_id = body.buyer_id
    else:
        if "buyer" not in principal.roles:
            raise RuleViolation("only buyers place orders", rule="ORD-5")
        if body.buyer_id not in (None, principal.id):
            raise InvalidInput("a buyer places orders for themselves: leave buyer_id out")
        buyer_id = principal.id
    key = call.idempotency_key
    order_id = new_id() if key is None else _stable_id(key)
    command = PlaceOrder(order_id=order_id, buyer_id=buyer_id, seller_id=body.seller_id,
                         gig_id=body.gig_id, price=body.price, delivery_days=body.delivery_days)
    order = await call.services.orders.place(command, call.actor("buyer"), message_id=key)
    return public_view(order)


def _stable_id(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:32]


async def get_order(call: Call) -> dict[str, Any]:
    order = await call.services.orders.get(call.match["order_id"], call.actor())
    return public_view(order)


async def get_timeline(call: Call) -> dict[str, Any]:
    order = await call.services.orders.get(call.match["order_id"], call.actor())
    return {"order_id": order["_id"], "state": order["state"], "entries": order.get("timeline", [])}


async def list_orders(call: Call) -> dict[str, Any]:
    query = call.request.query
    role = query.get("as", "buyer")
    if role not in ("buyer", "seller"):
        raise InvalidInput("'as' must be buyer or seller", field="as")
    limit = page_limit(query.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    after = Position.of_cursor(query["cursor"], role) if "cursor" in query else None
    page = await order_page(call.services.store.collection(ORDERS), role, call.actor(role).id, limit=limit,
                            after=after)
    return {"orders": [public_view(o) for o in page.orders],
            "next_cursor": page.next.cursor() if page.next is not None else None}


async def submit_requirements(call: Call) -> dict[str, Any]:
    order = await call.services.orders.submit_requirements(
        call.match["order_id"], call.actor("buyer"), call.body.requirements, message_id=call.idempotency_key)
    return public_view(order)


async def deliver(call: Call) -> dict[str, Any]:
    order = await call.services.orders.deliver(
        call.match["order_id"], call.actor("seller"), call.body.message, call.body.attachments,
        message_id=call.idempotency_key)
    return public_view(order)


async def accept(call: Call) -> dict[str, Any]:
    order = await call.services.orders.accept(call.match["order_id"], call.actor("buyer"),
                                              message_id=call.idempotency_key)
    return public_view(order)


async def request_revision(call: Call) -> dict[str, Any]:
    order = await call.services.orders.request_revision(
        call.match["order_id"], call.actor("buyer"), call.body.reason, message_id=call.idempotency_key)
    return public_view(order)


async def cancel(call: Call) -> dict[str, Any]:
    order = await call.services.orders.cancel(
        call.match["order_id"], call.actor(), cause="support", reason=call.body.reason,
        message_id=call.idempotency_key)
    return public_view(order)


# ---------------------------------------------------------------- admin


async def list_plugins(call: Call) -> dict[str, Any]:
    return {"plugins": call.services.plugins.describe()}


async def switch_plugin(call: Call) -> dict[str, Any]:
    services = call.services
    name = call.match["name"]
    await services.plugins.switch(name, call.body.enabled, call.actor(), services.outbox, services.clock)
    return next(p for p in services.plugins.describe() if p["name"] == name)


async def get_clock(call: Call) -> dict[str, Any]:
    clock = call.services.clock
    return {"mode": clock.mode, "now": clock.now()}


async def advance_clock(call: Call) -> dict[str, Any]:
    services = call.services
    if services.clock.mode != "test":
        raise RuleViolation("the clock can only be moved when clock.mode is 'test'", mode=services.clock.mode)
    body: AdvanceClockBody = call.body
    now = services.clock.now()
    try:
        target = body.to if body.to is not None else now + body.by
        too_late = target > LATEST_TEST_TIME
    except OverflowError:  # beyond the year 9999
        too_late = True
    if too_late:
        raise InvalidInput(f"the test clock goes no further than {LATEST_TEST_TIME.isoformat()}",
                           latest=LATEST_TEST_TIME, now=now)
    if target < now:
        raise InvalidInput("the test clock only moves forward", now=now)
    fired = await services.scheduler.advance(target.astimezone(UTC))
    return {"mode": "test", "now": services.clock.now(), "fired": fired}


async def order_deadlines(call: Call) -> dict[str, Any]:
    order_id = call.match["order_id"]
    docs = await call.services.scheduler.for_subject(order_id)
    if not docs:
        await call.services.orders.get(order_id)  # an unknown order is a 404, not an empty list
    keep = ("owner", "kind", "due_at", "state", "fired_at", "attempts")
    return {"order_id": order_id, "deadlines": [{"id": d["_id"], **{k: d.get(k) for k in keep}} for d in docs]}


# ---------------------------------------------------------------- system


async def healthz(call: Call) -> dict[str, Any]:
    return {"status": "ok", "instance": call.services.instance}


async def readyz(call: Call) -> dict[str, Any]:
    services = call.services
    checks = {"bus": services.bus.connected, "store": True}
    try:
        await services.store.ping()
    except Exception:
        checks["store"] = False
    if not all(checks.values()):
        down = ", ".join(k for k, ok in checks.items() if not ok)
        raise Unavailable(f"not ready: {down} unreachable", checks=checks)
    return {"status": "ready", "checks": checks}


async def metrics(call: Call) -> web.Response:
    services = call.services
    if services.dead_letters is not None:
        try:  # read at each scrape; a broker or store that does not answer leaves the last values
            async with asyncio.timeout(5):
                await services.dead_letters.refresh_gauges()
        except Exception as exc:
            log.warning("queue gauges not refreshed", error=repr(exc))
    body = generate_latest(services.metrics.registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def openapi(call: Call) -> dict[str, Any]:
    from core.http.app import ROUTES

    return openapi_document(call.request.app[ROUTES])


async def asyncapi(call: Call) -> dict[str, Any]:
    from core.bus import topology

    services = call.services
    bindings = {name: group.bindings for name, group in services.bus.groups.items()}
    return asyncapi_document(services.catalogue, topology(services.settings.bus, bindings))


LIST_QUERY = (
    QueryParam("as", {"type": "string", "enum": ["buyer", "seller"], "default": "buyer"},
               "Whose orders: those the caller placed (buyer) or sells (seller)."),
    QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
               f"Orders per page, 1 to {MAX_LIMIT}."),
    QueryParam("cursor", {"type": "string"},
               "Where the page starts: the `next_cursor` of the previous page, as it came (opaque). Absent: "
               "the newest orders. Orders placed while a client pages neither shift the next pages nor make "
               "an order appear twice."),
)


def core_routes() -> list[Route]:
    order = ("orders",)
    return [
        Route("POST", "/orders", place_order,
              "Place an order; every enabled plugin is asked first (ORD-5: one refusal refuses, 409 with "
              "`plugin` and `plugin_rule`). An order from oneself (`buyer_id` = `seller_id`) is refused "
              "before any plugin is asked (409 `ORD-5`, without `plugin`).",
              roles=frozenset({"buyer", "support", "admin", "service"}), body=PlaceOrderBody, response=Order, status=201,
              rules=("ORD-1", "ORD-5"), tags=order),
        Route("GET", "/orders", list_orders,
              "The caller's orders as buyer or seller, newest first, a page at a time: pass the answer's "
              "`next_cursor` as `cursor` for the next page (null: no more).",
              response=OrderList, tags=order, query=LIST_QUERY),
        Route("GET", "/orders/{order_id}", get_order, "One order; only its parties and staff see it.",
              response=Order, tags=order, rules=("ORD-1",)),
        Route("GET", "/orders/{order_id}/timeline", get_timeline,
              "Every change of the order, in order: actor, time, the rule that fired.", response=Timeline,
              tags=order, rules=("ORD-6",)),
        Route("POST", "/orders/{order_id}/requirements", submit_requirements,
              "The buyer submits the requirements; the delivery clock starts.",
              roles=frozenset({"buyer", "service"}), body=RequirementsBody, response=Order, rules=("ORD-2",),
              tags=order),
        Route("POST", "/orders/{order_id}/deliveries", deliver,
              "The seller delivers; an empty delivery is refused and recorded.",
              roles=frozenset({"seller", "service"}), body=DeliveryBody, response=Order,
              rules=("ORD-3", "ORD-4"), tags=order),
        Route("POST", "/orders/{order_id}/acceptance", accept, "The buyer accepts the delivery.",
              roles=frozenset({"buyer", "service"}), response=Order, rules=("ORD-4",), tags=order),
        Route("POST", "/orders/{order_id}/revisions", request_revision, "The buyer asks for a revision.",
              roles=frozenset({"buyer", "service"}), body=RevisionBody, response=Order, rules=("ORD-4",),
              tags=order),
        Route("POST", "/orders/{order_id}/cancellation", cancel, "Support cancels an order.",
              roles=frozenset({"support", "admin", "service"}), body=CancelBody, response=Order,
              rules=("ORD-1",), tags=order),
        Route("GET", "/orders/{order_id}/deadlines", order_deadlines,
              "The order's deadlines (staff). The same for a seller's: `seller:<seller_id>` in place of the "
              "order id (availability's away periods). 404: no such order and no deadline with that subject.",
              roles=frozenset({"support", "admin", "service"}), response=OrderDeadlines, tags=order),
        Route("GET", "/admin/plugins", list_plugins, "Plugins: loaded, failed, on or off.",
              roles=frozenset({"admin", "support"}), response=PluginList, tags=("admin",)),
        Route("PUT", "/admin/plugins/{name}", switch_plugin,
              "Switch a plugin on or off for every instance (they follow within seconds); announced "
              "with plugin.switched, unless the plugin already was in that state.",
              roles=ADMIN, body=PluginSwitchBody, response=PluginState, tags=("admin",)),
        Route("GET", "/admin/clock", get_clock, "The service clock: mode and now.",
              roles=frozenset({"admin", "support", "service"}), response=ClockState, tags=("admin",)),
        Route("POST", "/admin/clock/advance", advance_clock,
              "Test clock only: move the clock forward; deadlines due on the way fire, in order.",
              roles=ADMIN, body=AdvanceClockBody, response=ClockAdvanced, tags=("admin",),
              responses={"409": {"description": "The clock is not in test mode (`clock.mode`)."}}),
        Route("GET", "/healthz", healthz, "The process is alive.", roles=None, response=Health, tags=("system",)),
        Route("GET", "/readyz", readyz, "The broker and the database answer.", roles=None, response=Ready,
              tags=("system",), responses={"503": {"description": "Not ready: `checks` says which is unreachable."}}),
        Route("GET", "/metrics", metrics, "Prometheus metrics.", roles=None, tags=("system",), raw=True,
              responses={"200": {"description": "Prometheus text exposition format.",
                                 "content": {"text/plain": {"schema": {"type": "string"}}}}}),
        Route("GET", "/openapi.json", openapi, "This document.", roles=None, response=OpenAPIDocument,
              tags=("system",)),
        Route("GET", "/asyncapi.json", asyncapi,
              "The bus as AsyncAPI 3.0: every message type, what each command answers, every queue with its "
              "bindings and dead-letter queue.", roles=None, response=AsyncAPIDocument, tags=("system",)),
        *dead_letter_routes(),
    ]


__all__ = ["core_routes"]
