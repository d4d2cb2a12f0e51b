"""The resolution center of each order: one case document, one write path.

An order's case (`disputes_cases`, `_id` = order id) holds every request made on
the order, keyed by request id, its history (the events it published, in order)
and whether a partial refund was accepted. Everything that decides on requests
(an HTTP call, an answer window's deadline, an order that ended) reads the case
by `_id`, decides with `rules`, and writes the change, its history entries, its
events, its commands to the core and its deadlines in one update guarded by the
case's `_version` (and by the message id or Idempotency-Key in `_applied`). So
DSP-9's "one open request of each kind", DSP-3's "no refund after an accepted
one", and "an answer and its deadline give one outcome" hold without
transactions: two deciders on one order cannot both win the guard.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog
from pymongo.errors import DuplicateKeyError

from core.errors import Conflict, InvalidInput
from core.http.auth import Principal
from core.locks import KeyedLocks
from core.messages import Actor, Envelope, MessageData, make_envelope
from core.outbox import Effect
from core.scheduler import Deadline
from core.store import update_guarded
from plugins.disputes import rules
from plugins.disputes.rules import OPEN, Decision

log = structlog.get_logger("rescenter.disputes")

CASES = "disputes_cases"
ATTEMPTS = 8
_COMMON = {"order_id", "buyer_id", "seller_id", "actor", "rule", "request_id"}


class ResolutionCenter:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.cases = services.store.collection(CASES)
        self.policy = services.settings.policy.disputes
        # One decider per order in this process: the version guard would refuse the
        # others anyway; waiting here spares them a useless read and retry.
        self._writing = KeyedLocks()

    # ------------------------------------------------------------ queries

    async def overview(self, order_id: str, principal: Principal) -> dict[str, Any]:
        """DSP-1: the caller's actions, the open requests with their deadlines and what
        silence will do, and the whole history, as the caller's role may see them."""
        order = await self._visible_order(order_id, principal)
        viewer = rules.party_of(order, principal.id) or "support"
        case = await self.cases.find_one({"_id": order_id})
        requests = rules.requests_of(case)
        return {
            "order_id": order_id,
            "order_state": order["state"],
            "viewer": viewer,
            "actions": rules.actions(case, order, viewer, self.policy),
            "open_requests": [rules.request_view(r, viewer) for r in requests if r["state"] == OPEN],
            "requests": [rules.request_view(r, viewer) for r in requests],
            "history": (case or {}).get("timeline", []),
            "refund_accepted": bool(case and case.get("refund_accepted")),
        }

    async def request(self, order_id: str, request_id: str, principal: Principal) -> dict[str, Any]:
        order = await self._visible_order(order_id, principal)
        case = await self.cases.find_one({"_id": order_id})
        return rules.request_view(rules.find_request(case, request_id),
                                  rules.party_of(order, principal.id) or "support")

    # ------------------------------------------------------------ commands (HTTP)

    async def open(self, order_id: str, principal: Principal, kind: str, fields: Mapping[str, Any], *,
                   idempotency_key: str | None = None) -> dict[str, Any]:
        order = await self._visible_order(order_id, principal)
        party = rules.party_of(order, principal.id)
        actor = _actor(principal, party)
        fingerprint = _fingerprint(kind, fields)
        request_id = _request_id(order_id, idempotency_key)
        existing = await self.cases.find_one({"_id": order_id})
        if request_id not in (existing or {}).get("requests", {}):
            # Refuse before creating anything; the same checks run again under the guard.
            rules.refuse_unless_author_may_open(existing, order, party, kind)
        if existing is None:
            await self._create_case(order)

        def decide(case: dict[str, Any], now: datetime) -> Decision:
            if request_id in case.get("requests", {}):
                return Decision(request_id=request_id)  # the same Idempotency-Key again
            return rules.open_request(case, order, party=party, actor=actor, kind=kind, fields=fields,
                                      request_id=request_id, fingerprint=fingerprint, now=now,
                                      policy=self.policy)

        written, _ = await self._write(order_id, decide, message_id=idempotency_key)
        request = (written or {}).get("requests", {}).get(request_id)
        if request is None or request["fingerprint"] != fingerprint:
            raise InvalidInput("this Idempotency-Key was used for a different request", order_id=order_id)
        log.info("request opened", order_id=order_id, dispute_request_id=request_id, kind=kind, by=party,
                 answer_by=request["answer_by"])
        return rules.request_view(request, party or "support")

    async def answer(self, order_id: str, request_id: str, principal: Principal, answer: str,
                     message: str | None, *, idempotency_key: str | None = None) -> dict[str, Any]:
        order = await self._visible_order(order_id, principal)
        party = rules.party_of(order, principal.id)
        actor = _actor(principal, party)

        def decide(case: dict[str, Any], now: datetime) -> Decision:
            return rules.answer_request(case, order, party=party, actor=actor, request_id=request_id,
                                        answer=answer, message=message, now=now)

        written, decision = await self._write(order_id, decide, message_id=idempotency_key)
        request = rules.find_request(written, request_id)
        if decision is not None:
            log.info("request answered", order_id=order_id, dispute_request_id=request_id, kind=request["kind"],
                     answer=request["state"], order_change=request.get("order_change"))
        return rules.request_view(request, party or "support")

    async def withdraw(self, order_id: str, request_id: str, principal: Principal, *,
                       idempotency_key: str | None = None) -> dict[str, Any]:
        order = await self._visible_order(order_id, principal)
        party = rules.party_of(order, principal.id)
        actor = _actor(principal, party)

        def decide(case: dict[str, Any], now: datetime) -> Decision:
            return rules.withdraw_request(case, party=party, actor=actor, request_id=request_id, now=now)

        written, decision = await self._write(order_id, decide, message_id=idempotency_key)
        request = rules.find_request(written, request_id)
        if decision is not None:
            log.info("request withdrawn", order_id=order_id, dispute_request_id=request_id, kind=request["kind"])
        return rules.request_view(request, party or "support")

    # ------------------------------------------------------------ deadlines and events

    async def on_answer_window(self, deadline: Deadline) -> None:
        """DSP-10: a request's window ended. Idempotent on the deadline id (it may fire
        again after a crash); a request answered or withdrawn meanwhile stays as it is."""
        order = await self.services.orders.get(deadline.subject)
        request_id = deadline.payload["request_id"]

        def decide(case: dict[str, Any], now: datetime) -> Decision:
            return rules.expire_request(case, order, request_id=request_id, deadline=deadline, now=now)

        written, decision = await self._write(deadline.subject, decide, message_id=deadline.id)
        if decision is not None and not decision.empty and written is not None:
            request = written["requests"][request_id]
            log.info("answer window ended in silence", order_id=deadline.subject, dispute_request_id=request_id,
                     kind=request["kind"], outcome=request["outcome"], silent_party=request["to_party"])

    async def on_order_final(self, envelope: Envelope, data: Any) -> None:
        """The order completed or was cancelled: its open requests lapse (DSP-9)."""
        def decide(case: dict[str, Any], now: datetime) -> Decision:
            return rules.close_open_requests(case, data.state, now)

        _, decision = await self._write(data.order_id, decide, message_id=envelope.id)
        if decision is not None and decision.events:
            log.info("open requests closed with their order", order_id=data.order_id, order_state=data.state,
                     closed=len(decision.events))

    # ------------------------------------------------------------ the write

    async def _visible_order(self, order_id: str, principal: Principal) -> dict[str, Any]:
        """DSP-1: the order's parties and staff reach its resolution center; anyone else
        gets the same 404 as for an order that does not exist."""
        return await self.services.orders.get(order_id, principal.actor())

    async def _create_case(self, order: Mapping[str, Any]) -> None:
        try:
            await self.cases.insert_one({
                "_id": order["_id"], "buyer_id": order["buyer_id"], "seller_id": order["seller_id"],
                "requests": {}, "timeline": [], "refund_accepted": None,
                "_version": 0, "_applied": [], "_outbox": [],
            })
        except DuplicateKeyError:
            pass  # another call opened the first request at the same moment

    async def _write(self, order_id: str, decide: Callable[[dict[str, Any], datetime], Decision], *,
                     message_id: str | None = None) -> tuple[dict[str, Any] | None, Decision | None]:
        """Decide on the case and write the decision with its effects, once.

        Returns the case as written and the decision; the decision is None when the
        message (or Idempotency-Key) was applied before, and the case None when the
        order has no case (nothing was ever asked on it)."""
        async with self._writing.hold(order_id):
            for _ in range(ATTEMPTS):
                # Read for every final order (DSP-9): concurrent handlers share the round trip.
                case = await self.services.store.batcher(CASES).find_by_id(order_id)
                if case is None:
                    return None, None
                if message_id is not None and message_id in case.get("_applied", []):
                    return case, None
                now = self.services.clock.now()
                decision = decide(case, now)
                if decision.empty and message_id is None:
                    return case, decision
                # An empty decision with a message id is still written: the message stays a no-op.
                update = self._update(case, decision, now)
                written = await update_guarded(self.cases, order_id, update, version=case["_version"],
                                               message_id=message_id)
                if written is None:
                    continue  # another decider won the guard: decide again on what it wrote
                await self._flush(written)
                return written, decision
        raise Conflict(f"the resolution center of order {order_id!r} is changing too fast; try again",
                       order_id=order_id)

    def _update(self, case: Mapping[str, Any], decision: Decision, now: datetime) -> dict[str, Any]:
        update: dict[str, Any] = {}
        if decision.set:
            update["$set"] = dict(decision.set)
        effects: list[Effect] = []
        entries: list[dict[str, Any]] = []
        seq = len(case.get("timeline", []))
        for type_, data, event_id in decision.events:
            envelope = make_envelope(type_, data, subject=case["_id"], time=now, id=event_id)
            effects.append(Effect.publish(envelope))
            entries.append(_history_entry(seq + len(entries), type_, envelope.id, now, data))
        for type_, command, command_id in decision.commands:
            effects.append(Effect.publish(make_envelope(type_, command, subject=case["_id"], time=now,
                                                        id=command_id)))
        effects += [Effect.cancel(deadline_id) for deadline_id in decision.cancel]
        effects += [Effect.schedule(deadline) for deadline in decision.schedule]
        if entries:
            update.setdefault("$push", {})["timeline"] = {"$each": entries}
        self.services.outbox.stage(update, effects)
        return update

    async def _flush(self, case: dict[str, Any]) -> None:
        """The decision is stored: if publishing fails now, the outbox sweeper publishes later."""
        try:
            await self.services.outbox.flush(CASES, case)
        except Exception as exc:
            log.warning("publish deferred to the outbox sweeper", order_id=case["_id"], error=repr(exc))


def _actor(principal: Principal, party: str | None) -> Actor:
    return Actor(id=principal.id, role=party) if party else principal.actor()  # type: ignore[arg-type]


def _request_id(order_id: str, idempotency_key: str | None) -> str:
    """A retried call with the same Idempotency-Key names the same request."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{order_id}\n{idempotency_key}".encode()).hexdigest()[:32]


def _fingerprint(kind: str, fields: Mapping[str, Any]) -> str:
    body = json.dumps({"kind": kind, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _history_entry(seq: int, type_: str, event_id: str, at: datetime, data: MessageData) -> dict[str, Any]:
    """The history both parties read is made of the published events: they carry no
    confidential reason, so neither does the history."""
    return {
        "seq": seq,
        "type": type_,
        "event_id": event_id,
        "at": at,
        "request_id": getattr(data, "request_id", None),
        "actor": data.actor.model_dump() if hasattr(data, "actor") else None,
        "rule": getattr(data, "rule", None),
        "details": data.model_dump(mode="json", exclude_none=True, exclude=_COMMON),
    }


_centers: dict[int, ResolutionCenter] = {}


def center_for(services: Any) -> ResolutionCenter:
    """One resolution center per running instance (its routes, consumers and deadlines
    share it, and its per-order lock)."""
    center = _centers.get(id(services))
    if center is None or center.services is not services:
        center = _centers[id(services)] = ResolutionCenter(services)
    return center
