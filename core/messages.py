"""Messages: one CloudEvents 1.0 envelope, a pydantic model per type, a catalogue.

The routing key of every message is its `type`, on one durable topic exchange.
`subject` is the order id. The catalogue lists every type the service publishes
or consumes; `asyncapi_document()` turns it into the AsyncAPI 3.0 document kept
in `docs/asyncapi.json` and served at `/asyncapi.json`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from core.errors import InvalidInput

SOURCE = "rescenter"


class Envelope(BaseModel):
    """CloudEvents 1.0, structured JSON mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=200, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
    time: AwareDatetime
    subject: str | None = Field(default=None, max_length=200)
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)

    def body(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class MessageData(BaseModel):
    """Base of every `data` model: strict about unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Direction = Literal["publish", "consume"]


@dataclass(frozen=True)
class MessageType:
    type: str
    model: type[MessageData]
    summary: str
    direction: Direction  # "publish": rescenter sends it; "consume": other services send it
    owner: str = "core"  # the core or a plugin name
    rules: tuple[str, ...] = ()


@dataclass
class Catalogue:
    types: dict[str, MessageType] = field(default_factory=dict)

    def add(self, message_type: MessageType) -> None:
        known = self.types.get(message_type.type)
        if known and known != message_type:
            raise ValueError(f"message type {message_type.type!r} is defined twice")
        self.types[message_type.type] = message_type

    def model(self, type_: str) -> type[MessageData]:
        try:
            return self.types[type_].model
        except KeyError:
            raise InvalidInput(f"unknown message type {type_!r}") from None

    def parse(self, body: bytes) -> tuple[Envelope, MessageData]:
        """Validate an incoming body: envelope, then its data against the type's model."""
        try:
            envelope = Envelope.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidInput(f"invalid envelope: {_errors(exc)}") from None
        model = self.model(envelope.type)
        try:
            data = model.model_validate(envelope.data)
        except ValidationError as exc:
            raise InvalidInput(f"invalid data for {envelope.type}: {_errors(exc)}") from None
        return envelope, data


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


def new_id() -> str:
    return str(uuid.uuid4())


def make_envelope(
    type_: str,
    data: MessageData,
    *,
    subject: str | None,
    time: datetime,
    id: str | None = None,
    source: str = SOURCE,
) -> Envelope:
    return Envelope(
        id=id or new_id(),
        source=source,
        type=type_,
        time=time,
        subject=subject,
        data=data.model_dump(mode="json", exclude_none=True),
    )


# ---------------------------------------------------------------- core types


class Actor(MessageData):
    id: str = Field(min_length=1, max_length=200)
    role: Literal["buyer", "seller", "support", "admin", "service", "system"]


class Money(MessageData):
    amount: Decimal = Field(gt=0, max_digits=14, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class OrderEvent(MessageData):
    order_id: str
    buyer_id: str
    seller_id: str
    gig_id: str
    state: str
    previous_state: str | None = None
    actor: Actor
    rule: str | None = None


class OrderPlaced(OrderEvent):
    price: Money
    delivery_days: int


class RequirementsSubmitted(OrderEvent):
    started_at: datetime
    due_at: datetime


class OrderDelivered(OrderEvent):
    delivery_number: int
    auto_complete_at: datetime
    late: bool


class DeliveryRefused(OrderEvent):
    reason: str


class RevisionRequested(OrderEvent):
    revision_number: int


class OrderCompleted(OrderEvent):
    cause: Literal["accepted", "auto_completed"]


class OrderCancelled(OrderEvent):
    cause: Literal["support", "chargeback", "mutual_agreement"]
    reason: str | None = None
    #: who asked for it: the party whose request was accepted (mutual agreement),
    #: support, or payments (chargeback); MET-2 counts a cancellation by it
    requested_by: Literal["buyer", "seller", "support", "payments"] | None = None
    #: the resolution-center request whose acceptance cancelled it (DSP-4, DSP-6)
    request_id: str | None = None


class OrderLate(OrderEvent):
    due_at: datetime


class OrderDeliveryExtended(OrderEvent):
    """The due date moved after an agreement (DSP-7). An order already late stays late:
    `order.late` was published once (ORD-2) and is not taken back."""

    days: int
    previous_due_at: datetime | None = None  # None: the delivery clock had not started yet
    due_at: datetime | None = None
    delivery_days: int
    late: bool
    request_id: str | None = None


class OrderAmended(OrderEvent):
    """Extra revisions, days or price agreed on (DSP-8); `price` is the new total."""

    added_revisions: int
    added_days: int
    added_price: Money | None = None
    previous_price: Money
    price: Money
    extra_revisions: int  # every extra revision agreed on this order so far
    delivery_days: int
    previous_due_at: datetime | None = None
    due_at: datetime | None = None
    request_id: str | None = None


# Commands other marketplace services send over the bus (the HTTP API's twins).


class PlaceOrder(MessageData):
    order_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")
    buyer_id: str = Field(min_length=1, max_length=200)
    seller_id: str = Field(min_length=1, max_length=200)
    gig_id: str = Field(min_length=1, max_length=200)
    price: Money
    delivery_days: int = Field(ge=1, le=365)


class OrderCommand(MessageData):
    order_id: str = Field(min_length=1, max_length=100)
    actor: Actor


class SubmitRequirements(OrderCommand):
    requirements: str = Field(min_length=1, max_length=20_000)


class DeliverOrder(OrderCommand):
    message: str = Field(default="", max_length=20_000)
    attachments: list[str] = Field(default_factory=list, max_length=50)


class AcceptDelivery(OrderCommand):
    pass


class RequestRevision(OrderCommand):
    reason: str = Field(min_length=1, max_length=5_000)


class CancelOrder(OrderCommand):
    reason: str = Field(min_length=1, max_length=5_000)


class CancelByAgreement(OrderCommand):
    """The parties agreed to cancel (DSP-4, DSP-6): sent by the resolution center."""

    requested_by: Literal["buyer", "seller"]
    rule: Literal["DSP-4", "DSP-6"]
    request_id: str | None = Field(default=None, max_length=200)


class ExtendDelivery(OrderCommand):
    """Move the due date after an agreement (DSP-7): sent by the resolution center."""

    days: int = Field(ge=1, le=365)
    rule: str = Field(default="DSP-7", max_length=20)
    request_id: str | None = Field(default=None, max_length=200)


class AmendOrder(OrderCommand):
    """Add revisions, days or price after an agreement (DSP-8): sent by the resolution center."""

    added_revisions: int = Field(default=0, ge=0, le=100)
    added_days: int = Field(default=0, ge=0, le=365)
    added_price: Money | None = None
    rule: str = Field(default="DSP-8", max_length=20)
    request_id: str | None = Field(default=None, max_length=200)


class ChargebackReported(MessageData):
    """Payments reports a chargeback on an order (ORD-7)."""

    order_id: str = Field(min_length=1, max_length=100)
    payment_id: str | None = Field(default=None, max_length=200)


class PluginSwitched(MessageData):
    plugin: str
    enabled: bool
    actor: Actor


ORDER_EVENTS: tuple[MessageType, ...] = (
    MessageType("order.placed", OrderPlaced, "An order was placed after every enabled plugin agreed.", "publish", rules=("ORD-1", "ORD-5")),
    MessageType("order.requirements_submitted", RequirementsSubmitted, "The buyer submitted the requirements; the delivery clock started.", "publish", rules=("ORD-1", "ORD-2")),
    MessageType("order.delivered", OrderDelivered, "The seller delivered; it completes itself if the buyer stays silent.", "publish", rules=("ORD-1", "ORD-4")),
    MessageType("order.delivery_refused", DeliveryRefused, "An empty delivery was refused and recorded.", "publish", rules=("ORD-3",)),
    MessageType("order.revision_requested", RevisionRequested, "The buyer asked for a revision.", "publish", rules=("ORD-1", "ORD-4")),
    MessageType("order.completed", OrderCompleted, "The order completed: accepted, or silence after delivery.", "publish", rules=("ORD-1", "ORD-4")),
    MessageType("order.cancelled", OrderCancelled, "The order was cancelled.", "publish", rules=("ORD-1", "ORD-7")),
    MessageType("order.late", OrderLate, "The order was not delivered by its due date (published once).", "publish", rules=("ORD-2",)),
    MessageType("order.delivery_extended", OrderDeliveryExtended, "The due date moved by some days after the parties agreed.", "publish", rules=("ORD-2", "DSP-7")),
    MessageType("order.amended", OrderAmended, "Extra revisions, days or price were added after the parties agreed.", "publish", rules=("DSP-8",)),
    MessageType("plugin.switched", PluginSwitched, "An admin switched a plugin on or off.", "publish"),
)

ORDER_COMMANDS: tuple[MessageType, ...] = (
    MessageType("command.order.place", PlaceOrder, "Place an order (as POST /orders).", "consume", rules=("ORD-5",)),
    MessageType("command.order.submit_requirements", SubmitRequirements, "Submit an order's requirements.", "consume", rules=("ORD-2",)),
    MessageType("command.order.deliver", DeliverOrder, "Deliver an order.", "consume", rules=("ORD-3",)),
    MessageType("command.order.accept", AcceptDelivery, "Accept the delivery.", "consume", rules=("ORD-4",)),
    MessageType("command.order.request_revision", RequestRevision, "Ask for a revision.", "consume", rules=("ORD-4",)),
    MessageType("command.order.cancel", CancelOrder, "Cancel an order (support).", "consume", rules=("ORD-1",)),
    MessageType("command.order.cancel_by_agreement", CancelByAgreement, "Cancel an order by mutual agreement (the resolution center).", "consume", rules=("DSP-4", "DSP-6")),
    MessageType("command.order.extend_delivery", ExtendDelivery, "Move an order's due date (the resolution center).", "consume", rules=("DSP-7",)),
    MessageType("command.order.amend", AmendOrder, "Add revisions, days or price to an order (the resolution center).", "consume", rules=("DSP-8",)),
    MessageType("payment.chargeback_reported", ChargebackReported, "Payments reports a chargeback; the order is cancelled.", "consume", rules=("ORD-7",)),
)


def core_catalogue() -> Catalogue:
    catalogue = Catalogue()
    for message_type in (*ORDER_EVENTS, *ORDER_COMMANDS):
        catalogue.add(message_type)
    return catalogue


def asyncapi_document(catalogue: Catalogue, exchange: str) -> dict[str, Any]:
    """AsyncAPI 3.0: a channel per routing key on the topic exchange."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Envelope": _envelope_schema()}
    for type_, mt in sorted(catalogue.types.items()):
        key = type_.replace(".", "_")
        schema = mt.model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[mt.model.__name__] = schema
        description = mt.summary + (f" Rules: {', '.join(mt.rules)}." if mt.rules else "")
        messages[key] = {
            "name": type_,
            "title": type_,
            "summary": mt.summary,
            "description": description + f" Owner: {mt.owner}.",
            "contentType": "application/cloudevents+json",
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/Envelope"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": type_},
                            "data": {"$ref": f"#/components/schemas/{mt.model.__name__}"},
                        },
                    },
                ]
            },
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": "0.3.0"}},
        }
        channels[key] = {
            "address": type_,
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": exchange, "type": "topic", "durable": True, "autoDelete": False},
                    "bindingVersion": "0.3.0",
                }
            },
        }
        operation: dict[str, Any] = {
            "action": "send" if mt.direction == "publish" else "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": mt.summary,
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
        }
        if mt.direction == "consume":
            acts = " and to act for the role in `data.actor.role`" if "actor" in mt.model.model_fields else ""
            operation["description"] = (
                "Authorized: set the AMQP `user_id` property to the broker user you connect as; "
                f"`bus.authorization.users` must allow that user to send {type_}{acts}. Otherwise the "
                "message is dead-lettered with reason `unauthorized` and changes nothing."
            )
        operations[f"{'send' if mt.direction == 'publish' else 'receive'}_{key}"] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "rescenter bus",
            "version": "0.1.0",
            "description": (
                "Messages rescenter publishes (send) and consumes (receive) on one durable "
                f"topic exchange `{exchange}`. Every message is a CloudEvents 1.0 envelope in "
                "structured JSON; the routing key is its `type`; `subject` is the order id. "
                "Consumers must be idempotent on `id`: delivery is at least once.\n\n"
                "Authorization: a message another service sends to rescenter (the `receive` operations) "
                "is applied only when its AMQP `user_id` property names a broker user that "
                "`bus.authorization.users` allows to send that type and, when `data` carries an `actor`, to "
                "act for `actor.role`. RabbitMQ refuses a `user_id` that is not the publishing connection's "
                "user (the channel is closed with PRECONDITION_FAILED), so it cannot be forged; give each "
                "service a broker user of its own, without the `impersonator` tag. A message without "
                "`user_id` (when `bus.authorization.require_user_id` is true, as production requires) or "
                "from a user not allowed is dead-lettered with `x-rescenter-reason: unauthorized` and "
                "changes nothing. Everything rescenter sends carries its own broker user in `user_id`."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "local": {"host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0.9.1"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _envelope_schema() -> dict[str, Any]:
    schema = Envelope.model_json_schema()
    schema.pop("title", None)
    return schema
