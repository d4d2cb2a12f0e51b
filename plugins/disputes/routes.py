"""HTTP routes of the resolution center, under /orders/{order_id}/resolution.

Bodies are strict; a request's body names its `kind`, and each kind has its own
fields. Refusals by a rule are problem+json naming it (`"rule": "DSP-2"`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, RootModel

from core.http.responses import ActorView, Amount, OrderState, View
from core.http.routes import Body, Call, Route
from core.messages import Amount as ExactAmount  # input: ASCII digits, two places at most
from plugins.disputes.center import center_for
from plugins.disputes.messages import Kind, Party
from plugins.disputes.rules import RefundReason

PARTIES_AND_STAFF = frozenset({"buyer", "seller", "support", "admin", "service"})
# Support reaches the routes that act too, to be told which rule keeps it to reading (DSP-1).
TAGS = ("resolution center",)

Text = Annotated[str, Field(min_length=1, max_length=5_000, pattern=r"\S")]
ShortText = Annotated[str, Field(min_length=1, max_length=1_000, pattern=r"\S")]


class OfferedAmount(Body):
    """Money in the order's currency: an exact decimal with at most two places, as a string."""

    amount: ExactAmount = Field(max_digits=14, decimal_places=2, examples=["30.00"])
    currency: str = Field(pattern=r"^[A-Z]{3}$", examples=["EUR"])


class PartialRefund(Body):
    """DSP-2 (seller): an amount above zero and at most 60 % of the original price, a clear
    explanation for the buyer, and a reason from the list that the buyer never sees."""

    kind: Literal["partial_refund"]
    amount: OfferedAmount
    explanation: Text
    reason: RefundReason = Field(description="Confidential: shown to the seller and support only.")


class SellerCancelRequest(Body):
    """DSP-4 (seller): ask the buyer to cancel, with a reason and an optional personal note."""

    kind: Literal["seller_cancel_request"]
    reason: Text
    note: Text | None = None


class UpdateRequest(Body):
    """DSP-5 (buyer): ask the seller for an update, with a short explanation."""

    kind: Literal["update_request"]
    explanation: ShortText


class BuyerCancelRequest(Body):
    """DSP-6 (buyer): ask the seller to cancel: feedback the seller reads, a confidential
    reason the seller never reads, and an explanation with evidence."""

    kind: Literal["buyer_cancel_request"]
    feedback: Text = Field(description="Shown to the seller.")
    confidential_reason: Text = Field(description="Confidential: shown to the buyer and support only.")
    explanation: Text
    evidence: list[Annotated[str, Field(max_length=2_000)]] = Field(
        default_factory=list, max_length=20, description="References to files or messages; at least one.")


class ExtensionRequest(Body):
    """DSP-7 (seller): ask for N more days, with a reason."""

    kind: Literal["extension_request"]
    days: int = Field(le=365)
    reason: Text


class ExtraOffer(Body):
    """DSP-8 (seller): offer extra revisions, days and a price (none: free)."""

    kind: Literal["extra_offer"]
    description: Text
    revisions: int = Field(default=0, le=100)
    days: int = Field(default=0, le=365)
    price: OfferedAmount | None = None


class OpenRequestBody(RootModel[Annotated[
    PartialRefund | SellerCancelRequest | UpdateRequest | BuyerCancelRequest | ExtensionRequest | ExtraOffer,
    Field(discriminator="kind"),
]]):
    """A new request; `kind` says which, and which fields it takes."""


class AnswerBody(Body):
    answer: Literal["accept", "decline", "reply"] = Field(
        description="accept or decline (partial_refund, cancel requests, extension_request, extra_offer); "
                    "reply (update_request).")
    message: Text | None = Field(default=None, description="Required to reply to an update request (DSP-5).")


# ---------------------------------------------------------------- answers


class RequestTerms(View):
    """What the author asked, as both parties read it; which fields depend on `kind`."""

    amount: Amount | None = Field(default=None, description="partial_refund (DSP-2).")
    explanation: str | None = Field(default=None, description="partial_refund, update_request, buyer_cancel_request.")
    reason: str | None = Field(default=None, description="seller_cancel_request (DSP-4), extension_request (DSP-7).")
    note: str | None = Field(default=None, description="seller_cancel_request: the optional personal note.")
    feedback: str | None = Field(default=None, description="buyer_cancel_request: shown to the seller (DSP-6).")
    evidence: list[str] | None = Field(default=None, description="buyer_cancel_request.")
    days: int | None = Field(default=None, description="extension_request, extra_offer.")
    revisions: int | None = Field(default=None, description="extra_offer (DSP-8).")
    description: str | None = Field(default=None, description="extra_offer.")
    price: Amount | None = Field(default=None, description="extra_offer: what the extras cost (0.00: free).")


class Confidential(View):
    """Shown to the request's author and to support only (DSP-2, DSP-6)."""

    refund_reason: RefundReason | None = Field(default=None, description="partial_refund.")
    cancellation_reason: str | None = Field(default=None, description="buyer_cancel_request.")


class RequestAnswer(View):
    answer: Literal["accepted", "declined", "replied"]
    at: datetime
    by: ActorView
    message: str | None = Field(description="The information given in reply to an update request (DSP-5).")


class AgreedOrderChange(View):
    """The command the resolution center sent the core when the request was accepted."""

    type: Literal["command.order.cancel_by_agreement", "command.order.extend_delivery", "command.order.amend"]
    id: str = Field(description="The command's message id: the core applies it once.")


class ResolutionRequest(View):
    """A request of the resolution center as the caller may read it (DSP-1, DSP-2, DSP-6)."""

    id: str
    kind: Kind
    rule: str = Field(description="The rule of its kind: DSP-2, DSP-4, DSP-5, DSP-6, DSP-7 or DSP-8.")
    from_party: Party
    to_party: Party
    state: Literal["open", "accepted", "declined", "replied", "withdrawn", "expired", "closed"]
    opened_at: datetime
    answer_by: datetime | None = Field(description="The end of the answer window; null: none (partial refunds).")
    terms: RequestTerms
    confidential: Confidential | None = Field(
        default=None, description="Only for the request's author and support; absent for anyone else.")
    answer: RequestAnswer | None
    outcome: Literal["accepted", "declined", "replied", "unanswered", "withdrawn", "order_completed",
                     "order_cancelled"] | None = Field(description="How it ended; null while open.")
    closed_at: datetime | None
    order_change: AgreedOrderChange | None
    refund_id: str | None = Field(description="The id of `dispute.refund_issued` once a partial refund was accepted.")
    silence_outcome: Literal["accepted", "declined", "unanswered"] | None = Field(
        description="What silence does when the window ends (DSP-10); null: no window.")
    if_silent: str | None = Field(description="The same in words, while the request is open.")
    you_may: list[Literal["accept", "decline", "reply", "withdraw"]] = Field(
        description="What the caller may do with it now.")


class Refused(View):
    rule: str | None
    detail: str


class CenterAction(View):
    """One action of the caller's role (support sees both roles') and whether it is available now."""

    kind: Kind
    party: Party
    rule: str
    summary: str
    answer_window: str | None = Field(description="ISO 8601 duration the other party has to answer; null: none.")
    silence_outcome: Literal["accepted", "declined", "unanswered"] | None
    available: bool
    refused: Refused | None = Field(description="Why not, naming the rule, when it is not available.")


class CenterHistoryEntry(View):
    seq: int = Field(ge=0)
    type: str = Field(description="The `dispute.*` event published (see docs/asyncapi.json).")
    event_id: str
    at: datetime
    request_id: str | None
    actor: ActorView | None
    rule: str | None
    details: dict[str, Any] = Field(description="The event's own fields; never a confidential reason.")


class ResolutionCenter(View):
    """An order's resolution center as the caller sees it (DSP-1)."""

    order_id: str
    order_state: OrderState
    viewer: Literal["buyer", "seller", "support"]
    actions: list[CenterAction]
    open_requests: list[ResolutionRequest]
    requests: list[ResolutionRequest] = Field(description="Every request, open or not, oldest first.")
    history: list[CenterHistoryEntry]
    refund_accepted: bool = Field(description="A partial refund was accepted: no other can be offered (DSP-3).")


# ---------------------------------------------------------------- handlers


async def resolution_center(call: Call) -> dict[str, Any]:
    assert call.principal is not None
    return await center_for(call.services).overview(call.match["order_id"], call.principal)


async def open_request(call: Call) -> dict[str, Any]:
    assert call.principal is not None
    form = call.body.root
    return await center_for(call.services).open(
        call.match["order_id"], call.principal, form.kind, form.model_dump(exclude={"kind"}),
        idempotency_key=call.idempotency_key)


async def get_request(call: Call) -> dict[str, Any]:
    assert call.principal is not None
    return await center_for(call.services).request(call.match["order_id"], call.match["request_id"],
                                                   call.principal)


async def answer_request(call: Call) -> dict[str, Any]:
    assert call.principal is not None
    body: AnswerBody = call.body
    return await center_for(call.services).answer(
        call.match["order_id"], call.match["request_id"], call.principal, body.answer, body.message,
        idempotency_key=call.idempotency_key)


async def withdraw_request(call: Call) -> dict[str, Any]:
    assert call.principal is not None
    return await center_for(call.services).withdraw(
        call.match["order_id"], call.match["request_id"], call.principal, idempotency_key=call.idempotency_key)


def resolution_routes() -> list[Route]:
    base = "/orders/{order_id}/resolution"
    return [
        Route("GET", base, resolution_center,
              "The order's resolution center as the caller sees it: the actions of its role, the open "
              "requests with their deadline and what silence will do, and the history.",
              roles=PARTIES_AND_STAFF, response=ResolutionCenter, rules=("DSP-1", "DSP-2", "DSP-6", "DSP-10"),
              tags=TAGS),
        Route("POST", f"{base}/requests", open_request,
              "Open a request of one kind: the seller offers a partial refund, asks the buyer to cancel, "
              "asks for more days or offers extras; the buyer asks for an update or asks the seller to cancel.",
              roles=PARTIES_AND_STAFF, body=OpenRequestBody, response=ResolutionRequest, status=201,
              rules=("DSP-1", "DSP-2", "DSP-3", "DSP-4", "DSP-5", "DSP-6", "DSP-7", "DSP-8", "DSP-9"), tags=TAGS),
        Route("GET", f"{base}/requests/{{request_id}}", get_request,
              "One request as the caller sees it (confidential parts: their author and support only).",
              roles=PARTIES_AND_STAFF, response=ResolutionRequest, rules=("DSP-1", "DSP-2", "DSP-6"), tags=TAGS),
        Route("POST", f"{base}/requests/{{request_id}}/answer", answer_request,
              "The other party accepts, declines or replies, before the answer window ends.",
              roles=PARTIES_AND_STAFF, body=AnswerBody, response=ResolutionRequest,
              rules=("DSP-1", "DSP-3", "DSP-4", "DSP-5", "DSP-6", "DSP-7", "DSP-8", "DSP-9"), tags=TAGS),
        Route("POST", f"{base}/requests/{{request_id}}/withdrawal", withdraw_request,
              "The author withdraws a request that is still open.",
              roles=PARTIES_AND_STAFF, response=ResolutionRequest, rules=("DSP-9",), tags=TAGS),
    ]
