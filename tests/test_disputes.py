"""The resolution center (DSP-1 to DSP-10) over HTTP and the bus, against real
RabbitMQ and the MongoDB-wire server, with the test clock moved across every
answer window: one second before, and exactly at, the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest_asyncio

from core.errors import RuleViolation
from core.http.auth import Principal
from core.messages import Envelope
from core.scheduler import Deadline
from core.service import Service
from plugins.disputes.center import CASES, ResolutionCenter, center_for
from tests.harness import ORDER, Client, Harness
from tests.support import eventually, problem

ONE_SECOND = timedelta(seconds=1)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared() -> AsyncIterator[tuple[Harness, Service]]:
    """One instance for the tests of this module that do not need their own settings.
    They share the test clock: each test works with its own orders and parties, and
    moves the clock relative to the instants its requests hold."""
    async with Harness() as h:
        yield h, await h.start_instance()


@dataclass
class Case:
    h: Harness
    service: Service
    order_id: str
    buyer: Client
    seller: Client
    support: Client
    admin: Client
    stranger: Client

    def path(self, suffix: str = "") -> str:
        return f"/orders/{self.order_id}/resolution{suffix}"

    async def open(self, client: Client, body: dict[str, Any], *, expect: int | None = 201,
                   key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else None
        return await client.post(self.path("/requests"), body, expect=expect, headers=headers)

    async def answer(self, client: Client, request_id: str, answer: str, message: str | None = None, *,
                     expect: int | None = 200, key: str | None = None) -> dict[str, Any]:
        body = {"answer": answer} if message is None else {"answer": answer, "message": message}
        headers = {"Idempotency-Key": key} if key else None
        return await client.post(self.path(f"/requests/{request_id}/answer"), body, expect=expect,
                                 headers=headers)

    async def withdraw(self, client: Client, request_id: str, *, expect: int | None = 200) -> dict[str, Any]:
        return await client.post(self.path(f"/requests/{request_id}/withdrawal"), expect=expect)

    async def overview(self, client: Client) -> dict[str, Any]:
        return await client.get(self.path(), expect=200)

    async def request(self, client: Client, request_id: str) -> dict[str, Any]:
        return await client.get(self.path(f"/requests/{request_id}"), expect=200)

    async def order(self) -> dict[str, Any]:
        return await self.support.get(f"/orders/{self.order_id}", expect=200)

    async def advance_to(self, instant: datetime | str) -> list[dict[str, Any]]:
        """Move the shared test clock; the deadlines of this order that fired on the way."""
        at = instant if isinstance(instant, str) else instant.isoformat()
        moved = await self.admin.post("/admin/clock/advance", {"to": at}, expect=200)
        return [f for f in moved["fired"] if f["id"].startswith(f"disputes/{self.order_id}/")]

    async def events(self, type_: str, count: int = 1) -> list[Envelope]:
        """Wait for `count` distinct events of this order (delivery is at least once)."""
        await eventually(lambda: len(self.published(type_)) >= count, what=f"{count} {type_}")
        return self.published(type_)

    def published(self, type_: str) -> list[Envelope]:
        return distinct(self.h.probe.of_type(type_, self.order_id))


def distinct(messages: list[Envelope]) -> list[Envelope]:
    """One per CloudEvents id: the outbox publishes at least once, consumers dedupe on the id."""
    return list({m.id: m for m in messages}.values())


async def new_case(h: Harness, service: Service, tag: str, *, started: bool = True, price: str = "120.00") -> Case:
    buyer = h.client(service, f"buyer-{tag}", "buyer")
    case = Case(h, service, "", buyer, h.client(service, f"seller-{tag}", "seller"),
                h.client(service, "support-1", "support"), h.client(service, "admin-1", "admin"),
                h.client(service, f"stranger-{tag}", "buyer", "seller"))
    order = await buyer.post("/orders", {**ORDER, "seller_id": f"seller-{tag}",
                                         "price": {"amount": price, "currency": "EUR"}}, expect=201)
    case.order_id = order["id"]
    if started:
        await buyer.post(f"/orders/{case.order_id}/requirements", {"requirements": "a logo"}, expect=200)
    return case


def refund(amount: str = "30.00", reason: str = "compensation_for_delay", currency: str = "EUR") -> dict[str, Any]:
    return {"kind": "partial_refund", "amount": {"amount": amount, "currency": currency},
            "explanation": "Part of the logo set is missing; here is a refund for it.", "reason": reason}


SELLER_CANCEL = {"kind": "seller_cancel_request", "reason": "The brief changed beyond this gig.",
                 "note": "Sorry about this."}
UPDATE = {"kind": "update_request", "explanation": "Where are we with the draft?"}
BUYER_CANCEL = {"kind": "buyer_cancel_request", "feedback": "The drafts do not follow the brief.",
                "confidential_reason": "I found a cheaper seller", "explanation": "Three drafts off brief.",
                "evidence": ["draft-1.png", "message-42"]}


def extension(days: int = 3) -> dict[str, Any]:
    return {"kind": "extension_request", "days": days, "reason": "The client asked for more variants."}


def extra_offer(revisions: int = 2, days: int = 1, price: str | None = "25.50") -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "extra_offer", "description": "Two more rounds and a favicon.",
                            "revisions": revisions, "days": days}
    if price is not None:
        body["price"] = {"amount": price, "currency": "EUR"}
    return body


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


# ---------------------------------------------------------------- DSP-1


async def test_DSP_1_each_party_sees_the_actions_of_its_role_and_support_sees_all(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp1-actions")
    seller_view = await case.overview(case.seller)
    buyer_view = await case.overview(case.buyer)
    support_view = await case.overview(case.support)

    assert seller_view["viewer"] == "seller" and buyer_view["viewer"] == "buyer" and support_view["viewer"] == "support"
    assert [a["kind"] for a in seller_view["actions"]] == [
        "partial_refund", "seller_cancel_request", "extension_request", "extra_offer"]
    assert [a["kind"] for a in buyer_view["actions"]] == ["update_request", "buyer_cancel_request"]
    assert {(a["kind"], a["party"]) for a in support_view["actions"]} == {
        (a["kind"], a["party"]) for a in seller_view["actions"] + buyer_view["actions"]}
    assert all(a["available"] for a in seller_view["actions"] + buyer_view["actions"])
    windows = {a["kind"]: (a["answer_window"], a["silence_outcome"]) for a in support_view["actions"]}
    assert windows == {"partial_refund": (None, None), "seller_cancel_request": ("P2D", "accepted"),
                       "extension_request": ("P2D", "accepted"), "extra_offer": ("P2D", "declined"),
                       "update_request": ("P2D", "unanswered"), "buyer_cancel_request": ("P2D", "accepted")}

    # Anyone else gets the answer an order that does not exist gets: nothing leaks.
    hidden = problem(case.stranger, await case.stranger.get(case.path()), 404)
    missing = problem(case.stranger, await case.stranger.get("/orders/no-such-order/resolution"), 404)
    assert hidden["detail"].replace(case.order_id, "X") == missing["detail"].replace("no-such-order", "X")
    problem(case.stranger, await case.open(case.stranger, UPDATE, expect=None), 404)


async def test_DSP_1_a_seller_using_a_buyers_action_and_the_reverse_are_refused(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp1-wrong-role")
    for client, body, party in ((case.seller, UPDATE, "seller"), (case.seller, BUYER_CANCEL, "seller"),
                                (case.buyer, refund(), "buyer"), (case.buyer, extension(), "buyer"),
                                (case.buyer, extra_offer(), "buyer"), (case.buyer, SELLER_CANCEL, "buyer")):
        refused = problem(client, await case.open(client, body, expect=None), 403, rule="DSP-1")
        assert f"a {party} cannot" in refused["detail"]
    refused = problem(case.support, await case.open(case.support, UPDATE, expect=None), 403, rule="DSP-1")
    assert "support reads it" in refused["detail"]

    assert (await case.overview(case.support))["requests"] == []
    await h.probe.settle(0.2)
    assert case.published("dispute.request_opened") == []


async def test_DSP_1_only_the_other_party_answers_a_request(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp1-answer")
    request = await case.open(case.seller, extension())
    assert request["you_may"] == ["withdraw"]
    assert (await case.request(case.buyer, request["id"]))["you_may"] == ["accept", "decline"]

    problem(case.seller, await case.answer(case.seller, request["id"], "accept", expect=None), 403, rule="DSP-1")
    problem(case.support, await case.answer(case.support, request["id"], "accept", expect=None), 403, rule="DSP-1")
    problem(case.stranger, await case.answer(case.stranger, request["id"], "accept", expect=None), 404)
    assert (await case.request(case.support, request["id"]))["state"] == "open"


# ---------------------------------------------------------------- DSP-2, DSP-3


async def test_DSP_2_refund_over_60_percent_of_the_original_price_is_refused(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp2-cap")
    over = problem(case.seller, await case.open(case.seller, refund("72.01"), expect=None), 409, rule="DSP-2")
    assert over["max_amount"] == {"amount": "72.00", "currency": "EUR"} and "60 %" in over["detail"]
    problem(case.seller, await case.open(case.seller, refund("0.00"), expect=None), 409, rule="DSP-2")
    problem(case.seller, await case.open(case.seller, refund(currency="USD"), expect=None), 409, rule="DSP-2")
    # Malformed input: an amount is ASCII digits with two decimal places at most (no sign),
    # a reason from the list, an explanation.
    problem(case.seller, await case.open(case.seller, refund("-5.00"), expect=None), 422)
    problem(case.seller, await case.open(case.seller, refund("10.005"), expect=None), 422)
    problem(case.seller, await case.open(case.seller, refund(reason="because"), expect=None), 422)
    problem(case.seller, await case.open(case.seller, {**refund(), "explanation": " "}, expect=None), 422)
    problem(case.seller, await case.open(case.seller, {**refund(), "extra": 1}, expect=None), 422)
    await h.probe.settle(0.2)
    assert case.published("dispute.request_opened") == []

    offered = await case.open(case.seller, refund("72.00"))  # exactly 60 %
    assert offered["terms"]["amount"] == {"amount": "72.00", "currency": "EUR"}
    assert offered["answer_by"] is None and offered["if_silent"].startswith("nothing")
    [opened] = await case.events("dispute.request_opened")
    assert opened.data["terms"] == {"amount": {"amount": "72.00", "currency": "EUR"}}
    assert "answer_by" not in opened.data and opened.data["rule"] == "DSP-2"


async def test_DSP_3_accepted_refund_is_issued_for_payments_and_the_order_goes_on(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp3-accept", price="99.99")
    offered = await case.open(case.seller, refund("59.99"))  # 60 % of 99.99 is 59.994
    accepted = await case.answer(case.buyer, offered["id"], "accept")
    assert accepted["state"] == "accepted" and accepted["answer"]["answer"] == "accepted"

    [issued] = await case.events("dispute.refund_issued")
    assert issued.data["amount"] == {"amount": "59.99", "currency": "EUR"}
    assert (issued.data["request_id"], issued.data["from_party"], issued.data["to_party"]) == (
        offered["id"], "seller", "buyer")
    assert issued.data["buyer_id"] == "buyer-dsp3-accept" and issued.data["seller_id"] == "seller-dsp3-accept"
    [answered] = await case.events("dispute.request_answered")
    assert answered.data["answer"] == "accepted"
    order = await case.order()
    assert order["state"] == "in_progress" and order["price"] == {"amount": "99.99", "currency": "EUR"}

    again = problem(case.seller, await case.open(case.seller, refund("1.00"), expect=None), 409, rule="DSP-3")
    assert again["accepted_request_id"] == offered["id"]
    action = next(a for a in (await case.overview(case.seller))["actions"] if a["kind"] == "partial_refund")
    assert action["available"] is False and action["refused"]["rule"] == "DSP-3"
    await h.probe.settle(0.2)
    assert len(case.published("dispute.refund_issued")) == 1
    assert case.published("order.cancelled") == []


async def test_DSP_3_a_declined_refund_leaves_room_for_another_offer(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp3-decline")
    first = await case.open(case.seller, refund("20.00"))
    problem(case.buyer, await case.answer(case.buyer, first["id"], "reply", "ok", expect=None), 422, rule="DSP-2")
    declined = await case.answer(case.buyer, first["id"], "decline")
    assert declined["state"] == "declined"
    second = await case.open(case.seller, refund("25.00"))
    assert second["state"] == "open"
    await h.probe.settle(0.2)
    assert case.published("dispute.refund_issued") == []


# ---------------------------------------------------------------- DSP-4


async def test_DSP_4_buyer_accepts_the_sellers_cancellation_request(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp4-accept")
    request = await case.open(case.seller, SELLER_CANCEL)
    seen = await case.request(case.buyer, request["id"])
    assert seen["terms"] == {"reason": SELLER_CANCEL["reason"], "note": SELLER_CANCEL["note"]}
    accepted = await case.answer(case.buyer, request["id"], "accept")
    assert accepted["order_change"]["type"] == "command.order.cancel_by_agreement"

    [cancelled] = await case.events("order.cancelled")
    assert (cancelled.data["cause"], cancelled.data["requested_by"], cancelled.data["rule"]) == (
        "mutual_agreement", "seller", "DSP-4")
    assert cancelled.data["request_id"] == request["id"]
    assert (await case.order())["state"] == "cancelled"


async def test_DSP_4_buyer_declines_and_the_order_goes_on(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp4-decline")
    request = await case.open(case.seller, SELLER_CANCEL)
    await case.answer(case.buyer, request["id"], "decline")
    await case.advance_to(at(request["answer_by"]) + timedelta(hours=1))
    await h.probe.settle(0.2)
    assert case.published("order.cancelled") == [] and case.published("dispute.request_expired") == []
    assert (await case.order())["state"] in {"in_progress"}


async def test_DSP_4_silence_for_48_hours_cancels_by_mutual_agreement(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp4-silence")
    request = await case.open(case.seller, SELLER_CANCEL)
    answer_by = at(request["answer_by"])
    assert answer_by - at(request["opened_at"]) == timedelta(hours=48)
    assert request["if_silent"] == "the order is cancelled by mutual agreement"

    assert await case.advance_to(answer_by - ONE_SECOND) == []
    assert (await case.request(case.buyer, request["id"]))["state"] == "open"
    assert (await case.order())["state"] == "in_progress"
    fired = await case.advance_to(answer_by)
    assert [f["kind"] for f in fired] == ["answer_window"]

    [expired] = await case.events("dispute.request_expired")
    assert (expired.data["outcome"], expired.data["silent_party"], expired.data["rule"]) == (
        "accepted", "buyer", "DSP-4")
    assert "48 h" in expired.data["explanation"] and "cancelled by mutual agreement" in expired.data["explanation"]
    [cancelled] = await case.events("order.cancelled")
    assert (cancelled.data["cause"], cancelled.data["requested_by"]) == ("mutual_agreement", "seller")
    view = await case.request(case.seller, request["id"])
    assert (view["state"], view["outcome"]) == ("expired", "accepted")


# ---------------------------------------------------------------- DSP-5


async def test_DSP_5_seller_answers_an_update_request_with_the_information(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp5-reply")
    request = await case.open(case.buyer, UPDATE)
    assert (await case.request(case.seller, request["id"]))["you_may"] == ["reply"]
    problem(case.seller, await case.answer(case.seller, request["id"], "accept", expect=None), 422, rule="DSP-5")
    problem(case.seller, await case.answer(case.seller, request["id"], "reply", expect=None), 422, rule="DSP-5")
    replied = await case.answer(case.seller, request["id"], "reply", "The first draft comes tomorrow.")
    assert replied["answer"]["message"] == "The first draft comes tomorrow."

    [answered] = await case.events("dispute.request_answered")
    assert (answered.data["answer"], answered.data["from_party"], answered.data["to_party"]) == (
        "replied", "buyer", "seller")
    assert (await case.request(case.buyer, request["id"]))["answer"]["message"] == "The first draft comes tomorrow."


async def test_DSP_5_silence_is_recorded_against_the_seller(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp5-silence")
    request = await case.open(case.buyer, UPDATE)
    answer_by = at(request["answer_by"])
    assert answer_by - at(request["opened_at"]) == timedelta(hours=48)

    assert await case.advance_to(answer_by - ONE_SECOND) == []
    assert (await case.request(case.buyer, request["id"]))["state"] == "open"
    await case.advance_to(answer_by)
    [expired] = await case.events("dispute.request_expired")
    assert (expired.data["kind"], expired.data["outcome"], expired.data["silent_party"]) == (
        "update_request", "unanswered", "seller")
    view = await case.request(case.buyer, request["id"])
    assert (view["state"], view["outcome"]) == ("expired", "unanswered")
    assert (await case.order())["state"] == "in_progress"


# ---------------------------------------------------------------- DSP-6


async def test_DSP_6_a_buyer_must_justify_a_cancellation_with_evidence(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp6-evidence")
    for evidence in ([], ["  "]):
        refused = await case.open(case.buyer, {**BUYER_CANCEL, "evidence": evidence}, expect=None)
        problem(case.buyer, refused, 409, rule="DSP-6")
    problem(case.buyer, await case.open(case.buyer, {k: v for k, v in BUYER_CANCEL.items() if k != "feedback"},
                                        expect=None), 422)
    request = await case.open(case.buyer, BUYER_CANCEL)
    assert request["confidential"] == {"cancellation_reason": BUYER_CANCEL["confidential_reason"]}


async def test_DSP_6_seller_accepts_and_the_order_is_cancelled_by_agreement(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp6-accept")
    request = await case.open(case.buyer, BUYER_CANCEL)
    seen = await case.request(case.seller, request["id"])
    assert seen["terms"]["feedback"] == BUYER_CANCEL["feedback"] and seen["terms"]["evidence"] == BUYER_CANCEL[
        "evidence"]
    assert "confidential" not in seen
    await case.answer(case.seller, request["id"], "accept")
    [cancelled] = await case.events("order.cancelled")
    assert (cancelled.data["cause"], cancelled.data["requested_by"], cancelled.data["rule"]) == (
        "mutual_agreement", "buyer", "DSP-6")
    assert "reason" not in cancelled.data


async def test_MET_2_DSP_6_a_buyer_cancels_while_requirements_are_awaited_through_a_request(
        shared: tuple[Harness, Service]) -> None:
    """The documented path for MET-2's first exclusion: the buyer has no cancellation route of
    its own (support's is 403 for it); it asks the seller (DSP-6), the seller accepts (or stays
    silent 48 h), and the cancellation does not count in the seller's completion rate."""
    h, service = shared
    accepted = await new_case(h, service, "met2-accept", started=False)
    silent = await new_case(h, service, "met2-silence", started=False)
    await accepted.buyer.post(f"/orders/{accepted.order_id}/cancellation", {"reason": "changed my mind"},
                              expect=403)
    request = await accepted.open(accepted.buyer, BUYER_CANCEL)
    await accepted.answer(accepted.seller, request["id"], "accept")
    waited = await silent.open(silent.buyer, BUYER_CANCEL)
    await silent.advance_to(at(waited["answer_by"]))
    for case in (accepted, silent):
        [cancelled] = await case.events("order.cancelled")
        assert (cancelled.data["previous_state"], cancelled.data["requested_by"], cancelled.data["rule"]) == (
            "awaiting_requirements", "buyer", "DSP-6")
        seller_id = (await case.order())["seller_id"]

        async def excluded(case: Case = case, seller_id: str = seller_id) -> Any:
            figures = await case.seller.get(f"/sellers/{seller_id}/metrics", expect=200)
            lines = figures["completion_rate"]["orders"]
            return lines and (lines[0]["counted"], lines[0]["reason"], lines[0]["rule"])

        assert await eventually(excluded, what="the metrics' line") == (
            False, "buyer_cancelled_awaiting_requirements", "MET-2")


async def test_DSP_6_silence_for_48_hours_cancels_by_mutual_agreement(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp6-silence")
    request = await case.open(case.buyer, BUYER_CANCEL)
    answer_by = at(request["answer_by"])
    assert answer_by - at(request["opened_at"]) == timedelta(hours=48)
    assert await case.advance_to(answer_by - ONE_SECOND) == []
    await h.probe.settle(0.2)
    assert case.published("order.cancelled") == []
    await case.advance_to(answer_by)
    [expired] = await case.events("dispute.request_expired")
    assert (expired.data["outcome"], expired.data["silent_party"]) == ("accepted", "seller")
    [cancelled] = await case.events("order.cancelled")
    assert (cancelled.data["requested_by"], cancelled.data["rule"]) == ("buyer", "DSP-6")


# ---------------------------------------------------------------- DSP-7


async def test_DSP_7_silence_for_2_days_accepts_the_extension_and_the_due_date_moves(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp7-silence")
    due_at = at((await case.order())["due_at"])
    request = await case.open(case.seller, extension(4))
    answer_by = at(request["answer_by"])
    assert answer_by - at(request["opened_at"]) == timedelta(days=2)
    assert request["if_silent"] == "the extension is accepted: the due date moves by 4 day(s)"

    assert await case.advance_to(answer_by - ONE_SECOND) == []
    assert at((await case.order())["due_at"]) == due_at
    await case.advance_to(answer_by)
    [expired] = await case.events("dispute.request_expired")
    assert (expired.data["outcome"], expired.data["rule"]) == ("accepted", "DSP-7")
    [extended] = await case.events("order.delivery_extended")
    assert at(extended.data["due_at"]) == due_at + timedelta(days=4) and extended.data["request_id"] == request["id"]
    assert at((await case.order())["due_at"]) == due_at + timedelta(days=4)


async def test_DSP_7_buyer_accepts_or_declines_an_extension(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    accepting = await new_case(h, service, "dsp7-accept")
    declining = await new_case(h, service, "dsp7-decline")
    due_at = {c.order_id: at((await c.order())["due_at"]) for c in (accepting, declining)}
    problem(accepting.seller, await accepting.open(accepting.seller, extension(0), expect=None), 409, rule="DSP-7")
    accepted = await accepting.open(accepting.seller, extension(2))
    declined = await declining.open(declining.seller, extension(2))
    await accepting.answer(accepting.buyer, accepted["id"], "accept")
    await declining.answer(declining.buyer, declined["id"], "decline")

    [extended] = await accepting.events("order.delivery_extended")
    assert extended.data["days"] == 2 and extended.data["actor"] == {"id": "resolution-center", "role": "system"}
    assert at((await accepting.order())["due_at"]) == due_at[accepting.order_id] + timedelta(days=2)
    await declining.advance_to(at(declined["answer_by"]))
    await h.probe.settle(0.2)
    assert declining.published("order.delivery_extended") == []
    assert at((await declining.order())["due_at"]) == due_at[declining.order_id]


# ---------------------------------------------------------------- DSP-8


async def test_DSP_8_accepted_offer_amends_the_order_and_the_refund_cap_stays_on_the_original_price(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp8-accept")
    before = await case.order()
    offer = await case.open(case.seller, extra_offer(revisions=2, days=1, price="25.50"))
    [opened] = await case.events("dispute.request_opened")
    assert opened.data["terms"] == {"days": 1, "revisions": 2, "price": {"amount": "25.50", "currency": "EUR"}}
    await case.answer(case.buyer, offer["id"], "accept")

    [amended] = await case.events("order.amended")
    assert amended.data["price"] == {"amount": "145.50", "currency": "EUR"}
    assert (amended.data["added_revisions"], amended.data["added_days"]) == (2, 1)
    order = await case.order()
    assert order["price"] == {"amount": "145.50", "currency": "EUR"} and order["extra_revisions"] == 2
    assert at(order["due_at"]) == at(before["due_at"]) + timedelta(days=1)
    # DSP-2: 60 % of the original 120.00, not of the amended 145.50.
    problem(case.seller, await case.open(case.seller, refund("72.01"), expect=None), 409, rule="DSP-2")
    await case.open(case.seller, refund("72.00"))


async def test_DSP_8_an_offer_must_add_something_in_the_orders_currency(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp8-empty")
    problem(case.seller, await case.open(case.seller, extra_offer(0, 0, None), expect=None), 409, rule="DSP-8")
    problem(case.seller, await case.open(case.seller, extra_offer(0, 0, "0.00"), expect=None), 409, rule="DSP-8")
    problem(case.seller, await case.open(case.seller, extra_offer(-1, 2, None), expect=None), 409, rule="DSP-8")
    usd = {**extra_offer(), "price": {"amount": "5.00", "currency": "USD"}}
    problem(case.seller, await case.open(case.seller, usd, expect=None), 409, rule="DSP-8")
    free = await case.open(case.seller, extra_offer(revisions=1, days=0, price=None))
    assert free["terms"]["price"] == {"amount": "0.00", "currency": "EUR"}


async def test_DSP_8_silence_declines_the_offer_and_the_order_stays_as_it_was(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp8-silence")
    offer = await case.open(case.seller, extra_offer())
    answer_by = at(offer["answer_by"])
    assert answer_by - at(offer["opened_at"]) == timedelta(days=2)
    assert await case.advance_to(answer_by - ONE_SECOND) == []
    assert (await case.request(case.buyer, offer["id"]))["state"] == "open"
    await case.advance_to(answer_by)
    [expired] = await case.events("dispute.request_expired")
    assert (expired.data["outcome"], expired.data["silent_party"]) == ("declined", "buyer")
    await h.probe.settle(0.2)
    assert case.published("order.amended") == []
    assert (await case.order())["price"] == {"amount": "120.00", "currency": "EUR"}


# ---------------------------------------------------------------- DSP-9


async def test_DSP_9_one_open_request_of_each_kind_per_order(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp9-one")
    first = await case.open(case.seller, extension(2))
    again = problem(case.seller, await case.open(case.seller, extension(5), expect=None), 409, rule="DSP-9")
    assert again["request_id"] == first["id"]
    await case.open(case.seller, extra_offer())  # another kind is fine
    await case.open(case.buyer, UPDATE)  # and the other party's
    action = next(a for a in (await case.overview(case.seller))["actions"] if a["kind"] == "extension_request")
    assert action["available"] is False and action["refused"]["rule"] == "DSP-9"
    await case.withdraw(case.seller, first["id"])
    assert (await case.open(case.seller, extension(5)))["terms"]["days"] == 5
    assert len((await case.overview(case.buyer))["open_requests"]) == 3


async def test_DSP_9_the_author_may_withdraw_until_the_request_is_answered(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp9-withdraw")
    request = await case.open(case.seller, SELLER_CANCEL)
    problem(case.buyer, await case.withdraw(case.buyer, request["id"], expect=None), 403, rule="DSP-9")
    withdrawn = await case.withdraw(case.seller, request["id"])
    assert withdrawn["state"] == "withdrawn" and withdrawn["you_may"] == []
    [event] = await case.events("dispute.request_withdrawn")
    assert (event.data["from_party"], event.data["to_party"]) == ("seller", "buyer")
    problem(case.seller, await case.withdraw(case.seller, request["id"], expect=None), 409, rule="DSP-9")
    late = problem(case.buyer, await case.answer(case.buyer, request["id"], "accept", expect=None), 409, rule="DSP-9")
    assert "withdrew" in late["detail"]
    # Its deadline went with it: silence no longer cancels the order.
    assert await case.advance_to(at(request["answer_by"]) + ONE_SECOND) == []
    await h.probe.settle(0.2)
    assert case.published("dispute.request_expired") == [] and case.published("order.cancelled") == []

    answered = await case.open(case.seller, extension(1))
    await case.answer(case.buyer, answered["id"], "decline")
    problem(case.seller, await case.withdraw(case.seller, answered["id"], expect=None), 409, rule="DSP-9")


async def test_DSP_9_an_answer_one_second_before_the_deadline_counts_and_at_the_deadline_is_refused(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    in_time = await new_case(h, service, "dsp9-in-time")
    too_late = await new_case(h, service, "dsp9-too-late")
    early = await in_time.open(in_time.seller, extra_offer())
    late = await too_late.open(too_late.seller, extra_offer())
    assert early["answer_by"] == late["answer_by"]
    answer_by = at(early["answer_by"])

    await in_time.advance_to(answer_by - ONE_SECOND)
    await in_time.answer(in_time.buyer, early["id"], "accept")
    await too_late.advance_to(answer_by)
    refused = problem(too_late.buyer, await too_late.answer(too_late.buyer, late["id"], "accept", expect=None),
                      409, rule="DSP-9")
    assert "window ended" in refused["detail"]
    problem(too_late.seller, await too_late.withdraw(too_late.seller, late["id"], expect=None), 409, rule="DSP-9")

    await in_time.events("order.amended")
    [expired] = await too_late.events("dispute.request_expired")
    assert expired.data["outcome"] == "declined"
    await h.probe.settle(0.2)
    assert in_time.published("dispute.request_expired") == [] and too_late.published("order.amended") == []


async def test_DSP_9_no_request_on_a_final_order_and_open_requests_lapse_with_it(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp9-final")
    update = await case.open(case.buyer, UPDATE)
    offer = await case.open(case.seller, extra_offer())
    await case.seller.post(f"/orders/{case.order_id}/deliveries", {"message": "done"}, expect=200)
    await case.buyer.post(f"/orders/{case.order_id}/acceptance", expect=200)

    closed = await case.events("dispute.request_closed", count=2)
    assert {(e.data["request_id"], e.data["cause"]) for e in closed} == {
        (update["id"], "order_completed"), (offer["id"], "order_completed")}
    overview = await case.overview(case.buyer)
    assert overview["open_requests"] == [] and overview["order_state"] == "completed"
    assert all(not a["available"] and a["refused"]["rule"] == "DSP-9" for a in overview["actions"])
    refused = problem(case.buyer, await case.open(case.buyer, UPDATE, expect=None), 409, rule="DSP-9")
    assert "completed" in refused["detail"]
    problem(case.seller, await case.answer(case.seller, update["id"], "reply", "late", expect=None), 409,
            rule="DSP-9")
    # Their windows were cancelled: silence decides nothing on a completed order.
    assert await case.advance_to(at(offer["answer_by"]) + ONE_SECOND) == []
    # The order event delivered again changes nothing twice.
    cases = service.services.store.collection(CASES)
    version = (await cases.find_one({"_id": case.order_id}))["_version"]
    [completed] = case.published("order.completed")
    await h.publish(completed.type, completed.data, subject=case.order_id, id=completed.id)
    await h.probe.wait_for("order.completed", lambda m: m.id == completed.id, count=2)
    await h.probe.settle(0.3)
    assert (await cases.find_one({"_id": case.order_id}))["_version"] == version
    assert len(case.published("dispute.request_closed")) == 2


async def test_DSP_9_a_repeated_call_with_the_same_idempotency_key_changes_nothing_twice(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp9-idempotent")
    first = await case.open(case.seller, SELLER_CANCEL, key="open-1")
    second = await case.open(case.seller, SELLER_CANCEL, key="open-1")
    assert first == second
    problem(case.seller, await case.open(case.seller, extension(), key="open-1", expect=None), 422)
    accepted = await case.answer(case.buyer, first["id"], "accept", key="answer-1")
    assert accepted == await case.answer(case.buyer, first["id"], "accept", key="answer-1")
    # Without the key a second accept is a second answer, refused.
    problem(case.buyer, await case.answer(case.buyer, first["id"], "accept", expect=None), 409, rule="DSP-9")

    await case.events("order.cancelled")
    await h.probe.settle(0.3)
    for type_ in ("dispute.request_opened", "dispute.request_answered", "command.order.cancel_by_agreement",
                  "order.cancelled"):
        assert len(case.published(type_)) == 1, type_
    assert len((await case.overview(case.support))["requests"]) == 1


# ---------------------------------------------------------------- DSP-10


async def test_DSP_10_overview_gives_each_open_request_its_deadline_and_what_silence_will_do(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "dsp10-overview")
    for client, body in ((case.seller, refund()), (case.seller, SELLER_CANCEL), (case.seller, extension(2)),
                         (case.seller, extra_offer()), (case.buyer, UPDATE)):
        await case.open(client, body)
    overview = await case.overview(case.buyer)
    silence = {r["kind"]: (r["silence_outcome"], r["if_silent"]) for r in overview["open_requests"]}
    assert silence == {
        "partial_refund": (None, "nothing: the request stays open until it is answered or withdrawn"),
        "seller_cancel_request": ("accepted", "the order is cancelled by mutual agreement"),
        "extension_request": ("accepted", "the extension is accepted: the due date moves by 2 day(s)"),
        "extra_offer": ("declined", "the request is declined and the order goes on unchanged"),
        "update_request": ("unanswered", "the request is recorded as left unanswered by the seller"),
    }
    opened_at = at(overview["open_requests"][0]["opened_at"])
    assert {r["kind"]: r["answer_by"] and at(r["answer_by"]) - opened_at for r in overview["open_requests"]} == {
        "partial_refund": None, "seller_cancel_request": timedelta(hours=48),
        "extension_request": timedelta(days=2), "extra_offer": timedelta(days=2),
        "update_request": timedelta(hours=48)}
    assert [e["type"] for e in overview["history"]] == ["dispute.request_opened"] * 5
    assert [e["seq"] for e in overview["history"]] == [0, 1, 2, 3, 4]


async def test_DSP_10_silence_is_a_policy_of_each_kind_and_tells_both_parties() -> None:
    policy = {"disputes": {"extension_request_window": "PT1H", "extension_request_silence": "decline",
                           "update_request_window": "PT30M"}}
    async with Harness(policy=policy) as h:
        service = await h.start_instance()
        case = await new_case(h, service, "dsp10-policy")
        due_at = at((await case.order())["due_at"])
        request = await case.open(case.seller, extension(2))
        update = await case.open(case.buyer, UPDATE)
        assert at(request["answer_by"]) - at(request["opened_at"]) == timedelta(hours=1)
        assert at(update["answer_by"]) - at(update["opened_at"]) == timedelta(minutes=30)
        [opened, _] = await case.events("dispute.request_opened", count=2)
        assert opened.data["silence_outcome"] == "declined"

        assert await case.advance_to(at(request["answer_by"]) - ONE_SECOND) != []  # the update's 30 min
        assert (await case.request(case.buyer, request["id"]))["state"] == "open"
        await case.advance_to(at(request["answer_by"]))
        expired = {e.data["kind"]: e for e in await case.events("dispute.request_expired", count=2)}
        extension_expired = expired["extension_request"]
        assert (extension_expired.data["outcome"], extension_expired.data["silent_party"]) == ("declined", "buyer")
        assert "1 h" in extension_expired.data["explanation"] and "DSP-10" in extension_expired.data["explanation"]
        assert "30 min" in expired["update_request"].data["explanation"]
        await h.probe.settle(0.2)
        assert case.published("order.delivery_extended") == []
        assert at((await case.order())["due_at"]) == due_at
        # Both parties read the same account of what silence did.
        for client in (case.buyer, case.seller):
            history = (await case.overview(client))["history"]
            [entry] = [e for e in history if e["type"] == "dispute.request_expired" and
                       e["request_id"] == request["id"]]
            assert entry["details"]["explanation"] == extension_expired.data["explanation"]

        # A deadline that fires again (after a crash) changes nothing twice.
        doc = await service.services.store.collection("deadlines").find_one(
            {"_id": f"disputes/{case.order_id}/{request['id']}/answer_window"})
        deadline = Deadline(id=doc["_id"], owner=doc["owner"], kind=doc["kind"], subject=doc["subject"],
                            due_at=doc["due_at"], payload=doc["payload"])
        stored = await service.services.store.collection(CASES).find_one({"_id": case.order_id})
        await center_for(service.services).on_answer_window(deadline)
        again = await service.services.store.collection(CASES).find_one({"_id": case.order_id})
        assert again["_version"] == stored["_version"]
        await h.probe.settle(0.2)
        assert len(case.published("dispute.request_expired")) == 2


# ---------------------------------------------------------------- confidentiality (DSP-2, DSP-6)


async def test_DSP_2_DSP_6_confidential_reasons_never_reach_the_other_party(
        shared: tuple[Harness, Service]) -> None:
    h, service = shared
    case = await new_case(h, service, "confidential")
    refund_reason = "buyer_unsatisfied_with_part_of_the_work"
    cancel_reason = "SECRET-the-seller-is-too-slow-7f3a"
    seen_by: dict[str, list[Any]] = {"buyer": [], "seller": []}

    offer = await case.open(case.seller, refund("10.00", reason=refund_reason))
    seen_by["seller"].append(offer)
    assert offer["confidential"] == {"refund_reason": refund_reason}  # its author reads it
    seen_by["buyer"].append(await case.answer(case.buyer, offer["id"], "accept"))
    request = await case.open(case.buyer, {**BUYER_CANCEL, "confidential_reason": cancel_reason})
    seen_by["buyer"].append(request)
    assert request["confidential"] == {"cancellation_reason": cancel_reason}
    seen_by["seller"].append(await case.answer(case.seller, request["id"], "accept"))
    await case.events("order.cancelled")
    await h.probe.settle(0.3)

    for party, client in (("buyer", case.buyer), ("seller", case.seller)):
        seen_by[party] += [
            await case.overview(client),
            await client.get(f"/orders/{case.order_id}", expect=200),
            await client.get(f"/orders/{case.order_id}/timeline", expect=200),
            *[await case.request(client, rid) for rid in (offer["id"], request["id"])],
        ]
    # Failed attempts answer without it too.
    seen_by["buyer"].append(await case.open(case.buyer, UPDATE, expect=409))
    seen_by["seller"].append(await case.answer(case.seller, request["id"], "decline", expect=409))

    buyer_reads, seller_reads = json.dumps(seen_by["buyer"]), json.dumps(seen_by["seller"])
    assert refund_reason not in buyer_reads and cancel_reason in buyer_reads
    assert cancel_reason not in seller_reads and refund_reason in seller_reads
    # Events reach both parties (notifications, other services): neither reason is in any.
    events = [m for m in h.probe.messages if m.subject == case.order_id]
    assert {m.type for m in events} >= {"dispute.request_opened", "dispute.request_answered",
                                        "dispute.refund_issued", "order.cancelled"}
    for message in events:
        body = message.model_dump_json()
        assert refund_reason not in body and cancel_reason not in body, message.type
    # Support reads everything.
    support_view = json.dumps(await case.overview(case.support))
    assert refund_reason in support_view and cancel_reason in support_view


# ---------------------------------------------------------------- exactly one outcome


async def test_DSP_9_DSP_10_an_accept_racing_the_deadline_and_a_second_accept_gives_exactly_one_outcome() -> None:
    """Two accepts and the test clock reaching the deadline, at once, over HTTP, many
    times over: extra offers (silence declines) and extensions (silence accepts)."""
    async with Harness() as h:
        service = await h.start_instance()
        outcomes: dict[str, tuple[str, str]] = {}  # order id -> (kind, answered | expired)
        round_ = 0
        # Six rounds at least; more (up to twelve) until both sides of the race have won.
        while round_ < 6 or (len({o for _, o in outcomes.values()}) < 2 and round_ < 12):
            cases = [await new_case(h, service, f"race-{round_}-{n}") for n in range(4)]
            bodies = [extra_offer() if n % 2 == 0 else extension(1) for n in range(4)]
            requests = [await c.open(c.seller, body) for c, body in zip(cases, bodies, strict=True)]
            answer_by = at(requests[0]["answer_by"])
            await cases[0].advance_to(answer_by - ONE_SECOND)

            async def accept(case: Case, request_id: str, delay: float) -> tuple[int, Any]:
                await asyncio.sleep(delay)  # staggered, so some accepts meet the deadline mid-way
                buyer = Client(case.buyer.session, case.buyer.base, case.buyer.token)
                body = await buyer.post(case.path(f"/requests/{request_id}/answer"), {"answer": "accept"})
                return buyer.last_status, body

            racers = [accept(c, r["id"], 0.02 * n)
                      for n, (c, r) in enumerate(zip(cases, requests, strict=True)) for _ in range(2)]
            *answers, _ = await asyncio.gather(*racers, cases[0].advance_to(answer_by))
            for n, (case, request) in enumerate(zip(cases, requests, strict=True)):
                mine = answers[2 * n:2 * n + 2]
                statuses = sorted(status for status, _ in mine)
                assert statuses in ([200, 409], [409, 409]), statuses
                assert all(body["rule"] == "DSP-9" for status, body in mine if status == 409)
                outcome = "answered" if statuses == [200, 409] else "expired"
                outcomes[case.order_id] = (request["kind"], outcome)
                view = await case.request(case.support, request["id"])
                assert view["state"] == ("accepted" if outcome == "answered" else "expired")
            round_ += 1

        await h.probe.settle(0.5)
        for order_id, (kind, outcome) in outcomes.items():
            def count(type_: str, oid: str = order_id) -> int:
                return len(distinct(h.probe.of_type(type_, oid)))
            assert count("dispute.request_answered") == (outcome == "answered"), order_id
            assert count("dispute.request_expired") == (outcome == "expired"), order_id
            if kind == "extra_offer":  # accepted: amended once; silence declines: never
                assert count("order.amended") == (outcome == "answered"), order_id
            else:  # accepted by the buyer or by silence: the due date moves once
                assert count("order.delivery_extended") == 1, order_id
        # Both sides of the race were exercised, or the test proved little.
        assert {outcome for _, outcome in outcomes.values()} == {"answered", "expired"}


async def test_DSP_9_DSP_10_deciders_of_different_instances_meet_at_the_version_guard_one_outcome() -> None:
    """Within an instance a per-order lock lines deciders up; across instances only the
    case's version guard does. Three resolution centers (one per instance, each with its
    own lock) decide on the same request at once: two accepts and its deadline."""
    async with Harness() as h:
        service = await h.start_instance()
        assert service.services is not None
        centers = [ResolutionCenter(service.services) for _ in range(3)]
        for round_ in range(10):
            case = await new_case(h, service, f"guard-{round_}")
            request = await case.open(case.seller, extra_offer())
            buyer = Principal(id=f"buyer-guard-{round_}", roles=frozenset({"buyer"}))
            deadline = Deadline(id=f"disputes/{case.order_id}/{request['id']}/answer_window", owner="disputes",
                                kind="answer_window", subject=case.order_id, due_at=at(request["answer_by"]),
                                payload={"request_id": request["id"]})
            deciders = [centers[0].answer(case.order_id, request["id"], buyer, "accept", None),
                        centers[1].answer(case.order_id, request["id"], buyer, "accept", None),
                        centers[2].on_answer_window(deadline)]
            if round_ % 2:
                deciders.reverse()
            results = await asyncio.gather(*deciders, return_exceptions=True)
            accepted = [r for r in results if isinstance(r, dict)]
            refused = [r for r in results if isinstance(r, RuleViolation)]
            assert len(accepted) + len(refused) == 2 and all(r.rule == "DSP-9" for r in refused), results
            state = (await case.request(case.support, request["id"]))["state"]
            assert state == ("accepted" if accepted else "expired")
            assert len(accepted) <= 1
            await case.events("dispute.request_answered" if accepted else "dispute.request_expired")

        await h.probe.settle(0.5)
        for order_id in {m.subject for m in h.probe.messages if m.type == "dispute.request_opened"}:
            decided = [m for m in distinct(h.probe.messages) if m.subject == order_id and m.type in (
                "dispute.request_answered", "dispute.request_expired")]
            assert len(decided) == 1, order_id
            amended = [m for m in distinct(h.probe.messages) if m.subject == order_id and m.type == "order.amended"]
            assert len(amended) == (decided[0].type == "dispute.request_answered"), order_id


# ---------------------------------------------------------------- a crash between the two writes


async def test_DSP_4_an_accepted_cancellation_survives_a_crash_between_the_accept_and_the_order_change() -> None:
    async with Harness() as h:
        a = await h.start_instance()
        assert a.services is not None
        case = await new_case(h, a, "crash")
        request = await case.open(case.seller, SELLER_CANCEL)
        await case.events("dispute.request_opened")

        # From now on instance A stores its decisions but dies before publishing them.
        reached, released = asyncio.Event(), asyncio.Event()

        async def publish_then_die(envelope: Any, **kwargs: Any) -> None:
            reached.set()
            await released.wait()
            raise ConnectionResetError("the process is gone")

        a.services.bus.publish = publish_then_die  # type: ignore[method-assign]
        answering = asyncio.create_task(case.answer(case.buyer, request["id"], "accept", expect=None))
        await asyncio.wait_for(reached.wait(), 5)

        stored = await a.services.store.collection(CASES).find_one({"_id": case.order_id})
        assert stored["requests"][request["id"]]["state"] == "accepted"
        staged = [json.loads(e["body"]) for e in stored["_outbox"] if e["kind"] == "publish"]
        assert [e["type"] for e in staged] == ["dispute.request_answered", "command.order.cancel_by_agreement"]
        assert (await a.services.orders.get(case.order_id))["state"] == "in_progress"
        await a.kill()
        released.set()
        with contextlib.suppress(Exception):
            await answering

        b = await h.start_instance()  # B's outbox sweeper sends what A stored; the core applies it
        assert b.services is not None
        case.admin = h.client(b, "admin-1", "admin")
        case.support = h.client(b, "support-1", "support")
        [cancelled] = await case.events("order.cancelled")
        assert (cancelled.data["cause"], cancelled.data["requested_by"], cancelled.data["request_id"]) == (
            "mutual_agreement", "seller", request["id"])

        # The command arrives again (a redelivery, a second sweep): nothing changes twice.
        command = Envelope.model_validate(staged[1])
        order = await case.order()
        await h.publish(command.type, command.data, subject=case.order_id, id=command.id)
        await h.probe.wait_for(command.type, lambda m: m.id == command.id, count=2)
        await h.probe.settle(0.3)
        assert len(case.published("order.cancelled")) == 1 and len(case.published("dispute.request_answered")) == 1
        assert (await case.order())["version"] == order["version"]
        deadlines = (await case.support.get(f"/orders/{case.order_id}/deadlines", expect=200))["deadlines"]
        assert [(d["kind"], d["state"]) for d in deadlines if d["owner"] == "disputes"] == [
            ("answer_window", "cancelled")]
