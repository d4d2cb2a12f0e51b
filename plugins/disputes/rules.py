"""The resolution center's decisions (DSP-1 to DSP-10), as pure functions.

Each takes the order's case document (every request made on the order, see
`center.py`), the order as the core keeps it and the clock's `now`, and returns
a `Decision`: the fields to set on the case, the events to publish (each also an
entry of the case's history), the commands that ask the core to change the
order, and the deadlines to schedule or cancel. The caller writes it all in one
version-guarded update. A refusal raises a `core.errors` exception that names
its rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal, get_args

from pydantic import TypeAdapter

from core.errors import Forbidden, InvalidInput, NotFound, RuleViolation
from core.messages import Actor, AmendOrder, CancelByAgreement, ExtendDelivery, MessageData, Money
from core.orders import FINAL_STATES
from core.scheduler import Deadline
from core.settings import DisputePolicy
from plugins.disputes.messages import (
    RefundIssued,
    RequestAnswered,
    RequestClosed,
    RequestExpired,
    RequestOpened,
    RequestWithdrawn,
    Terms,
)

NAME = "disputes"
ANSWER_WINDOW = "answer_window"  # the deadline kind
RESOLUTION_CENTER = Actor(id="resolution-center", role="system")

OPEN = "open"

#: DSP-2: the reasons a seller may give for a partial refund (the help article's list:
#: the project's scope changed, compensating a delay, the buyer unhappy with part of the
#: work, a misunderstanding about the original agreement). Never shown to the buyer.
RefundReason = Literal[
    "project_scope_changed",
    "compensation_for_delay",
    "buyer_unsatisfied_with_part_of_the_work",
    "misunderstanding_of_the_agreement",
]
REFUND_REASONS: tuple[str, ...] = get_args(RefundReason)

ANSWERED = {"accept": "accepted", "decline": "declined", "reply": "replied"}
#: the policy's words for silence (core.settings.Silence) -> the outcome events carry
SILENCE_OUTCOMES = {"accept": "accepted", "decline": "declined", "record_unanswered": "unanswered"}
_DURATION = TypeAdapter(timedelta)


@dataclass(frozen=True)
class KindRule:
    kind: str
    rule: str
    author: Literal["buyer", "seller"]
    answers: tuple[str, ...]
    summary: str  # what the author does, for the list of actions (DSP-1)
    noun: str  # what the request is called in sentences

    @property
    def answerer(self) -> str:
        return other_party(self.author)


KINDS: dict[str, KindRule] = {k.kind: k for k in (
    KindRule("partial_refund", "DSP-2", "seller", ("accept", "decline"), "offer a partial refund",
             "offer of a partial refund"),
    KindRule("seller_cancel_request", "DSP-4", "seller", ("accept", "decline"), "ask the buyer to cancel the order",
             "request to cancel the order"),
    KindRule("extension_request", "DSP-7", "seller", ("accept", "decline"), "ask to extend the delivery date",
             "request to extend the delivery date"),
    KindRule("extra_offer", "DSP-8", "seller", ("accept", "decline"), "offer extra revisions or services",
             "offer of extra revisions or services"),
    KindRule("update_request", "DSP-5", "buyer", ("reply",), "ask the seller for an update", "request for an update"),
    KindRule("buyer_cancel_request", "DSP-6", "buyer", ("accept", "decline"), "ask the seller to cancel the order",
             "request to cancel the order"),
)}


def other_party(party: str) -> str:
    return "seller" if party == "buyer" else "buyer"


def party_of(order: Mapping[str, Any], user_id: str) -> str | None:
    """DSP-1: the caller's side of this order, by identity (None: not a party)."""
    if user_id == order["buyer_id"]:
        return "buyer"
    if user_id == order["seller_id"]:
        return "seller"
    return None


def window_of(policy: DisputePolicy, kind: str) -> timedelta | None:
    """The answer window of a kind (None: the policy sets none, as for partial refunds)."""
    return getattr(policy, f"{kind}_window", None)


def silence_outcome_of(policy: DisputePolicy, kind: str) -> str | None:
    """DSP-10: what silence does when the window of a kind ends."""
    silence = getattr(policy, f"{kind}_silence", None)
    return SILENCE_OUTCOMES[silence] if silence else None


def iso_duration(value: timedelta | None) -> str | None:
    return None if value is None else _DURATION.dump_python(value, mode="json")


def money_doc(amount: Decimal, currency: str) -> dict[str, str]:
    """Money as stored and shown: an exact decimal string with two places."""
    return {"amount": str(amount.quantize(Decimal("0.01"))), "currency": currency}


def money(doc: Mapping[str, str]) -> Money:
    return Money(amount=Decimal(doc["amount"]), currency=doc["currency"])


@dataclass
class Decision:
    """What one command decided on a case; written in one guarded update."""

    set: dict[str, Any] = field(default_factory=dict)
    #: (type, data, envelope id or None for a fresh one): published, and kept in the history
    events: list[tuple[str, MessageData, str | None]] = field(default_factory=list)
    #: (type, data, envelope id): commands for the core, published with the events
    commands: list[tuple[str, MessageData, str]] = field(default_factory=list)
    schedule: list[Deadline] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    request_id: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.set or self.events or self.commands or self.schedule or self.cancel)

    def merge(self, other: Decision) -> Decision:
        self.set.update(other.set)
        self.events += other.events
        self.commands += other.commands
        self.schedule += other.schedule
        self.cancel += other.cancel
        return self


# ---------------------------------------------------------------- reading a case


def requests_of(case: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every request made on the order, oldest first."""
    if not case:
        return []
    return sorted(case.get("requests", {}).values(), key=lambda r: r["seq"])


def find_request(case: Mapping[str, Any] | None, request_id: str) -> dict[str, Any]:
    request = (case or {}).get("requests", {}).get(request_id)
    if request is None:
        raise NotFound(f"no request {request_id!r} on this order", request_id=request_id)
    return request


def _event_fields(case: Mapping[str, Any], request: Mapping[str, Any], actor: Actor) -> dict[str, Any]:
    return {
        "order_id": case["_id"],
        "buyer_id": case["buyer_id"],
        "seller_id": case["seller_id"],
        "request_id": request["id"],
        "kind": request["kind"],
        "from_party": request["from_party"],
        "to_party": request["to_party"],
        "actor": actor,
        "rule": request["rule"],
    }


def _event_id(case: Mapping[str, Any], request: Mapping[str, Any], what: str) -> str:
    """A deterministic id for what a request causes once, so consumers dedupe even a re-decision."""
    return f"{NAME}.{case['_id']}.{request['id']}.{what}"


# ---------------------------------------------------------------- refusals


def refuse_on_final_order(order: Mapping[str, Any]) -> None:
    if order["state"] in FINAL_STATES:
        raise RuleViolation(f"the order is {order['state']}: no request and no answer on a final order",
                            rule="DSP-9", order_state=order["state"])


_CLOSED_BECAUSE = {
    "accepted": "it was already accepted",
    "declined": "it was already declined",
    "replied": "it was already answered",
    "withdrawn": "its author withdrew it",
    "expired": "its answer window ended and silence decided",
    "closed": "its order ended",
}


def refuse_unless_open(request: Mapping[str, Any], now: datetime, verb: str) -> None:
    """DSP-9: an answer (or a withdrawal) after the request closed, or after its deadline,
    is refused. At the deadline instant itself silence decides, so the window is
    [opened_at, answer_by)."""
    if request["state"] != OPEN:
        raise RuleViolation(f"cannot {verb} this request: {_CLOSED_BECAUSE[request['state']]}", rule="DSP-9",
                            request_id=request["id"], request_state=request["state"])
    answer_by = request.get("answer_by")
    if answer_by is not None and now >= answer_by:
        raise RuleViolation(f"cannot {verb} this request: its answer window ended at {answer_by.isoformat()}",
                            rule="DSP-9", request_id=request["id"], answer_by=answer_by)


def refuse_unless_author_may_open(case: Mapping[str, Any] | None, order: Mapping[str, Any], party: str | None,
                                  kind: str) -> KindRule:
    """DSP-1, DSP-9, DSP-3: may `party` open a request of `kind` on this order now?"""
    rule = KINDS[kind]
    if party is None:
        raise Forbidden("only the order's buyer and seller act in its resolution center; support reads it",
                        rule="DSP-1")
    if party != rule.author:
        allowed = sorted(k.kind for k in KINDS.values() if k.author == party)
        raise Forbidden(f"a {party} cannot {rule.summary}: it is the {rule.author}'s action", rule="DSP-1",
                        kind=kind, your_actions=allowed)
    refuse_on_final_order(order)
    for request in requests_of(case):
        if request["kind"] == kind and request["state"] == OPEN:
            raise RuleViolation(f"a {kind} request is already open on this order: one at a time of each kind",
                                rule="DSP-9", request_id=request["id"])
    if kind == "partial_refund" and case and case.get("refund_accepted"):
        raise RuleViolation("a partial refund was already accepted on this order: no other refund can be offered",
                            rule="DSP-3", accepted_request_id=case["refund_accepted"])
    return rule


# ---------------------------------------------------------------- the terms of a new request


def original_price(order: Mapping[str, Any]) -> Money:
    """DSP-2 caps a refund on the original price: the placed one, before any extra (DSP-8)."""
    return money(order.get("original_price") or order["price"])


def _checked_terms(kind: str, fields: Mapping[str, Any], order: Mapping[str, Any],
                   policy: DisputePolicy) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request's public terms and its confidential part, or a refusal naming the rule."""
    currency = order["price"]["currency"]
    if kind == "partial_refund":
        amount, asked_currency = fields["amount"]["amount"], fields["amount"]["currency"]
        if asked_currency != currency:
            raise RuleViolation(f"a partial refund is in the order's currency, {currency}", rule="DSP-2",
                                currency=currency)
        if amount <= 0:
            raise RuleViolation("a partial refund is an amount above zero", rule="DSP-2")
        price = original_price(order)
        percent = policy.max_partial_refund_percent
        if amount * 100 > price.amount * percent:  # exact: no rounding decides this
            cap = (price.amount * percent / 100).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
            raise RuleViolation(
                f"a partial refund is at most {percent} % of the original order price "
                f"({price.amount} {currency}): at most {cap} {currency}",
                rule="DSP-2", max_amount=money_doc(cap, currency), original_price=money_doc(price.amount, currency))
        if fields["reason"] not in REFUND_REASONS:
            raise RuleViolation(f"pick the refund reason from the list: {', '.join(REFUND_REASONS)}", rule="DSP-2")
        return ({"amount": money_doc(amount, currency), "explanation": fields["explanation"]},
                {"refund_reason": fields["reason"]})
    if kind == "seller_cancel_request":
        return {"reason": fields["reason"], "note": fields.get("note")}, {}
    if kind == "update_request":
        return {"explanation": fields["explanation"]}, {}
    if kind == "buyer_cancel_request":
        evidence = [item for item in fields.get("evidence") or [] if item.strip()]
        if not evidence:
            raise RuleViolation("a buyer must justify a cancellation: give an explanation with evidence",
                                rule="DSP-6")
        return ({"feedback": fields["feedback"], "explanation": fields["explanation"], "evidence": evidence},
                {"cancellation_reason": fields["confidential_reason"]})
    if kind == "extension_request":
        if fields["days"] < 1:
            raise RuleViolation("an extension asks for at least one more day", rule="DSP-7")
        return {"days": fields["days"], "reason": fields["reason"]}, {}
    if kind == "extra_offer":
        revisions, days, price = fields.get("revisions", 0), fields.get("days", 0), fields.get("price")
        price_amount = Decimal(0)
        if price is not None:
            if price["currency"] != currency:
                raise RuleViolation(f"an extra offer is priced in the order's currency, {currency}", rule="DSP-8",
                                    currency=currency)
            price_amount = price["amount"]
        if revisions < 0 or days < 0 or price_amount < 0:
            raise RuleViolation("an extra offer adds revisions, days or a price; none can be negative", rule="DSP-8")
        if not (revisions or days or price_amount):
            raise RuleViolation("an extra offer adds at least one revision, one day or a price", rule="DSP-8")
        return ({"description": fields["description"], "revisions": revisions, "days": days,
                 "price": money_doc(price_amount, currency)}, {})
    raise InvalidInput(f"unknown kind of request {kind!r}")


def public_terms(request: Mapping[str, Any]) -> Terms:
    """The structured terms an event may carry: amounts and counts, never texts."""
    terms = request["terms"]
    price = terms.get("price")
    return Terms(
        amount=money(terms["amount"]) if "amount" in terms else None,
        days=terms.get("days"),
        revisions=terms.get("revisions"),
        price=money(price) if price and Decimal(price["amount"]) > 0 else None,
    )


# ---------------------------------------------------------------- decisions


def open_request(case: Mapping[str, Any], order: Mapping[str, Any], *, party: str | None, actor: Actor,
                 kind: str, fields: Mapping[str, Any], request_id: str, fingerprint: str, now: datetime,
                 policy: DisputePolicy) -> Decision:
    """DSP-1 to DSP-9: a party opens a request; the other has the policy's window to answer."""
    rule = refuse_unless_author_may_open(case, order, party, kind)
    assert party is not None
    terms, confidential = _checked_terms(kind, fields, order, policy)
    window = window_of(policy, kind)
    answer_by = now + window if window else None
    silence = silence_outcome_of(policy, kind) if window else None
    deadline = None
    if answer_by is not None:
        deadline = Deadline(id=f"{NAME}/{case['_id']}/{request_id}/{ANSWER_WINDOW}", owner=NAME,
                            kind=ANSWER_WINDOW, subject=case["_id"], due_at=answer_by,
                            payload={"request_id": request_id})
    request: dict[str, Any] = {
        "id": request_id,
        "seq": len(case.get("requests", {})),
        "kind": kind,
        "rule": rule.rule,
        "from_party": party,
        "to_party": rule.answerer,
        "author_id": actor.id,
        "state": OPEN,
        "opened_at": now,
        "answer_by": answer_by,
        # DSP-10: silence does what the policy said when the request was opened, which is
        # what both parties were told; a policy change applies to later requests.
        "silence_outcome": silence,
        "deadline_id": deadline.id if deadline else None,
        "terms": terms,
        "confidential": confidential,
        "answer": None,
        "outcome": None,
        "closed_at": None,
        "order_change": None,
        "fingerprint": fingerprint,
    }
    opened = RequestOpened(**_event_fields(case, request, actor), opened_at=now, answer_by=answer_by,
                           silence_outcome=silence, terms=public_terms(request))
    return Decision(set={f"requests.{request_id}": request}, events=[("dispute.request_opened", opened, None)],
                    schedule=[deadline] if deadline else [], request_id=request_id)


def answer_request(case: Mapping[str, Any], order: Mapping[str, Any], *, party: str | None, actor: Actor,
                   request_id: str, answer: str, message: str | None, now: datetime) -> Decision:
    """The other party accepts, declines or replies within the window (DSP-3 to DSP-9)."""
    request = find_request(case, request_id)
    rule = KINDS[request["kind"]]
    if party != request["to_party"]:
        if party == request["from_party"]:
            raise Forbidden(f"the author of a request does not answer it: the {request['to_party']} does",
                            rule="DSP-1", request_id=request_id)
        raise Forbidden(f"only the {request['to_party']} answers this request; support reads it", rule="DSP-1",
                        request_id=request_id)
    refuse_unless_open(request, now, "answer")
    refuse_on_final_order(order)
    if answer not in rule.answers:
        raise InvalidInput(f"a {request['kind']} is answered with: {' or '.join(rule.answers)}", rule=rule.rule,
                           answers=list(rule.answers))
    if answer == "reply" and not (message or "").strip():
        raise InvalidInput("answer an update request with the information asked for (message)", rule="DSP-5")
    state = ANSWERED[answer]
    prefix = f"requests.{request_id}"
    decision = Decision(
        set={f"{prefix}.state": state, f"{prefix}.outcome": state, f"{prefix}.closed_at": now,
             f"{prefix}.answer": {"answer": state, "at": now, "by": actor.model_dump(), "message": message}},
        events=[("dispute.request_answered", RequestAnswered(
            **_event_fields(case, request, actor), answer=state, answered_at=now,
            answer_by=request.get("answer_by")), None)],
        cancel=[request["deadline_id"]] if request.get("deadline_id") else [],
        request_id=request_id,
    )
    if state == "accepted":
        decision.merge(_accepted(case, order, request, now))
    return decision


def withdraw_request(case: Mapping[str, Any], *, party: str | None, actor: Actor, request_id: str,
                     now: datetime) -> Decision:
    """DSP-9: the author may withdraw a request until it is answered (or its window ends)."""
    request = find_request(case, request_id)
    if party != request["from_party"]:
        raise Forbidden(f"only the author of a request, the {request['from_party']}, may withdraw it",
                        rule="DSP-9", request_id=request_id)
    refuse_unless_open(request, now, "withdraw")
    prefix = f"requests.{request_id}"
    return Decision(
        set={f"{prefix}.state": "withdrawn", f"{prefix}.outcome": "withdrawn", f"{prefix}.closed_at": now},
        events=[("dispute.request_withdrawn", RequestWithdrawn(
            **_event_fields(case, request, actor), withdrawn_at=now), None)],
        cancel=[request["deadline_id"]] if request.get("deadline_id") else [],
        request_id=request_id,
    )


def expire_request(case: Mapping[str, Any], order: Mapping[str, Any], *, request_id: str, deadline: Deadline,
                   now: datetime) -> Decision:
    """DSP-10: the window ended in silence; the outcome the policy set at opening happens,
    and both parties are told what and why. Nothing, if the request was answered or
    withdrawn first: an answer and its deadline give one outcome."""
    request = (case.get("requests") or {}).get(request_id)
    if request is None or request["state"] != OPEN or request.get("deadline_id") != deadline.id:
        return Decision()
    if order["state"] in FINAL_STATES:
        return _closed(case, [request], order["state"], now)
    outcome = request["silence_outcome"]
    prefix = f"requests.{request_id}"
    decision = Decision(
        set={f"{prefix}.state": "expired", f"{prefix}.outcome": outcome, f"{prefix}.closed_at": now},
        events=[("dispute.request_expired", RequestExpired(
            **_event_fields(case, request, RESOLUTION_CENTER), outcome=outcome, silent_party=request["to_party"],
            answer_by=request["answer_by"], expired_at=now, explanation=silence_explanation(request)), None)],
        request_id=request_id,
    )
    if outcome == "accepted":
        decision.merge(_accepted(case, order, request, now))
    return decision


def close_open_requests(case: Mapping[str, Any], order_state: str, now: datetime) -> Decision:
    """The order completed or was cancelled: its open requests lapse (DSP-9)."""
    return _closed(case, [r for r in requests_of(case) if r["state"] == OPEN], order_state, now)


def _closed(case: Mapping[str, Any], requests: list[dict[str, Any]], order_state: str, now: datetime) -> Decision:
    cause = "order_completed" if order_state == "completed" else "order_cancelled"
    decision = Decision()
    for request in requests:
        prefix = f"requests.{request['id']}"
        decision.set.update({f"{prefix}.state": "closed", f"{prefix}.outcome": cause, f"{prefix}.closed_at": now})
        decision.events.append(("dispute.request_closed", RequestClosed(
            **_event_fields(case, request, RESOLUTION_CENTER), cause=cause, closed_at=now), None))
        if request.get("deadline_id"):
            decision.cancel.append(request["deadline_id"])
    return decision


def _accepted(case: Mapping[str, Any], order: Mapping[str, Any], request: Mapping[str, Any],
              now: datetime) -> Decision:
    """What an accepted request causes, by the buyer's word or by silence.

    A partial refund is the resolution center's own fact (DSP-3): `dispute.refund_issued`
    for payments; the order goes on untouched. Every other change is the order's, so it
    is a command the core applies (it publishes the order event): staged in this same
    write with a deterministic id, it reaches the core even if this process dies right
    after the write, and the core applies it once (the id is its idempotency key)."""
    kind, request_id = request["kind"], request["id"]
    prefix = f"requests.{request_id}"
    terms = request["terms"]
    if kind == "partial_refund":
        if case.get("refund_accepted"):
            raise RuleViolation("a partial refund was already accepted on this order", rule="DSP-3")
        refund_id = _event_id(case, request, "refund")
        return Decision(
            set={"refund_accepted": request_id, f"{prefix}.refund_id": refund_id},
            events=[("dispute.refund_issued", RefundIssued(
                **_event_fields(case, request, RESOLUTION_CENTER), amount=money(terms["amount"]),
                accepted_at=now), refund_id)],
        )
    command: tuple[str, MessageData] | None = None
    base = {"order_id": case["_id"], "actor": RESOLUTION_CENTER, "request_id": request_id}
    if kind in ("seller_cancel_request", "buyer_cancel_request"):
        # DSP-4, DSP-6: cancelled by mutual agreement, asked by the request's author. The
        # buyer's confidential reason stays here: the order event carries no reason.
        command = ("command.order.cancel_by_agreement",
                   CancelByAgreement(**base, requested_by=request["from_party"], rule=request["rule"]))
    elif kind == "extension_request":
        command = ("command.order.extend_delivery", ExtendDelivery(**base, days=terms["days"]))
    elif kind == "extra_offer":
        price = Decimal(terms["price"]["amount"])
        command = ("command.order.amend", AmendOrder(
            **base, added_revisions=terms["revisions"], added_days=terms["days"],
            added_price=money(terms["price"]) if price > 0 else None))
    if command is None:  # an update request asks for information: nothing changes
        return Decision()
    command_id = _event_id(case, request, "order-change")
    return Decision(set={f"{prefix}.order_change": {"type": command[0], "id": command_id}},
                    commands=[(command[0], command[1], command_id)])


# ---------------------------------------------------------------- what each party sees


def _human(window: timedelta) -> str:
    """48 h, 5 days, 30 min: as the help articles write windows."""
    seconds = int(window.total_seconds())
    if seconds % 86400 == 0 and seconds > 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def silence_effect(request: Mapping[str, Any]) -> str:
    """What silence does to this request, in words (DSP-10)."""
    outcome, kind = request.get("silence_outcome"), request["kind"]
    if outcome == "accepted":
        return {
            "partial_refund": "the refund is issued",
            "seller_cancel_request": "the order is cancelled by mutual agreement",
            "buyer_cancel_request": "the order is cancelled by mutual agreement",
            "extension_request": f"the extension is accepted: the due date moves by {request['terms'].get('days')} "
                                 "day(s)",
            "extra_offer": "the offer is accepted and the order is amended",
            "update_request": "the request is closed",
        }[kind]
    if outcome == "declined":
        return "the request is declined and the order goes on unchanged"
    if outcome == "unanswered":
        return f"the request is recorded as left unanswered by the {request['to_party']}"
    return "nothing: the request stays open until it is answered or withdrawn"


def silence_explanation(request: Mapping[str, Any]) -> str:
    window = _human(request["answer_by"] - request["opened_at"])
    return (f"The {request['to_party']} did not answer the {request['from_party']}'s "
            f"{KINDS[request['kind']].noun} within {window} ({request['rule']}, DSP-10): "
            f"{silence_effect(request)}.")


def request_view(request: Mapping[str, Any], viewer: str) -> dict[str, Any]:
    """A request as `viewer` (buyer, seller or support) may read it.

    DSP-2, DSP-6: the confidential part is shown to its author and to support only;
    the other party's answers never hold it, under any field name."""
    view = {key: request.get(key) for key in (
        "id", "kind", "rule", "from_party", "to_party", "state", "opened_at", "answer_by", "terms", "answer",
        "outcome", "closed_at", "order_change", "refund_id")}
    if viewer in (request["from_party"], "support"):
        view["confidential"] = dict(request.get("confidential") or {})
    view["silence_outcome"] = request.get("silence_outcome")
    view["if_silent"] = silence_effect(request) if request["state"] == OPEN else None
    if request["state"] != OPEN:
        view["you_may"] = []
    elif viewer == request["to_party"]:
        view["you_may"] = list(KINDS[request["kind"]].answers)
    elif viewer == request["from_party"]:
        view["you_may"] = ["withdraw"]
    else:
        view["you_may"] = []
    return view


def actions(case: Mapping[str, Any] | None, order: Mapping[str, Any], viewer: str,
            policy: DisputePolicy) -> list[dict[str, Any]]:
    """DSP-1: the actions of the viewer's role (support sees both roles'), each with
    whether it is available now and, if not, the rule that stops it."""
    listed = []
    for rule in KINDS.values():
        if viewer not in (rule.author, "support"):
            continue
        refused = None
        try:
            refuse_unless_author_may_open(case, order, rule.author, rule.kind)
        except (RuleViolation, Forbidden) as exc:
            refused = {"rule": exc.rule, "detail": exc.detail}
        window = window_of(policy, rule.kind)
        listed.append({
            "kind": rule.kind,
            "party": rule.author,
            "rule": rule.rule,
            "summary": rule.summary,
            "answer_window": iso_duration(window),
            "silence_outcome": silence_outcome_of(policy, rule.kind) if window else None,
            "available": refused is None,
            "refused": refused,
        })
    return listed
