"""Messages: one CloudEvents 1.0 envelope, a pydantic model per type, a catalogue.

The routing key of every message is its `type`, on one durable topic exchange.
`subject` says what it is about: the order id, `seller:<id>`, `plugin:<name>`. The catalogue lists every type the service publishes
or consumes; `asyncapi_document()` turns it into the AsyncAPI 3.0 document kept
in `docs/asyncapi.json` and served at `/asyncapi.json`.
"""

from __future__ import annotations

import json
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

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
    subject: str | None = Field(
        default=None, max_length=200,
        description="What the message is about: the order id; `seller:<id>` for a seller's settings "
                    "(availability, blocking); `plugin:<name>` for an admin's plugin switch. Every "
                    "message rescenter publishes has one.")
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)
    requestid: str | None = Field(
        default=None, max_length=128,
        description="CloudEvents extension: the `X-Request-Id` of the HTTP request that caused this message, "
                    "directly or through the messages it caused in turn; absent when none did.")

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
    #: a consumed command: the events that say it was applied (AsyncAPI `reply`)
    answers: tuple[str, ...] = ()
    #: a consumed command: what refuses it beyond an invalid message (its dead letter's `x-rescenter-error`)
    refused_when: str = ""


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
            # Strict JSON mode, as the HTTP bodies (core.http.routes.validate_body): an integer is
            # never "3", 3.0 or true, a boolean never "yes" or 1; date-times stay ISO 8601 strings.
            data = model.model_validate_json(json.dumps(envelope.data), strict=True)
        except ValidationError as exc:
            raise InvalidInput(f"invalid data for {envelope.type}: {_errors(exc)}") from None
        return envelope, data


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


def new_id() -> str:
    return str(uuid.uuid4())


#: the request id of the HTTP request (or of the message) being handled: every envelope made while
#: it is set carries it (core.http.app sets it per request, core.bus per message)
REQUEST_ID: ContextVar[str | None] = ContextVar("rescenter_request_id", default=None)


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
        requestid=REQUEST_ID.get(),
    )


# ---------------------------------------------------------------- core types


class Actor(MessageData):
    id: str = Field(min_length=1, max_length=200)
    role: Literal["buyer", "seller", "support", "admin", "service", "system"]


#: ASCII digits, at most twelve before the point and two after it, no leading zero.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"
_AMOUNT = re.compile(AMOUNT_PATTERN)


def _amount(value: object) -> object:
    """An amount arrives as a JSON string of ASCII digits with at most two decimals ("59.99",
    "10"). A JSON number is refused (a float is not exact), and so is anything Python's
    Decimal would read but a person might not mean: spaces, signs, exponents ("5.999e1"),
    a third decimal ("59.990"), other scripts' digits ("١٠"), underscores."""
    if isinstance(value, Decimal):
        return value  # made by the service itself; the field's bounds still apply
    if isinstance(value, str) and _AMOUNT.fullmatch(value):
        return Decimal(value)
    raise ValueError('an amount is a string of ASCII digits with at most two decimals, e.g. "59.99"')


Amount = Annotated[Decimal, BeforeValidator(_amount), WithJsonSchema({
    "type": "string", "pattern": AMOUNT_PATTERN, "examples": ["59.99"],
    "description": "ASCII digits with at most two decimals, as a string.",
})]


class Money(MessageData):
    """An amount above zero in a currency (ISO 4217 code)."""

    amount: Amount = Field(gt=0, max_digits=14, decimal_places=2)
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
    MessageType("plugin.switched", PluginSwitched, "An admin switched a plugin on or off (subject `plugin:<name>`); a switch to the state it was in announces nothing.", "publish"),
)

_UNKNOWN_OR_STATE = "an unknown order (`not found`), or an order whose state does not allow it (ORD-1)"
_PARTY = "an `actor` who is not the order's {party} (an actor of role `service` acts for any party)"

ORDER_COMMANDS: tuple[MessageType, ...] = (
    MessageType("command.order.place", PlaceOrder, "Place an order (as POST /orders).", "consume", rules=("ORD-5",),
                answers=("order.placed",),
                refused_when="a plugin's veto or a buyer ordering from themselves (ORD-5: the reason). An "
                             "`order_id` already taken by a different order is a conflict: retried, then "
                             "dead-lettered with reason `delivery_limit`. The same order again: nothing new."),
    MessageType("command.order.submit_requirements", SubmitRequirements, "Submit an order's requirements.", "consume",
                rules=("ORD-2",), answers=("order.requirements_submitted",),
                refused_when=f"{_UNKNOWN_OR_STATE}; {_PARTY.format(party='buyer')}"),
    MessageType("command.order.deliver", DeliverOrder, "Deliver an order.", "consume", rules=("ORD-3",),
                answers=("order.delivered",),
                refused_when="an empty delivery (ORD-3): `order.delivery_refused` is published and the command "
                             f"is dead-lettered; {_UNKNOWN_OR_STATE}; {_PARTY.format(party='seller')}"),
    MessageType("command.order.accept", AcceptDelivery, "Accept the delivery.", "consume", rules=("ORD-4",),
                answers=("order.completed",),
                refused_when=f"{_UNKNOWN_OR_STATE}; {_PARTY.format(party='buyer')}"),
    MessageType("command.order.request_revision", RequestRevision, "Ask for a revision.", "consume", rules=("ORD-4",),
                answers=("order.revision_requested",),
                refused_when=f"{_UNKNOWN_OR_STATE}; {_PARTY.format(party='buyer')}"),
    MessageType("command.order.cancel", CancelOrder, "Cancel an order (support).", "consume", rules=("ORD-1",),
                answers=("order.cancelled",),
                refused_when=f"{_UNKNOWN_OR_STATE}; an `actor` who is not staff"),
    MessageType("command.order.cancel_by_agreement", CancelByAgreement, "Cancel an order by mutual agreement (the resolution center).", "consume", rules=("DSP-4", "DSP-6"),
                answers=("order.cancelled",), refused_when=f"{_UNKNOWN_OR_STATE}; an `actor` who is not staff"),
    MessageType("command.order.extend_delivery", ExtendDelivery, "Move an order's due date (the resolution center).", "consume", rules=("DSP-7",),
                answers=("order.delivery_extended",), refused_when=f"{_UNKNOWN_OR_STATE}; an `actor` who is not staff"),
    MessageType("command.order.amend", AmendOrder, "Add revisions, days or price to an order (the resolution center).", "consume", rules=("DSP-8",),
                answers=("order.amended",),
                refused_when=f"{_UNKNOWN_OR_STATE}; an `actor` who is not staff; nothing added, or a price in "
                             "another currency (DSP-8)"),
    MessageType("payment.chargeback_reported", ChargebackReported, "Payments reports a chargeback; the order is cancelled.", "consume", rules=("ORD-7",),
                answers=("order.cancelled",), refused_when=_UNKNOWN_OR_STATE),
)

#: what the core's own queue (`<prefix>.core`) is bound to: every order command, and payments' facts
CORE_BINDINGS: tuple[str, ...] = ("command.order.#", "payment.chargeback_reported")


def core_catalogue() -> Catalogue:
    catalogue = Catalogue()
    for message_type in (*ORDER_EVENTS, *ORDER_COMMANDS):
        catalogue.add(message_type)
    return catalogue


@dataclass(frozen=True)
class Queue:
    """One consumer group's durable quorum queue, as `core.bus` declares it."""

    group: str  # `core` or a plugin name
    name: str
    bindings: tuple[str, ...]  # topic patterns on the exchange
    dead_letter_queue: str


@dataclass(frozen=True)
class Topology:
    """Every queue of the service and where its dead letters go (`core.bus.topology`)."""

    exchange: str
    unrouted: str
    dead_exchange: str
    delivery_limit: int
    queues: tuple[Queue, ...]


DEAD_LETTER_REASONS = {
    "invalid": "the body is not a CloudEvents envelope of a known `type`, or its `data` fails the type's model",
    "unhandled": "the routing key is not the envelope's `type`, or the queue has no handler for that `type`",
    "unauthorized": "its AMQP `user_id` is missing or names a broker user that `bus.authorization.users` does "
                    "not allow to send this type, or to act for the role in `data.actor.role`",
    "rejected": "refused for good: a business rule (`x-rescenter-error` starts with its id, e.g. `ORD-1: ...`), "
                "an unknown order, or an actor who may not do it",
    "delivery_limit": "failed every time it was delivered (an outage, a bug, a conflict that did not clear): "
                      "retried, then dead-lettered",
}

PUBLISHING = (
    "**Publishing to rescenter.** Publish on the exchange with routing key = the envelope's `type` and the "
    "CloudEvents envelope as the body (structured JSON), with publisher confirms and `mandatory`. Set these AMQP "
    "properties: `message_id` = the envelope's `id`, `content_type` = `application/cloudevents+json`, `type` = "
    "the envelope's `type`, `delivery_mode` = 2 (persistent), as rescenter does on what it publishes, and "
    "`user_id` = your broker user (see Authorization: the one property the service checks). Otherwise the "
    "service acts on the body: the envelope's `id` makes a command apply once (the same `id` again "
    "changes nothing and publishes nothing) and its `type` picks the model and the handler; it must equal "
    "the routing key, or the message is dead-lettered as `unhandled`. The `id` alone is the key, not "
    "`source` + `id`: two different commands with the same `id` about one order are one command, and the "
    "second changes nothing, so make ids globally unique (a UUID per message). `data` is strict JSON, as "
    "HTTP bodies are: an integer is never \"3\", 3.0 or true, a boolean never \"yes\" or 1 (dead-lettered "
    "as `invalid`). A message without "
    "the other properties is processed all the same; they serve the broker and tracing, and a dead letter "
    "copies `message_id`, `type` and `content_type`, so without them it is harder to trace back to its sender."
)

ANSWERS = (
    "**Answers.** A command that is applied is answered by the event its `reply` names, with `subject` = the "
    "order id (there is no reply queue: consume the event). A command that cannot be applied is dead-lettered "
    "in `<prefix>.core.dead` with its reason in the header `x-rescenter-reason` and the detail in "
    "`x-rescenter-error`: "
    + "; ".join(f"`{reason}`: {what}" for reason, what in DEAD_LETTER_REASONS.items())
    + ". Delivery is at least once both ways: consumers must be idempotent on `id`."
)


def asyncapi_document(catalogue: Catalogue, topology: Topology) -> dict[str, Any]:
    """AsyncAPI 3.0: a channel per routing key on the topic exchange, one per queue and
    one per dead-letter queue; a command's operation names its answer (`reply`)."""
    exchange = topology.exchange
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {"dead_letter": _dead_letter_message(topology)}
    schemas: dict[str, Any] = {"Envelope": _envelope_schema()}
    for type_, mt in sorted(catalogue.types.items()):
        key = _key(type_)
        schema = mt.model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[mt.model.__name__] = schema
        description = mt.summary + (f" Rules: {', '.join(mt.rules)}." if mt.rules else "")
        description += f" Owner: {mt.owner}."
        if mt.direction == "consume":
            queues = [q.name for q in topology.queues if any(topic_match(p, type_) for p in q.bindings)]
            description += f" Consumed from: {', '.join(f'`{q}`' for q in queues) or 'no queue'}."
        if mt.answers:
            description += (f" Answer: {', '.join(f'`{a}`' for a in mt.answers)}. Dead-lettered (`rejected`) "
                            f"when refused: {mt.refused_when}.")
        messages[key] = {
            "name": type_,
            "title": type_,
            "summary": mt.summary,
            "description": description,
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
            "bindings": {"amqp": {"deliveryMode": 2, "messageType": type_, "bindingVersion": "0.3.0"}},
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
        action = "send" if mt.direction == "publish" else "receive"
        operation: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": mt.summary,
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
        }
        descriptions = []
        if mt.answers:
            answer = _key(mt.answers[0])
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{answer}"},
                "messages": [{"$ref": f"#/channels/{_key(a)}/messages/{_key(a)}"} for a in mt.answers],
            }
            descriptions.append(f"Answered by {', '.join(f'`{a}`' for a in mt.answers)}; refused "
                                f"(dead letter, reason `rejected`) when: {mt.refused_when}.")
        if mt.direction == "consume":
            acts = " and to act for the role in `data.actor.role`" if "actor" in mt.model.model_fields else ""
            descriptions.append(
                "Authorized: set the AMQP `user_id` property to the broker user you connect as; "
                f"`bus.authorization.users` must allow that user to send {type_}{acts}. Otherwise the "
                "message is dead-lettered with reason `unauthorized` and changes nothing."
            )
        if descriptions:
            operation["description"] = " ".join(descriptions)
        operations[f"{action}_{key}"] = operation
    for queue in topology.queues:
        channels.update(_queue_channels(queue, catalogue, topology))
    channels[_key(topology.unrouted)] = {
        "address": topology.unrouted,
        "title": "Events no queue is bound to",
        "description": f"The alternate exchange of `{exchange}` (fanout) and its queue of the same name: an "
                       "event that no queue is bound to is kept here (oldest dropped beyond "
                       "`bus.unrouted_max_length`) rather than lost.",
        "bindings": {"amqp": {"is": "queue", "queue": {"name": topology.unrouted, "durable": True,
                                                        "exclusive": False, "autoDelete": False},
                              "bindingVersion": "0.3.0"}},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "rescenter bus",
            "version": "0.1.0",
            "description": "\n\n".join([
                "Messages rescenter publishes (send) and consumes (receive) on one durable "
                f"topic exchange `{exchange}`. Every message is a CloudEvents 1.0 envelope in "
                "structured JSON; the routing key is its `type`; `subject` says what it is about: "
                "the order id, `seller:<id>` for a seller's settings, `plugin:<name>` for a plugin "
                "switch. Consumers must be idempotent on `id`: delivery is at least once.",
                "**Authorization.** A message another service sends to rescenter (the `receive` "
                "operations) is applied only when its AMQP `user_id` property names a broker user that "
                "`bus.authorization.users` allows to send that type and, when `data` carries an `actor`, to "
                "act for `actor.role`. RabbitMQ refuses a `user_id` that is not the publishing connection's "
                "user (the channel is closed with PRECONDITION_FAILED), so it cannot be forged; give each "
                "service a broker user of its own, without the `impersonator` tag. A message without "
                "`user_id` (when `bus.authorization.require_user_id` is true, as production requires) or "
                "from a user not allowed is dead-lettered with `x-rescenter-reason: unauthorized` and "
                "changes nothing. Everything rescenter sends carries its own broker user in `user_id`.",
                PUBLISHING,
                ANSWERS,
                "**Queues.** One durable quorum queue per consumer group (the core, each plugin), bound to "
                "the types it consumes, with `x-delivery-limit` "
                f"{topology.delivery_limit} and its own dead-letter queue; every instance of the service "
                "competes on the same queues. The `queue_*` and `dead_*` channels list them with their "
                f"bindings ({', '.join(f'`{q.name}`' for q in topology.queues)}).",
            ]),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "local": {"host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0.9.1"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _key(name: str) -> str:
    return name.replace(".", "_").replace("-", "_")


def topic_match(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` one word, `#` zero or more."""
    if "#" not in pattern and "*" not in pattern:
        return pattern == key
    words, keys = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(words):
            return j == len(keys)
        if words[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(keys) + 1))
        return j < len(keys) and words[i] in ("*", keys[j]) and match(i + 1, j + 1)

    return match(0, 0)


def _queue_channels(queue: Queue, catalogue: Catalogue, topology: Topology) -> dict[str, Any]:
    arrives = [type_ for type_ in sorted(catalogue.types) if any(topic_match(p, type_) for p in queue.bindings)]
    bindings = ", ".join(f"`{pattern}`" for pattern in queue.bindings)
    queue_binding = {"name": queue.name, "durable": True, "exclusive": False, "autoDelete": False}
    return {
        f"queue_{_key(queue.group)}": {
            "address": queue.name,
            "title": f"Queue of {queue.group}",
            "description": f"The {queue.group} consumer group's quorum queue, bound to `{topology.exchange}` "
                           f"with {bindings}. A message that fails is dead-lettered to `{queue.dead_letter_queue}` "
                           f"(through `{topology.dead_exchange}`, routing key `{queue.name}`).",
            "messages": {_key(t): {"$ref": f"#/components/messages/{_key(t)}"} for t in arrives},
            "bindings": {"amqp": {"is": "queue", "queue": queue_binding, "bindingVersion": "0.3.0"}},
            "x-bindings": list(queue.bindings),
            "x-arguments": {"x-queue-type": "quorum", "x-delivery-limit": topology.delivery_limit,
                            "x-dead-letter-exchange": topology.dead_exchange,
                            "x-dead-letter-routing-key": queue.name},
            "x-dead-letter-queue": queue.dead_letter_queue,
        },
        f"dead_{_key(queue.group)}": {
            "address": queue.dead_letter_queue,
            "title": f"Dead letters of {queue.group}",
            "description": f"What `{queue.name}` could not process, body unchanged, with the reason in the "
                           f"headers. Bound to `{topology.dead_exchange}` (direct) with routing key "
                           f"`{queue.name}`. Nothing consumes it: operators read it.",
            "messages": {"dead_letter": {"$ref": "#/components/messages/dead_letter"}},
            "bindings": {"amqp": {"is": "queue", "queue": {**queue_binding, "name": queue.dead_letter_queue},
                                  "bindingVersion": "0.3.0"}},
            "x-bindings": [queue.name],
        },
    }


def _dead_letter_message(topology: Topology) -> dict[str, Any]:
    return {
        "name": "dead_letter",
        "title": "A dead letter",
        "summary": "A message a queue could not process, with the reason.",
        "description": "The original body and properties (`message_id`, `type`, `content_type`), plus these "
                       "headers. A message the service could not even move here is rejected to the broker, "
                       "which dead-letters it without our headers (`x-first-death-reason: rejected`); the "
                       f"broker does the same after {topology.delivery_limit} deliveries "
                       "(`x-first-death-reason: delivery_limit`). Each instance's keeper takes every dead "
                       "letter into the store, where admins list, replay and discard them (README, *Dead "
                       "letters*): the queue is only their way there.",
        "headers": {
            "type": "object",
            "properties": {
                "x-rescenter-reason": {"enum": sorted(DEAD_LETTER_REASONS),
                                       "description": "; ".join(f"{k}: {v}" for k, v in DEAD_LETTER_REASONS.items())},
                "x-rescenter-error": {"type": "string", "description": "What was wrong; a refusal by a rule "
                                                                        "starts with its id (`ORD-1: ...`)."},
                "x-rescenter-queue": {"type": "string", "description": "The queue it came from."},
                "x-rescenter-routing-key": {"type": "string"},
                "x-rescenter-dead-at": {"type": "string", "format": "date-time",
                                        "description": "When it was dead-lettered (RFC 3339, UTC)."},
                "x-rescenter-user-id": {"type": "string", "description": "The broker user that sent it (its "
                                                                          "AMQP `user_id`; empty when none)."},
                "x-rescenter-replays": {"type": "integer", "description": "On a message an admin replayed: how "
                                                                          "many times it was replayed."},
                "x-rescenter-replayed-for": {"type": "string", "description": "On a replay (published by the "
                                             "service's own user): the broker user that sent the original, as "
                                             "whom the service judges it."},
            },
        },
        "payload": {"description": "The original body, unchanged."},
    }


def _envelope_schema() -> dict[str, Any]:
    schema = Envelope.model_json_schema()
    schema.pop("title", None)
    return schema
