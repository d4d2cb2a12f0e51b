"""Reviews on cancelled orders (REV-1 to REV-9), over HTTP and the bus against real
RabbitMQ and the MongoDB-wire server, with the test clock moved across the 24 h and
5-day boundaries: one second before, and exactly at, each.

One running service is shared by the tests of this module: each test uses its own
buyers, sellers and orders, and only moves the clock forward from wherever it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from core.messages import ChargebackReported
from core.service import Service
from plugins.reviews.messages import ConversationMessageSent, ReviewRightChanged, SellerStatusChanged
from tests.harness import Client, Harness
from tests.support import eventually, header, problem

H = timedelta(hours=1)
S = timedelta(seconds=1)


@dataclass
class World:
    h: Harness
    service: Service
    clients: dict[tuple[str | None, str | None], Client] = field(default_factory=dict)

    def client(self, sub: str | None = None, role: str | None = None) -> Client:
        """One client per user, so that `problem()` reads the answer that user got last."""
        if (sub, role) not in self.clients:
            self.clients[sub, role] = self.h.client(self.service, sub, *([role] if role else []))
        return self.clients[sub, role]

    @property
    def admin(self) -> Client:
        return self.client("admin-1", "admin")

    @property
    def support(self) -> Client:
        return self.client("support-1", "support")

    def buyer(self, buyer_id: str) -> Client:
        return self.client(buyer_id, "buyer")

    def seller(self, seller_id: str) -> Client:
        return self.client(seller_id, "seller")

    @property
    def anonymous(self) -> Client:
        return self.client()

    async def now(self) -> datetime:
        return datetime.fromisoformat((await self.admin.get("/admin/clock", expect=200))["now"])

    async def advance(self, by: timedelta | None = None, *, to: datetime | None = None) -> None:
        if to is not None:
            await self.admin.post("/admin/clock/advance", {"to": to.isoformat()}, expect=200)
        else:
            assert by is not None
            await self.admin.post("/admin/clock/advance", {"by": f"PT{int(by.total_seconds())}S"}, expect=200)

    async def order(self, buyer_id: str, seller_id: str, *, delivery_days: int = 3, requirements: bool = True,
                    deliver: bool = False) -> str:
        buyer = self.buyer(buyer_id)
        body = {"seller_id": seller_id, "gig_id": "gig-1", "price": {"amount": "80.00", "currency": "EUR"},
                "delivery_days": delivery_days}
        order_id = (await buyer.post("/orders", body, expect=201))["id"]
        if requirements:
            await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a logo"}, expect=200)
        if deliver:
            await self.seller(seller_id).post(f"/orders/{order_id}/deliveries", {"message": "here"}, expect=200)
        return order_id

    async def regular_buyer(self, buyer_id: str) -> None:
        """A buyer who completed an order before (REV-2), with a seller of no other concern."""
        order_id = await self.order(buyer_id, f"{buyer_id}-past-seller", deliver=True)
        await self.buyer(buyer_id).post(f"/orders/{order_id}/acceptance", expect=200)

    async def cancel(self, order_id: str) -> None:
        await self.support.post(f"/orders/{order_id}/cancellation", {"reason": "the parties gave up"}, expect=200)

    async def eligibility(self, buyer_id: str, order_id: str,
                          until: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        """The buyer's eligibility answer, once the plugin has learned what `until` waits for."""
        buyer = self.buyer(buyer_id)

        async def answer() -> dict[str, Any] | None:
            found = await buyer.get(f"/orders/{order_id}/review-eligibility")
            return found if buyer.last_status == 200 and until(found) else None

        return await eventually(answer, what=f"eligibility of {order_id}")

    async def cancelled(self, buyer_id: str, order_id: str, *, completed: int = 1) -> dict[str, Any]:
        """Eligibility once the plugin knows the cancellation and the buyer's `completed` orders."""
        return await self.eligibility(
            buyer_id, order_id,
            lambda e: e["state"] == "cancelled" and condition(e, "REV-2", "completed_orders")["facts"][
                "completed_orders"] >= completed)

    async def review(self, buyer_id: str, order_id: str, rating: int = 2, text: str = "Never delivered.",
                     **kw: Any) -> Any:
        return await self.buyer(buyer_id).post(f"/orders/{order_id}/review", {"rating": rating, "text": text}, **kw)

    async def publish_fact(self, type_: str, data: Any, subject: str, **kw: Any) -> Any:
        return await self.h.publish(type_, data, subject=subject, **kw)


def condition(eligibility: dict[str, Any], rule: str, name: str) -> dict[str, Any]:
    verdict = next(v for v in eligibility["rules"] if v["rule"] == rule)
    return next(c for c in verdict["conditions"] if c["name"] == name)


def satisfied(eligibility: dict[str, Any], rule: str) -> bool:
    return next(v for v in eligibility["rules"] if v["rule"] == rule)["satisfied"]


def events(h: Harness, type_: str, order_id: str) -> list[Any]:
    return h.probe.of_type(type_, order_id)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world() -> AsyncIterator[World]:
    async with Harness() as h:
        yield World(h, await h.start_instance())


# ---------------------------------------------------------------- REV-1


async def test_REV_1_late_by_exactly_24h_is_not_enough_24h_and_1s_is(world: World) -> None:
    w = world
    await asyncio.gather(w.regular_buyer("late-b1"), w.regular_buyer("late-b2"))
    on_time = await w.order("late-b1", "late-s", delivery_days=1)
    late = await w.order("late-b2", "late-s", delivery_days=1)
    due_at = datetime.fromisoformat((await w.buyer("late-b1").get(f"/orders/{on_time}", expect=200))["due_at"])

    await w.advance(to=due_at + 24 * H)
    await w.cancel(on_time)  # exactly 24 h past the due date
    await w.advance(S)
    await w.cancel(late)  # 24 h and 1 s past it

    answer = await w.cancelled("late-b1", on_time)
    lateness = condition(answer, "REV-1", "late")
    assert lateness["holds"] is False and lateness["facts"]["late_by_seconds"] == 24 * 3600
    assert lateness["detail"].startswith("late by 24 h past the due date at the cancellation")
    assert answer["eligible"] is False and answer["refusals"][0]["rule"] == "REV-1"
    refused = problem(w.buyer("late-b1"), await w.review("late-b1", on_time), 409, rule="REV-1")
    assert "late by 24 h past the due date" in refused["detail"]

    answer = await w.cancelled("late-b2", late)
    lateness = condition(answer, "REV-1", "late")
    assert lateness["holds"] is True and lateness["detail"].startswith("late by 24 h 1 s past the due date")
    assert datetime.fromisoformat(lateness["facts"]["due_at"]) == due_at
    assert answer["eligible"] is True
    review = await w.review("late-b2", late, expect=201)
    assert review["rating"] == 2 and review["label"] == "cancelled_order"
    await w.h.probe.wait_for("review.published", lambda m: m.subject == late)
    assert events(w.h, "review.published", on_time) == []


async def test_REV_1_a_buyer_unanswered_for_24h_is_not_enough_24h_and_1s_is(world: World) -> None:
    w = world
    await asyncio.gather(w.regular_buyer("talk-b1"), w.regular_buyer("talk-b2"))
    orders = {}
    for buyer_id in ("talk-b1", "talk-b2", "talk-b3", "talk-b4"):
        orders[buyer_id] = await w.order(buyer_id, "talk-s", delivery_days=10)  # never late here
    asked_at = await w.now()
    for buyer_id, order_id in orders.items():
        await w.publish_fact("conversation.message_sent", ConversationMessageSent(
            order_id=order_id, sender_id=buyer_id, recipient_id="talk-s", sent_at=asked_at), order_id)

    await w.advance(to=asked_at + 24 * H)
    await w.cancel(orders["talk-b1"])  # no answer for exactly 24 h
    # talk-b3 got its answer exactly 24 h later (and was cancelled later still)
    await w.publish_fact("conversation.message_sent", ConversationMessageSent(
        order_id=orders["talk-b3"], sender_id="talk-s", recipient_id="talk-b3", sent_at=asked_at + 24 * H),
        orders["talk-b3"])
    await w.advance(S)
    await w.cancel(orders["talk-b2"])  # no answer for 24 h and 1 s
    await w.publish_fact("conversation.message_sent", ConversationMessageSent(
        order_id=orders["talk-b4"], sender_id="talk-s", recipient_id="talk-b4", sent_at=asked_at + 24 * H + S),
        orders["talk-b4"])
    await w.advance(H)
    await w.cancel(orders["talk-b3"])
    await w.cancel(orders["talk-b4"])

    exactly = condition(await w.cancelled("talk-b1", orders["talk-b1"]), "REV-1", "unanswered")
    assert exactly["holds"] is False and exactly["facts"]["longest_wait_seconds"] == 24 * 3600
    assert exactly["detail"] == ("the buyer waited 24 h without an answer before the cancellation "
                                 "(not more than 24 h)")
    problem(w.buyer("talk-b1"), await w.review("talk-b1", orders["talk-b1"]), 409, rule="REV-1")

    longer = condition(await w.cancelled("talk-b2", orders["talk-b2"]), "REV-1", "unanswered")
    assert longer["holds"] is True and longer["facts"]["longest_wait_seconds"] == 24 * 3600 + 1
    await w.review("talk-b2", orders["talk-b2"], expect=201)

    def answered(e: dict[str, Any]) -> bool:
        return e["state"] == "cancelled" and condition(e, "REV-1", "unanswered")["facts"]["seller_messages"] == 1

    answered_at_24h = condition(await w.eligibility("talk-b3", orders["talk-b3"], answered), "REV-1", "unanswered")
    assert answered_at_24h["holds"] is False
    assert answered_at_24h["detail"] == "the buyer waited 24 h before the seller answered (not more than 24 h)"
    answered_late = condition(await w.eligibility("talk-b4", orders["talk-b4"], answered), "REV-1", "unanswered")
    assert answered_late["holds"] is True and answered_late["facts"]["longest_wait_answered"] is True


async def test_REV_1_a_received_delivery_makes_it_reviewable_none_of_the_three_refuses(world: World) -> None:
    w = world
    await asyncio.gather(w.regular_buyer("dlv-b1"), w.regular_buyer("dlv-b2"))
    delivered = await w.order("dlv-b1", "dlv-s", deliver=True)
    nothing = await w.order("dlv-b2", "dlv-s")
    await w.cancel(delivered)
    await w.cancel(nothing)

    answer = await w.cancelled("dlv-b1", delivered)
    assert condition(answer, "REV-1", "delivery_received")["holds"] is True
    assert condition(answer, "REV-1", "late")["holds"] is False
    await w.review("dlv-b1", delivered, rating=4, text="Good work, then the order fell through.", expect=201)

    answer = await w.cancelled("dlv-b2", nothing)
    assert not satisfied(answer, "REV-1")
    assert [c["holds"] for c in next(v for v in answer["rules"] if v["rule"] == "REV-1")["conditions"]] == [
        False, False, False]
    refused = problem(w.buyer("dlv-b2"), await w.review("dlv-b2", nothing), 409, rule="REV-1")
    assert "before the due date" in refused["detail"] and "no delivery" in refused["detail"]
    assert refused["refusals"] == [{"rule": "REV-1", "reason": answer["refusals"][0]["reason"]}]
    buyer = w.buyer("dlv-b2")
    problem(buyer, await buyer.get(f"/orders/{nothing}/review"), 404)


# ---------------------------------------------------------------- REV-2


async def test_REV_2_a_first_time_buyer_is_refused_until_one_of_their_orders_completes(world: World) -> None:
    w = world
    order_id = await w.order("new-b", "new-s", deliver=True)
    await w.cancel(order_id)
    answer = await w.cancelled("new-b", order_id, completed=0)
    rev2 = condition(answer, "REV-2", "completed_orders")
    assert rev2["holds"] is False and rev2["detail"].startswith("a first-time buyer")
    assert [r["rule"] for r in answer["refusals"]] == ["REV-2"]
    problem(w.buyer("new-b"), await w.review("new-b", order_id), 409, rule="REV-2")

    await w.regular_buyer("new-b")  # inside the window, another order of theirs completes
    answer = await w.cancelled("new-b", order_id, completed=1)
    assert answer["eligible"] is True
    await w.review("new-b", order_id, expect=201)


# ---------------------------------------------------------------- REV-3


async def test_REV_3_a_buyer_with_an_active_seller_account_is_refused(world: World) -> None:
    w = world
    await w.regular_buyer("acct-b")
    order_id = await w.order("acct-b", "acct-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("acct-b", order_id)
    opened_at = await w.now()
    await w.publish_fact("account.seller_status_changed",
                         SellerStatusChanged(user_id="acct-b", active=True, changed_at=opened_at), "acct-b")
    answer = await w.eligibility("acct-b", order_id,
                                 lambda e: condition(e, "REV-3", "active_seller_account")["holds"])
    assert [r["rule"] for r in answer["refusals"]] == ["REV-3"]
    refused = problem(w.buyer("acct-b"), await w.review("acct-b", order_id), 409, rule="REV-3")
    assert "active seller account" in refused["detail"]

    await w.advance(H)
    closed_at = await w.now()
    await w.publish_fact("account.seller_status_changed",
                         SellerStatusChanged(user_id="acct-b", active=False, changed_at=closed_at), "acct-b")
    await w.eligibility("acct-b", order_id, lambda e: e["eligible"])
    await w.review("acct-b", order_id, expect=201)


async def test_REV_3_an_order_cancelled_through_a_chargeback_is_refused(world: World) -> None:
    w = world
    await w.regular_buyer("cb-b")
    order_id = await w.order("cb-b", "cb-s", deliver=True)
    await w.publish_fact("payment.chargeback_reported", ChargebackReported(order_id=order_id), order_id)
    answer = await w.cancelled("cb-b", order_id)
    assert condition(answer, "REV-3", "chargeback")["holds"] is True
    assert satisfied(answer, "REV-1") and satisfied(answer, "REV-2") and not satisfied(answer, "REV-3")
    refused = problem(w.buyer("cb-b"), await w.review("cb-b", order_id), 409, rule="REV-3")
    assert "chargeback" in refused["detail"]


async def test_REV_3_a_withdrawn_right_refuses_and_a_restored_right_allows_again(world: World) -> None:
    w = world
    await w.regular_buyer("right-b")
    order_id = await w.order("right-b", "right-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("right-b", order_id)
    await w.publish_fact("account.review_right_changed", ReviewRightChanged(
        user_id="right-b", withdrawn=True, changed_at=await w.now(), reason="fake reviews for money"), "right-b")
    answer = await w.eligibility("right-b", order_id,
                                 lambda e: condition(e, "REV-3", "review_right_withdrawn")["holds"])
    assert condition(answer, "REV-3", "review_right_withdrawn")["facts"]["reason"] == "fake reviews for money"
    refused = problem(w.buyer("right-b"), await w.review("right-b", order_id), 409, rule="REV-3")
    assert "withdrew" in refused["detail"]

    await w.advance(H)
    await w.publish_fact("account.review_right_changed", ReviewRightChanged(
        user_id="right-b", withdrawn=False, changed_at=await w.now()), "right-b")
    await w.eligibility("right-b", order_id, lambda e: e["eligible"])
    await w.review("right-b", order_id, expect=201)


async def test_REV_1_REV_3_facts_arriving_out_of_order_give_the_verdict_of_the_moment_that_counts(
        world: World) -> None:
    w = world
    await w.regular_buyer("ooo-b")
    order_id = await w.order("ooo-b", "ooo-s", delivery_days=10)
    started = await w.now()
    await w.advance(48 * H)
    await w.cancel(order_id)
    await w.cancelled("ooo-b", order_id)

    # Everything below happened before the cancellation but is reported after it, newest first.
    def said(sender: str, recipient: str, at: datetime, message_id: str) -> ConversationMessageSent:
        return ConversationMessageSent(order_id=order_id, sender_id=sender, recipient_id=recipient, sent_at=at,
                                       message_id=message_id)

    await w.publish_fact("account.seller_status_changed",
                         SellerStatusChanged(user_id="ooo-b", active=False, changed_at=started + H), "ooo-b")
    await w.publish_fact("account.seller_status_changed",
                         SellerStatusChanged(user_id="ooo-b", active=True, changed_at=started - 10 * 24 * H), "ooo-b")
    unanswered = said("ooo-b", "ooo-s", started + 20 * H, "m3")  # never answered: 28 h until the cancellation
    first = await w.publish_fact("conversation.message_sent", unanswered, order_id)
    await w.publish_fact("conversation.message_sent", said("ooo-s", "ooo-b", started + 3 * H, "m2"), order_id)
    await w.publish_fact("conversation.message_sent", said("ooo-b", "ooo-s", started + 2 * H, "m1"), order_id)
    # The same message again: redelivered (same envelope id), and reported twice (same message id).
    await w.publish_fact("conversation.message_sent", unanswered, order_id, id=first.id)
    await w.publish_fact("conversation.message_sent", unanswered, order_id)

    def all_known(e: dict[str, Any]) -> bool:
        account = condition(e, "REV-3", "active_seller_account")["facts"]
        talk = condition(e, "REV-1", "unanswered")["facts"]
        return account.get("known_changes") == 2 and talk["seller_messages"] == 1 and talk["buyer_messages"] == 2

    answer = await w.eligibility("ooo-b", order_id, all_known)
    talk = condition(answer, "REV-1", "unanswered")
    assert talk["holds"] is True and talk["facts"]["longest_wait_seconds"] == 28 * 3600
    assert datetime.fromisoformat(talk["facts"]["longest_wait_since"]) == started + 20 * H
    account = condition(answer, "REV-3", "active_seller_account")
    assert account["holds"] is False  # the last change that happened, not the last one to arrive
    assert datetime.fromisoformat(account["facts"]["changed_at"]) == started + H
    assert answer["eligible"] is True
    await w.review("ooo-b", order_id, expect=201)


# ---------------------------------------------------------------- REV-4


async def test_REV_4_the_window_is_open_one_second_before_its_end_and_closed_exactly_at_it(world: World) -> None:
    w = world
    await asyncio.gather(w.regular_buyer("win-b1"), w.regular_buyer("win-b2"))
    first = await w.order("win-b1", "win-s", deliver=True)
    second = await w.order("win-b2", "win-s", deliver=True)
    cancelled_at = await w.now()
    await w.cancel(first)
    await w.cancel(second)
    answer = await w.cancelled("win-b1", first)
    assert datetime.fromisoformat(answer["window_closes_at"]) == cancelled_at + timedelta(days=5)
    await w.cancelled("win-b2", second)

    await w.advance(to=cancelled_at + timedelta(days=5) - S)
    assert (await w.eligibility("win-b2", second))["window_open"] is True
    await w.review("win-b1", first, expect=201)

    await w.advance(S)
    answer = await w.eligibility("win-b2", second)
    assert answer["window_open"] is False and [r["rule"] for r in answer["refusals"]] == ["REV-4"]
    refused = problem(w.buyer("win-b2"), await w.review("win-b2", second), 409, rule="REV-4")
    assert "window closed" in refused["detail"]


async def test_REV_4_a_review_stored_before_a_crash_is_published_by_the_next_instance() -> None:
    async with Harness() as h:
        a = await h.start_instance()
        w = World(h, a)
        await w.regular_buyer("crash-b")
        order_id = await w.order("crash-b", "crash-s", deliver=True)
        await w.cancel(order_id)
        await w.cancelled("crash-b", order_id)

        # From now on instance A writes but never gets its publish out: it dies in between.
        reached, released = asyncio.Event(), asyncio.Event()

        async def publish_then_die(envelope: Any, **kwargs: Any) -> None:
            reached.set()
            await released.wait()
            raise ConnectionResetError("the process is gone")

        assert a.services is not None
        a.services.bus.publish = publish_then_die  # type: ignore[method-assign]
        request = asyncio.create_task(w.review("crash-b", order_id))
        await asyncio.wait_for(reached.wait(), 5)
        await a.kill()
        released.set()
        with contextlib.suppress(Exception):
            await request
        assert events(h, "review.published", order_id) == []

        b = await h.start_instance()  # B's outbox sweeper publishes what A stored
        await h.probe.wait_for("review.published", lambda m: m.subject == order_id)
        await h.probe.settle(0.5)
        [published] = events(h, "review.published", order_id)
        assert published.data["buyer_id"] == "crash-b" and published.data["label"] == "cancelled_order"
        review = await h.client(b, "crash-b", "buyer").get(f"/orders/{order_id}/review", expect=200)
        assert review["review_id"] == published.data["review_id"]


# ---------------------------------------------------------------- REV-5, REV-6, REV-7


async def test_REV_5_the_seller_replies_once_and_only_after_the_window_closed(world: World) -> None:
    w = world
    await w.regular_buyer("reply-b")
    order_id = await w.order("reply-b", "reply-s", deliver=True)
    cancelled_at = await w.now()
    await w.cancel(order_id)
    await w.cancelled("reply-b", order_id)
    await w.review("reply-b", order_id, rating=1, text="Took the money, then cancelled.", expect=201)
    seller = w.seller("reply-s")
    path = f"/orders/{order_id}/review/reply"

    await w.advance(to=cancelled_at + timedelta(days=5) - S)
    refused = problem(seller, await seller.post(path, {"text": "Too early"}), 409, rule="REV-5")
    assert datetime.fromisoformat(refused["window_closes_at"]) == cancelled_at + timedelta(days=5)

    await w.advance(S)
    buyer = w.buyer("reply-b")
    problem(buyer, await buyer.post(path, {"text": "I reply to myself"}), 403, rule="REV-5")
    stranger = w.seller("reply-other-s")
    problem(stranger, await stranger.post(path, {"text": "Not my order"}), 404)
    replied = await seller.post(path, {"text": "The buyer never sent the files."}, expect=200)
    assert replied["reply"]["text"] == "The buyer never sent the files."
    again = await seller.post(path, {"text": "The buyer never sent the files."}, expect=200)  # harmless
    assert again["reply"] == replied["reply"]
    problem(seller, await seller.post(path, {"text": "And another thing"}), 409, rule="REV-5")

    [event] = await w.h.probe.wait_for("review.reply_published", lambda m: m.subject == order_id)
    assert event.data["text"] == "The buyer never sent the files." and event.data["seller_id"] == "reply-s"
    listed = (await w.anonymous.get("/sellers/reply-s/reviews", expect=200))["reviews"]
    assert [r["reply"]["text"] for r in listed] == ["The buyer never sent the files."]
    await w.h.probe.settle(0.3)
    assert len(events(w.h, "review.reply_published", order_id)) == 1


async def test_REV_6_every_review_carries_the_cancelled_order_label(world: World) -> None:
    w = world
    await w.regular_buyer("label-b")
    order_id = await w.order("label-b", "label-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("label-b", order_id)
    created = await w.review("label-b", order_id, rating=3, text="Half of it was fine.", expect=201)

    [event] = await w.h.probe.wait_for("review.published", lambda m: m.subject == order_id)
    assert event.data["label"] == "cancelled_order" and event.data["rating"] == 3
    assert event.data["seller_id"] == "label-s" and event.data["review_id"] == created["review_id"]
    listed = await w.anonymous.get("/sellers/label-s/reviews", expect=200)  # public: no token
    assert [(r["label"], r["label_text"], r["rating"], r["text"]) for r in listed["reviews"]] == [
        ("cancelled_order", "cancelled order", 3, "Half of it was fine.")]
    assert (await w.anonymous.get("/sellers/nobody/reviews", expect=200))["reviews"] == []
    problem(w.anonymous, await w.anonymous.get("/sellers/label-s/reviews?limit=0"), 422)


async def test_REV_7_the_seller_cannot_review_the_buyer(world: World) -> None:
    w = world
    await w.regular_buyer("rev7-b")
    order_id = await w.order("rev7-b", "rev7-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("rev7-b", order_id)
    seller = w.seller("rev7-s")
    body = {"rating": 1, "text": "A difficult buyer."}
    refused = problem(seller, await seller.post(f"/orders/{order_id}/review", body), 409, rule="REV-7")
    assert "only" in refused["detail"] and "reply" in refused["detail"]
    stranger = w.seller("rev7-other-s")
    problem(stranger, await stranger.post(f"/orders/{order_id}/review", body), 404)
    # Nothing was stored: the buyer's own review is still possible.
    assert (await w.eligibility("rev7-b", order_id))["eligible"] is True
    await w.h.probe.settle(0.3)
    assert events(w.h, "review.published", order_id) == []


# ---------------------------------------------------------------- REV-8


async def test_REV_8_support_removes_a_review_keeps_the_reason_and_tells_the_author(world: World) -> None:
    w = world
    await w.regular_buyer("rm-b")
    order_id = await w.order("rm-b", "rm-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("rm-b", order_id)
    review = await w.review("rm-b", order_id, rating=1, text="Call me at 555-0100 for a better deal", expect=201)
    path = f"/reviews/{review['review_id']}/removal"
    reason = "personal contact details and solicitation (terms 4.2)"

    seller = w.seller("rm-s")
    problem(seller, await seller.post(path, {"reason": "I do not like it"}), 403)
    problem(w.support, await w.support.post(path, {"reason": "   "}), 422)
    problem(w.support, await w.support.post("/reviews/rev-nothing/removal", {"reason": reason}), 404)
    removed = await w.support.post(path, {"reason": reason}, expect=200)
    assert removed["status"] == "removed" and removed["removal"]["reason"] == reason
    assert (await w.support.post(path, {"reason": reason}, expect=200))["removal"] == removed["removal"]
    problem(w.support, await w.support.post(path, {"reason": "something else"}), 409, rule="REV-8")

    [event] = await w.h.probe.wait_for("review.removed", lambda m: m.subject == order_id)
    assert event.data["reason"] == reason and event.data["addressed_to"] == "rm-b"
    assert event.data["rating"] == 1 and event.data["seller_id"] == "rm-s" and event.data["rule"] == "REV-8"
    assert reason in event.data["statement"]
    # The author reads why; the seller sees that it is gone, not the reason; the public no longer sees it.
    seen_by_author = await w.buyer("rm-b").get(f"/orders/{order_id}/review", expect=200)
    assert seen_by_author["removal"]["reason"] == reason and reason in seen_by_author["removal"]["statement"]
    seen_by_seller = await seller.get(f"/orders/{order_id}/review", expect=200)
    assert seen_by_seller["status"] == "removed" and "reason" not in seen_by_seller["removal"]
    assert (await w.anonymous.get("/sellers/rm-s/reviews", expect=200))["reviews"] == []
    # Removed for good: no second review of the order (REV-9), nothing to reply to.
    problem(w.buyer("rm-b"), await w.review("rm-b", order_id), 409, rule="REV-9")
    await w.h.probe.settle(0.3)
    assert len(events(w.h, "review.removed", order_id)) == 1


# ---------------------------------------------------------------- REV-9


async def test_REV_9_one_review_per_order_and_a_repeated_request_changes_nothing(world: World) -> None:
    w = world
    await w.regular_buyer("one-b")
    order_id = await w.order("one-b", "one-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("one-b", order_id)
    key = {"Idempotency-Key": "review-once"}
    first = await w.review("one-b", order_id, rating=2, text="Slow.", headers=key, expect=201)
    assert await w.review("one-b", order_id, rating=2, text="Slow.", headers=key, expect=201) == first
    refused = problem(w.buyer("one-b"), await w.review("one-b", order_id, rating=5, text="Changed my mind"),
                      409, rule="REV-9")
    assert refused["review_id"] == first["review_id"]

    answer = await w.eligibility("one-b", order_id)
    assert answer["review_id"] == first["review_id"] and [r["rule"] for r in answer["refusals"]] == ["REV-9"]
    assert (await w.buyer("one-b").get(f"/orders/{order_id}/review", expect=200))["text"] == "Slow."
    await w.h.probe.wait_for("review.published", lambda m: m.subject == order_id)
    await w.h.probe.settle(0.3)
    assert len(events(w.h, "review.published", order_id)) == 1


async def test_REV_9_two_reviews_sent_at_once_one_is_published(world: World) -> None:
    """A buyer who clicks "publish" in two tabs at once: the store keeps one review per order."""
    w = world
    await w.regular_buyer("race-b")
    order_id = await w.order("race-b", "race-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("race-b", order_id)
    tabs = [w.h.client(w.service, "race-b", "buyer") for _ in range(3)]
    answers = await asyncio.gather(*(tab.post(f"/orders/{order_id}/review", {"rating": n + 1, "text": f"tab {n}"})
                                     for n, tab in enumerate(tabs)))
    assert sorted(tab.last_status for tab in tabs) == [201, 409, 409]
    winner = next(a for a, tab in zip(answers, tabs, strict=True) if tab.last_status == 201)
    for answer, tab in zip(answers, tabs, strict=True):
        if tab.last_status == 409:
            assert answer["rule"] == "REV-9" and answer["review_id"] == winner["review_id"]
    await w.h.probe.wait_for("review.published", lambda m: m.subject == order_id)
    await w.h.probe.settle(0.3)
    [event] = events(w.h, "review.published", order_id)
    assert event.data["text"] == winner["text"]


async def test_REV_9_the_buyer_and_support_may_ask_why_others_may_not(world: World) -> None:
    w = world
    await w.regular_buyer("ask-b")
    order_id = await w.order("ask-b", "ask-s", delivery_days=1)
    running = await w.eligibility("ask-b", order_id, lambda e: e["state"] == "in_progress")
    assert running["eligible"] is False and running["refusals"][0]["rule"] == "REV-1"
    assert "not cancelled" in running["refusals"][0]["reason"] and running["window_closes_at"] is None

    await w.advance(timedelta(days=1) + 31 * H)  # 31 h past the due date
    cancelled_at = await w.now()
    await w.cancel(order_id)
    answer = await w.cancelled("ask-b", order_id)
    assert answer["eligible"] is True and answer["refusals"] == []
    assert [v["rule"] for v in answer["rules"]] == ["REV-1", "REV-2", "REV-3", "REV-4", "REV-9"]
    assert [c["name"] for v in answer["rules"][:3] for c in v["conditions"]] == [
        "late", "unanswered", "delivery_received", "completed_orders", "active_seller_account", "chargeback",
        "review_right_withdrawn"]
    assert condition(answer, "REV-1", "late")["detail"].startswith("late by 31 h past the due date")
    assert datetime.fromisoformat(answer["window_closes_at"]) == cancelled_at + timedelta(days=5)

    support = await w.support.get(f"/orders/{order_id}/review-eligibility", expect=200)
    assert support["eligible"] is True
    seller = w.seller("ask-s")
    problem(seller, await seller.get(f"/orders/{order_id}/review-eligibility"), 403)
    stranger = w.buyer("ask-stranger")
    hidden = problem(stranger, await stranger.get(f"/orders/{order_id}/review-eligibility"), 404)
    missing = problem(stranger, await stranger.get("/orders/no-such-order/review-eligibility"), 404)
    assert hidden["detail"].replace(order_id, "X") == missing["detail"].replace("no-such-order", "X")


# ---------------------------------------------------------------- bad input


async def test_REV_9_bad_review_bodies_are_refused_and_change_nothing(world: World) -> None:
    w = world
    await w.regular_buyer("bad-b")
    order_id = await w.order("bad-b", "bad-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("bad-b", order_id)
    buyer = w.buyer("bad-b")
    path = f"/orders/{order_id}/review"
    for body, named in [({"rating": 0, "text": "x"}, "rating"), ({"rating": 6, "text": "x"}, "rating"),
                        ({"rating": "5", "text": "x"}, "rating"), ({"rating": 5}, "text"),
                        ({"rating": 5, "text": "  "}, "text"), ({"rating": 5, "text": "x", "stars": 5}, "stars")]:
        refused = problem(buyer, await buyer.post(path, body), 422)
        assert named in refused["detail"], (body, refused)
    assert (await w.eligibility("bad-b", order_id))["review_id"] is None
    await w.review("bad-b", order_id, expect=201)


async def test_REV_3_an_invalid_fact_is_dead_lettered_with_its_reason_and_changes_nothing(world: World) -> None:
    w = world
    await w.regular_buyer("inv-b")
    order_id = await w.order("inv-b", "inv-s", deliver=True)
    await w.cancel(order_id)
    await w.cancelled("inv-b", order_id)
    now = (await w.now()).isoformat()
    await w.publish_fact("account.review_right_changed",
                         {"user_id": "inv-b", "withdrawn": True, "changed_at": now}, "inv-b")  # no reason
    [dead] = await w.h.dead_letters("reviews")
    assert header(dead, "x-rescenter-reason") == "invalid"
    assert "reason" in header(dead, "x-rescenter-error")
    assert (await w.eligibility("inv-b", order_id))["eligible"] is True


# ---------------------------------------------------------------- REV-1 with the resolution center (DSP-5)


async def test_REV_1_DSP_5_an_update_request_the_seller_let_expire_counts_as_unanswered(world: World) -> None:
    w = world
    assert w.service.services is not None
    if "dispute.request_expired" not in w.service.services.catalogue.types:
        pytest.skip("the disputes plugin (DSP-5) is not loaded")
    await asyncio.gather(w.regular_buyer("upd-b1"), w.regular_buyer("upd-b2"))
    silent = await w.order("upd-b1", "upd-s", delivery_days=10)
    answered = await w.order("upd-b2", "upd-s", delivery_days=10)
    request_ids = {}
    for buyer_id, order_id in (("upd-b1", silent), ("upd-b2", answered)):
        opened = await w.buyer(buyer_id).post(f"/orders/{order_id}/resolution/requests",
                                              {"kind": "update_request", "explanation": "Any news?"}, expect=201)
        request_ids[order_id] = opened["id"]
    await w.seller("upd-s").post(f"/orders/{answered}/resolution/requests/{request_ids[answered]}/answer",
                                 {"answer": "reply", "message": "Half done, files on Friday."}, expect=200)
    await w.advance(48 * H)  # DSP-5: the seller's 48 h are over
    await w.h.probe.wait_for("dispute.request_expired", lambda m: m.subject == silent)
    await w.cancel(silent)
    await w.cancel(answered)

    def silence_known(e: dict[str, Any]) -> bool:
        return e["state"] == "cancelled" and bool(
            condition(e, "REV-1", "unanswered")["facts"]["unanswered_update_requests"])

    answer = await w.eligibility("upd-b1", silent, silence_known)
    unanswered = condition(answer, "REV-1", "unanswered")
    assert unanswered["holds"] is True and "DSP-5" in unanswered["detail"]
    assert unanswered["facts"]["unanswered_update_requests"] == [request_ids[silent]]
    await w.review("upd-b1", silent, expect=201)

    answer = await w.cancelled("upd-b2", answered)
    assert condition(answer, "REV-1", "unanswered")["holds"] is False
    problem(w.buyer("upd-b2"), await w.review("upd-b2", answered), 409, rule="REV-1")
