"""Messages of the metrics plugin: the events it publishes, and how it reads the
events it consumes.

It publishes one thing of its own: support setting or clearing a flag on a
cancelled order (MET-2). It consumes the core's order events and the
`dispute.*` and `review.*` events of the disputes and reviews plugins. Those
types belong to their owners, who register them in the catalogue (the bus
validates each message against its owner's model before any handler runs); this
plugin reads each consumed message again with its own lenient model below, which
takes only the fields it needs and ignores the rest, so an owner may add fields
without breaking the metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import InvalidInput
from core.messages import Actor, MessageData, MessageType

FLAG_SET = "metrics.cancellation_flag_set"
FLAG_CLEARED = "metrics.cancellation_flag_cleared"

#: MET-2: "support flagged it (fraud, order placed by mistake)"
Flag = Literal["fraud", "mistaken_order"]


def to_millisecond(moment: datetime) -> datetime:
    """In UTC, to the millisecond: what BSON keeps, so a fact folded from the log in
    memory equals the same fact read back from the live projection."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# ---------------------------------------------------------------- published


class CancellationFlagSet(MessageData):
    """Support flagged a cancelled order (fraud, order placed by mistake): the cancellation
    stops counting in the seller's completion rate (MET-2)."""

    order_id: str
    buyer_id: str
    seller_id: str
    flag: Flag
    note: str
    #: the flag's revision on this order: 1, 2, ... (the latest revision is the flag's state)
    revision: int = Field(ge=1)
    actor: Actor
    rule: Literal["MET-2"] = "MET-2"


class CancellationFlagCleared(MessageData):
    """Support cleared the flag: the cancellation counts again, unless another MET-2
    exclusion applies."""

    order_id: str
    buyer_id: str
    seller_id: str
    previous_flag: Flag
    note: str | None = None
    revision: int = Field(ge=1)
    actor: Actor
    rule: Literal["MET-2"] = "MET-2"


MESSAGE_TYPES: tuple[MessageType, ...] = (
    MessageType(FLAG_SET, CancellationFlagSet,
                "Support flagged a cancelled order (fraud, order placed by mistake): the cancellation no longer "
                "counts in the seller's completion rate.", "publish", rules=("MET-2",)),
    MessageType(FLAG_CLEARED, CancellationFlagCleared,
                "Support cleared the flag of a cancelled order: the cancellation counts again unless another "
                "exclusion applies.", "publish", rules=("MET-2",)),
)


# ---------------------------------------------------------------- consumed, read leniently


class _Lenient(BaseModel):
    """Only the fields the metrics need; unknown fields are ignored (their owner's model
    already validated the message on the bus)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _times_to_millisecond(cls, value: Any) -> Any:
        return to_millisecond(value) if isinstance(value, datetime) else value


class OrderFacts(_Lenient):
    order_id: str = Field(min_length=1, max_length=200)
    buyer_id: str = Field(min_length=1, max_length=200)
    seller_id: str = Field(min_length=1, max_length=200)


class PlacedFacts(OrderFacts):
    pass


class DeliveredFacts(OrderFacts):
    delivery_number: int = Field(default=1, ge=1)
    late: bool = False


class CompletedFacts(OrderFacts):
    cause: str | None = None


class CancelledFacts(OrderFacts):
    cause: str | None = None
    previous_state: str | None = None
    requested_by: str | None = None


class LateFacts(OrderFacts):
    pass


class Amount(_Lenient):
    amount: Decimal
    currency: str


class RefundFacts(OrderFacts):
    request_id: str = Field(min_length=1, max_length=200)
    amount: Amount
    accepted_at: AwareDatetime | None = None


class RequestAnsweredFacts(OrderFacts):
    request_id: str = Field(min_length=1, max_length=200)
    kind: str
    to_party: str
    answer: str | None = None
    answered_at: AwareDatetime | None = None


class RequestExpiredFacts(OrderFacts):
    request_id: str = Field(min_length=1, max_length=200)
    kind: str
    to_party: str
    silent_party: str | None = None
    outcome: str | None = None
    expired_at: AwareDatetime | None = None


class ReviewPublishedFacts(OrderFacts):
    review_id: str = Field(min_length=1, max_length=200)
    rating: int = Field(ge=1, le=5)
    published_at: AwareDatetime | None = None


class ReviewRemovedFacts(OrderFacts):
    review_id: str = Field(min_length=1, max_length=200)
    removed_at: AwareDatetime | None = None


class FlagSetFacts(OrderFacts):
    flag: Flag
    note: str
    revision: int = Field(ge=1)
    actor: Actor


class FlagClearedFacts(OrderFacts):
    note: str | None = None
    revision: int = Field(ge=1)
    actor: Actor


#: every type the plugin consumes, with the model it reads it with
CONSUMED: dict[str, type[OrderFacts]] = {
    "order.placed": PlacedFacts,
    "order.delivered": DeliveredFacts,
    "order.late": LateFacts,
    "order.completed": CompletedFacts,
    "order.cancelled": CancelledFacts,
    "dispute.refund_issued": RefundFacts,
    "dispute.request_answered": RequestAnsweredFacts,
    "dispute.request_expired": RequestExpiredFacts,
    "review.published": ReviewPublishedFacts,
    "review.removed": ReviewRemovedFacts,
    FLAG_SET: FlagSetFacts,
    FLAG_CLEARED: FlagClearedFacts,
}

#: consumed types that other plugins own (see `fill_in_missing_types`)
FOREIGN: dict[str, str] = {
    "dispute.refund_issued": "disputes",
    "dispute.request_answered": "disputes",
    "dispute.request_expired": "disputes",
    "review.published": "reviews",
    "review.removed": "reviews",
}


def read_facts(type_: str, data: dict[str, Any]) -> OrderFacts:
    """The consumed event's data, read with the metrics' own model."""
    try:
        return CONSUMED[type_].model_validate(data)
    except KeyError:
        raise InvalidInput(f"the metrics do not consume {type_!r}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"{type_} lacks what the metrics need: {problems}") from None


class _Unvalidated(MessageData):
    """Placeholder model of a consumed type whose owner is not loaded (see below)."""

    model_config = ConfigDict(extra="allow", frozen=True)


def fill_in_missing_types(catalogue: Any) -> list[str]:
    """Declare the consumed types that no loaded plugin declared, with a model that lets
    them through to our handler (which reads them with its own lenient model).

    The bus refuses a message whose type the catalogue does not know, and a type may be
    declared only once: the disputes and reviews plugins own their events. When such an
    owner is not loaded (it failed to load, or a deployment leaves it out while another
    service publishes those events), this keeps the metrics consuming them. Called from
    `startup`, after every plugin declared its types and before any consumer starts."""
    added = []
    for type_, owner in FOREIGN.items():
        if type_ not in catalogue.types:
            catalogue.add(MessageType(type_, _Unvalidated,
                                      f"Consumed by metrics; its owner ({owner}) is not loaded here.",
                                      "consume", owner="metrics", rules=("MET-3", "MET-4")))
            added.append(type_)
    return added
