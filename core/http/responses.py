"""What the core's routes answer: one pydantic model per resource, reused by every
route that returns it, and the problem details every error is.

The OpenAPI document takes its response schemas from these models (serialisation
mode: times are RFC 3339 strings, amounts decimal strings), so what an integrator
reads there is what the routes send; the test harness validates every response
the suite receives against the served document. Each model forbids fields it
does not declare, so a field added to a handler's answer without its model fails
the suite instead of going out undocumented.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

OrderState = Literal["awaiting_requirements", "in_progress", "delivered", "in_revision", "completed", "cancelled"]
ActorRole = Literal["buyer", "seller", "support", "admin", "service", "system"]


class View(BaseModel):
    """Base of response models: every field the answer may carry is declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ActorView(View):
    id: str
    role: ActorRole


class Amount(View):
    """Money as the API shows it: an exact decimal string with two places, and its currency."""

    amount: str = Field(pattern=r"^\d+\.\d{2}$", examples=["120.00"])
    currency: str = Field(pattern=r"^[A-Z]{3}$", examples=["EUR"])


# ---------------------------------------------------------------- orders


class Delivery(View):
    number: int = Field(ge=1)
    at: datetime
    message: str
    attachments: list[str]


class Order(View):
    """An order (ORD-1 to ORD-7). Fields appear as the order reaches the state that sets
    them: `started_at` and `due_at` with the requirements (ORD-2), `delivered_at` and
    `auto_complete_at` with a delivery (ORD-4), `cancelled_at`, `cancel_cause` and
    `cancelled_from` with a cancellation (ORD-1, ORD-7, DSP-4, DSP-6)."""

    id: str
    version: int = Field(description="Grows by one with every change of the order.")
    buyer_id: str
    seller_id: str
    gig_id: str
    state: OrderState
    price: Amount = Field(description="The current price: the placed one plus any extra agreed on (DSP-8).")
    original_price: Amount | None = Field(
        default=None, description="The placed price, once an extra changed `price` (DSP-2 caps refunds on it).")
    delivery_days: int
    extra_revisions: int | None = Field(default=None, description="Extra revisions agreed on (DSP-8).")
    placed_at: datetime
    placement_id: str = Field(description=(
        "What the placement is deduplicated on: the bus command's message id; over HTTP with an "
        "`Idempotency-Key`, `http:` and a digest of the caller, the key, the route and the body (so two "
        "callers' equal keys never meet; it is not the key itself); else the order's id."))
    late: bool = Field(description="Not delivered by `due_at` (ORD-2); stays true once set.")
    late_at: datetime | None = None
    requirements: str | None = None
    started_at: datetime | None = Field(default=None, description="When the requirements came: the clock starts (ORD-2).")
    due_at: datetime | None = Field(default=None, description="`started_at` + `delivery_days`, moved by extensions (DSP-7).")
    delivery_count: int
    refused_delivery_count: int | None = Field(default=None, description="Empty deliveries refused (ORD-3).")
    deliveries: dict[str, Delivery] | None = Field(
        default=None, description="Every delivery, keyed by its position from \"0\" (the first) up.")
    delivered_at: datetime | None = None
    auto_complete_at: datetime | None = Field(
        default=None, description="When silence completes the delivered order (ORD-4); null in revision.")
    auto_complete_deadline: str | None = Field(default=None, description="The id of that deadline.")
    revision_count: int
    revision_reason: str | None = None
    completed_at: datetime | None = None
    completion_cause: Literal["accepted", "auto_completed"] | None = None
    cancelled_at: datetime | None = None
    cancel_cause: Literal["support", "chargeback", "mutual_agreement"] | None = None
    cancelled_from: OrderState | None = Field(default=None, description="The state the order was cancelled in.")
    cancel_requested_by: Literal["buyer", "seller", "support", "payments"] | None = Field(
        default=None, description="Who asked: the party whose request was accepted (DSP-4, DSP-6), support, "
                                  "or payments (ORD-7). MET-2 reads it with `cancelled_from`.")


class OrderList(View):
    """One page of the caller's orders, newest first; `next_cursor` leads to the next one."""

    orders: list[Order] = Field(description="Newest first (by `placed_at`, then `id`), at most `limit`; "
                                            "without the timeline (`GET /orders/{order_id}/timeline`).")
    next_cursor: str | None = Field(description="Pass it as `cursor` for the next page; null: this page is the "
                                                "last.")


class TimelineEntry(View):
    seq: int = Field(ge=0)
    type: str = Field(description="The event published for this change (see docs/asyncapi.json).")
    event_id: str = Field(description="The CloudEvents id of that event.")
    at: datetime
    actor: ActorView
    rule: str | None = Field(description="The rule that fired, e.g. ORD-2.")
    details: dict[str, Any] = Field(description="The event's own fields (its `data` without the order's ids, "
                                                "actor and rule).")


class Timeline(View):
    order_id: str
    state: OrderState
    entries: list[TimelineEntry] = Field(description="Every change of the order, in order (ORD-6).")


class OrderDeadline(View):
    id: str
    owner: str = Field(description="`core` or the plugin that scheduled it.")
    kind: str
    due_at: datetime
    state: Literal["pending", "claimed", "done", "failed", "cancelled"]
    fired_at: datetime | None
    attempts: int


class OrderDeadlines(View):
    order_id: str
    deadlines: list[OrderDeadline]


# ---------------------------------------------------------------- admin and system


class PluginState(View):
    name: str
    loaded: bool
    enabled: bool
    builtin: bool | None = Field(default=None, description="Shipped with the service (absent when it failed).")
    error: str | None = Field(default=None, description="Why it failed to load.")


class PluginList(View):
    plugins: list[PluginState]


class ClockState(View):
    mode: Literal["system", "test"]
    now: datetime


class FiredDeadline(View):
    id: str
    kind: str
    owner: str
    due_at: datetime


class ClockAdvanced(View):
    mode: Literal["test"]
    now: datetime
    fired: list[FiredDeadline] = Field(description="The deadlines that fell due on the way, in the order they fired.")


class Health(View):
    status: Literal["ok"]
    instance: str


class ReadyChecks(View):
    bus: bool
    store: bool


class Ready(View):
    status: Literal["ready"]
    checks: ReadyChecks


class OpenAPIDocument(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document: this one."""


class AsyncAPIDocument(RootModel[dict[str, Any]]):
    """An AsyncAPI 3.0 document: every message type on the bus, the queues and their dead letters."""


# ---------------------------------------------------------------- problems


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the field in the body (`body` for the body as a whole).")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details. Besides the standard members, `rule` names the business
    rule that refused, when one did, and other members carry the facts of the refusal
    (`errors` for invalid input, `plugin` and `plugin_rule` for a plugin's veto, the
    ids involved, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem; `about:blank` for plain HTTP errors.")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = Field(default=None, description="The request path.")
    rule: str | None = Field(default=None, description="The business rule that refused, e.g. ORD-3 (RULES.md).")
    errors: list[FieldError] | None = Field(default=None, description="Invalid input: each field and what is wrong.")
    plugin: str | None = Field(default=None, description="The plugin that refused an order (ORD-5).")
    plugin_rule: str | None = Field(default=None, description="That plugin's rule.")


__all__ = [
    "Amount", "AsyncAPIDocument", "ClockAdvanced", "ClockState", "Health", "OpenAPIDocument", "Order",
    "OrderDeadlines", "OrderList", "PluginList", "PluginState", "Problem", "Ready", "Timeline", "View",
]
