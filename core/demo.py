"""`rescenter demo`: a small, realistic data set, loaded through the public HTTP API of a
running service, so that every page and query has something to show.

Three sellers and four buyers; orders in every state (one of them late); a resolution-center
request of each kind (DSP-2 to DSP-8), answered, expired or open; a cancelled order with a
review and the seller's reply; a cancellation support flagged (MET-2); an away seller (AVL-1)
and a blocked buyer (BLK-1).

It only calls the API, as a client would, with tokens minted with the configured secret. Run
twice, it adds nothing twice: every command carries an Idempotency-Key derived from its step
(so an order's id is the same on every run), and each step first reads what is there and
does only what is missing, so a run after the keys expired changes nothing either.

Some states need time to pass (an order late, a delivery completing itself, an answer window
and a review window ending). With a test clock (`clock.mode = "test"`) the demo moves it;
otherwise it says what it leaves out.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TextIO

import aiohttp

from core.http.auth import issue_token
from core.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8080"

SELLERS = ("maya", "tomas", "ines")
BUYERS = ("noah", "lena", "omar", "priya")
SUPPORT = "demo-support"
ADMIN = "demo-admin"

FINAL = ("completed", "cancelled")


class DemoError(Exception):
    """The service refused a step, or never reached the state the step waits for."""


@dataclass(frozen=True)
class Plan:
    """One order of the data set and the state it is driven to."""

    name: str
    buyer: str
    seller: str
    gig: str
    price: str
    delivery_days: int
    target: str
    requirements: str
    delivery: str = ""
    #: placed once the clock has moved, so that it still waits on someone
    later: bool = False


# Placed in this order (ines's before she goes away); `first-logo` is completed before noah
# reviews `brand-kit` (REV-2).
PLANS = [
    Plan("first-logo", "noah", "maya", "logo-design", "120.00", 5, "completed",
         "A round logo for a bakery called Crumb, navy and cream.", "Three concepts, final files attached."),
    Plan("brand-kit", "noah", "maya", "brand-kit", "340.00", 7, "delivered",
         "Business cards, letterhead and social banners to match the Crumb logo.",
         "Cards and letterhead attached; banners to follow."),
    Plan("refunded-brand-kit", "lena", "maya", "brand-kit", "150.00", 5, "completed",
         "A small brand kit for a yoga studio.", "The kit, in print and web formats."),
    Plan("late-landing-page", "omar", "tomas", "landing-page", "450.00", 1, "in_progress",
         "A landing page for a food truck, with the weekly menu."),
    Plan("wordpress-fix", "lena", "tomas", "wordpress-fix", "60.00", 2, "delivered",
         "The contact form of my site sends nothing.", "Fixed: the mail plugin was misconfigured."),
    Plan("mistaken-blog-post", "lena", "ines", "blog-post", "45.00", 3, "awaiting_requirements", ""),
    Plan("waiting-blog-post", "priya", "ines", "blog-post", "45.00", 3, "awaiting_requirements", "", later=True),
    Plan("landing-page", "noah", "tomas", "landing-page", "450.00", 6, "in_progress",
         "A landing page for the bakery's pre-orders.", later=True),
    Plan("logo-extras", "omar", "maya", "logo-design", "120.00", 4, "delivered",
         "A logo for the food truck: a taco with a crown.", "Two concepts attached.", later=True),
    Plan("logo-revision", "priya", "maya", "logo-design", "120.00", 4, "in_revision",
         "A monogram logo, P and K.", "The monogram, three colourways.", later=True),
]
PLAN = {plan.name: plan for plan in PLANS}


class Api:
    """The service's HTTP API, as the demo's users: one token per user, every command with an
    Idempotency-Key."""

    def __init__(self, session: aiohttp.ClientSession, base: str, settings: Settings) -> None:
        self.session = session
        self.base = base.rstrip("/")
        roles = {**{s: ["seller"] for s in SELLERS}, **{b: ["buyer"] for b in BUYERS},
                 SUPPORT: ["support"], ADMIN: ["admin"]}
        self.tokens = {user: issue_token(settings.auth, user, user_roles) for user, user_roles in roles.items()}

    async def call(self, method: str, path: str, user: str | None, body: Any = None, *, key: str | None = None,
                   ok: tuple[int, ...] = (200, 201)) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        if key is not None:
            headers["Idempotency-Key"] = f"demo:{key}"
        try:
            async with self.session.request(method, self.base + path, json=body, headers=headers) as response:
                payload = await response.json(content_type=None) if await response.read() else None
                status = response.status
        except aiohttp.ClientConnectionError as exc:
            raise DemoError(f"no service answers at {self.base} ({exc}); start one with scripts/run") from None
        if status not in ok:
            detail = payload.get("detail") if isinstance(payload, dict) else payload
            rule = f" [{payload['rule']}]" if isinstance(payload, dict) and payload.get("rule") else ""
            raise DemoError(f"{method} {path} as {user}: {status} {detail}{rule}")
        return status, payload

    async def get(self, path: str, user: str | None, **kw: Any) -> Any:
        return (await self.call("GET", path, user, **kw))[1]

    async def post(self, path: str, user: str, body: Any = None, *, key: str) -> Any:
        return (await self.call("POST", path, user, body, key=key))[1]

    async def put(self, path: str, user: str, body: Any = None, *, key: str) -> Any:
        return (await self.call("PUT", path, user, body, key=key))[1]


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 20.0) -> Any:
    """Poll until `check` returns something truthy: what the plugins learn from the bus
    arrives a moment after the answer that caused it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise DemoError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


class Demo:
    def __init__(self, api: Api, out: TextIO) -> None:
        self.api = api
        self.out = out
        self.orders: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []
        self.test_clock = False

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ------------------------------------------------------------ orders

    async def place(self, plan: Plan) -> dict[str, Any]:
        """The same request every run: the Idempotency-Key replays the first answer, and once the
        key has expired the order id it derives is the same, so the core returns that order."""
        order = await self.api.post("/orders", plan.buyer, {
            "seller_id": plan.seller, "gig_id": plan.gig, "delivery_days": plan.delivery_days,
            "price": {"amount": plan.price, "currency": "EUR"}}, key=f"{plan.name}:place")
        self.orders[plan.name] = order
        return order

    async def order(self, name: str) -> dict[str, Any]:
        self.orders[name] = await self.api.get(f"/orders/{self.orders[name]['id']}", SUPPORT)
        return self.orders[name]

    async def drive(self, plan: Plan, target: str | None = None) -> dict[str, Any]:
        """Move the order forward until it is in `target` (ORD-1), one command per step."""
        target = target or plan.target
        order = await self.order(plan.name)
        path = f"/orders/{order['id']}"
        while order["state"] != target and order["state"] not in FINAL:
            state, step = order["state"], f"{plan.name}:{order['version']}"
            if state == "awaiting_requirements":
                order = await self.api.post(f"{path}/requirements", plan.buyer,
                                            {"requirements": plan.requirements}, key=step)
            elif state in ("in_progress", "in_revision") and target in ("delivered", "in_revision", "completed"):
                order = await self.api.post(f"{path}/deliveries", plan.seller,
                                            {"message": plan.delivery, "attachments": [f"{plan.gig}.zip"]},
                                            key=step)
            elif state == "delivered" and target == "completed":
                order = await self.api.post(f"{path}/acceptance", plan.buyer, key=step)
            elif state == "delivered" and target == "in_revision":
                order = await self.api.post(f"{path}/revisions", plan.buyer,
                                            {"reason": "Could the letters be thinner?"}, key=step)
            else:
                break  # already past the target (time moved it on): leave it
        self.orders[plan.name] = order
        return order

    async def wait_for_state(self, name: str, state: str) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            order = await self.order(name)
            return order if order["state"] == state else None

        return await _until(reached, f"order {name} to be {state}")

    # ------------------------------------------------------------ resolution center

    async def request(self, name: str, by: str, body: dict[str, Any]) -> dict[str, Any]:
        """The order's request of that kind, opened unless one was (DSP-9: one of each kind)."""
        found = await self._request_of_kind(name, body["kind"])
        if found is not None:
            return found
        return await self.api.post(f"/orders/{self.orders[name]['id']}/resolution/requests", by, body,
                                   key=f"{name}:{body['kind']}")

    async def _request_of_kind(self, name: str, kind: str) -> dict[str, Any] | None:
        center = await self.api.get(f"/orders/{self.orders[name]['id']}/resolution", SUPPORT)
        return next((request for request in center["requests"] if request["kind"] == kind), None)

    async def answer(self, name: str, request: dict[str, Any], by: str, answer: str) -> dict[str, Any]:
        if request["state"] != "open":
            return request
        return await self.api.post(
            f"/orders/{self.orders[name]['id']}/resolution/requests/{request['id']}/answer", by,
            {"answer": answer}, key=f"{name}:{request['kind']}:answer")

    # ------------------------------------------------------------ the data set

    async def run(self) -> None:
        clock = await self.api.get("/admin/clock", ADMIN)
        self.test_clock = clock["mode"] == "test"
        for plan in PLANS:
            if not plan.later:
                await self.place(plan)
        await self.completed_orders()
        await self.cancelled_with_review()
        await self.flagged_cancellation()
        await self.waiting_on_time()
        if self.test_clock:
            await self.move_the_clock()
        else:
            self.skipped += [
                "late-landing-page stays in progress: it becomes late (ORD-2) and omar's update request "
                "expires unanswered (DSP-5) when their time comes",
                "wordpress-fix stays delivered: it completes itself 3 days after its delivery (ORD-4)",
                "maya's reply to noah's review: she may reply once the 5-day review window has closed (REV-5)",
            ]
        await self.review_reply()
        for plan in PLANS:
            if plan.later:
                await self.place(plan)
        await self.open_requests()
        await self.blocked_buyer()
        await self.away_seller()
        await self.report(clock["mode"])

    async def completed_orders(self) -> None:
        await self.drive(PLAN["first-logo"])
        # DSP-2, DSP-3: a partial refund offered while the work runs, accepted; the order goes on.
        await self.drive(PLAN["refunded-brand-kit"], "in_progress")
        refund = await self.request("refunded-brand-kit", "maya", {
            "kind": "partial_refund", "amount": {"amount": "30.00", "currency": "EUR"},
            "reason": "compensation_for_delay",
            "explanation": "The print files took two days longer than promised; 30 EUR back for the wait."})
        await self.answer("refunded-brand-kit", refund, "lena", "accept")
        await self.drive(PLAN["refunded-brand-kit"])

    async def cancelled_with_review(self) -> None:
        """DSP-4: the seller asks the buyer to cancel, the buyer accepts; REV-1 (a delivery was
        received) and REV-2 (noah completed first-logo) let noah review the cancelled order."""
        await self.drive(PLAN["brand-kit"])
        if await self._request_of_kind("brand-kit", "seller_cancel_request") is None:
            # A frozen test clock would put the cancellation at the instant noah placed his first
            # order, which MET-2 would read as a new order after it; a real clock has moved on.
            await self.time_passes("PT6H")
        ask = await self.request("brand-kit", "maya", {
            "kind": "seller_cancel_request", "reason": "I cannot finish the banners in time.",
            "note": "Sorry, Noah: keep the cards and letterhead."})
        await self.answer("brand-kit", ask, "noah", "accept")
        order = await self.wait_for_state("brand-kit", "cancelled")
        path = f"/orders/{order['id']}/review"
        status, _ = await self.api.call("GET", path, "noah", ok=(200, 404))
        if status == 404:
            async def eligible() -> bool:
                return (await self.api.get(f"/orders/{order['id']}/review-eligibility", "noah"))["eligible"]

            await _until(eligible, "noah's cancelled brand-kit order to be reviewable (REV-1, REV-2)")
            await self.api.post(path, "noah", {
                "rating": 2, "text": "The cards are lovely, but the kit was cancelled half done."},
                key="brand-kit:review")

    async def flagged_cancellation(self) -> None:
        """Support cancels an order placed twice by mistake and flags it (MET-2: not counted)."""
        plan = PLAN["mistaken-blog-post"]
        order = await self.order(plan.name)
        if order["state"] not in FINAL:
            order = await self.api.post(f"/orders/{order['id']}/cancellation", SUPPORT,
                                        {"reason": "Placed twice by mistake."}, key=f"{plan.name}:cancel")
            self.orders[plan.name] = order
        flag = await self.api.get(f"/orders/{order['id']}/cancellation-flag", SUPPORT)
        if flag["flag"] is None:
            await self.api.put(f"/orders/{order['id']}/cancellation-flag", SUPPORT, {
                "flag": "mistaken_order", "note": "The buyer ordered the same post twice."},
                key=f"{plan.name}:flag")

    async def waiting_on_time(self) -> None:
        await self.drive(PLAN["late-landing-page"])
        await self.request("late-landing-page", "omar", {
            "kind": "update_request", "explanation": "Is the menu section started? The truck opens Friday."})
        await self.drive(PLAN["wordpress-fix"])

    async def time_passes(self, duration: str) -> None:
        """A test clock moves only when told to: move it a little between two steps of a story."""
        if self.test_clock:
            moved = await self.api.post("/admin/clock/advance", ADMIN, {"by": duration},
                                        key=f"clock:{duration}:{await self._now()}")
            self.say(f"moved the test clock by {duration} to {datetime.fromisoformat(moved['now']):%Y-%m-%d %H:%M} UTC")

    async def _now(self) -> str:
        return str((await self.api.get("/admin/clock", ADMIN))["now"])

    async def move_the_clock(self) -> None:
        """Forward to the latest instant something waits for, only if something still waits."""
        now = datetime.fromisoformat(await self._now())
        waits: list[datetime] = []
        late = await self.order("late-landing-page")
        if not late["late"] and late["state"] == "in_progress":
            waits.append(datetime.fromisoformat(late["due_at"]))
        fix = await self.order("wordpress-fix")
        if fix["state"] == "delivered":
            waits.append(datetime.fromisoformat(fix["auto_complete_at"]))
        review = await self._review()
        if review and review.get("reply") is None:
            waits.append(datetime.fromisoformat(review["window_closes_at"]))
        if not waits or max(waits) < now:
            return  # nothing waits for time any more: an earlier run moved the clock
        target = max(waits) + timedelta(hours=1)
        await self.api.post("/admin/clock/advance", ADMIN, {"to": target.isoformat()},
                            key=f"clock:{target.isoformat()}")
        self.say(f"moved the test clock from {now:%Y-%m-%d %H:%M} to {target:%Y-%m-%d %H:%M} UTC")
        await self.wait_for_state("wordpress-fix", "completed")

    async def _review(self) -> dict[str, Any] | None:
        status, review = await self.api.call("GET", f"/orders/{self.orders['brand-kit']['id']}/review", "maya",
                                             ok=(200, 404))
        return review if status == 200 else None

    async def review_reply(self) -> None:
        """REV-5: once noah's window has closed, maya answers, once, publicly."""
        review = await self._review()
        now = datetime.fromisoformat(await self._now())
        if review and review.get("reply") is None and datetime.fromisoformat(review["window_closes_at"]) <= now:
            await self.api.post(f"/orders/{self.orders['brand-kit']['id']}/review/reply", "maya", {
                "text": "We agreed to stop; the banners are yours at no charge whenever you want them."},
                key="brand-kit:reply")

    async def open_requests(self) -> None:
        """A request of each remaining kind, left open for the other party to answer."""
        await self.request("waiting-blog-post", "priya", {
            "kind": "buyer_cancel_request", "feedback": "I found the post I needed elsewhere.",
            "confidential_reason": "A colleague wrote it in the end.",
            "explanation": "No requirements sent yet, so nothing was started.",
            "evidence": ["Order placed, requirements never submitted."]})
        await self.drive(PLAN["landing-page"])
        await self.request("landing-page", "tomas", {
            "kind": "extension_request", "days": 3,
            "reason": "The pre-order widget needs the payment provider's approval."})
        await self.drive(PLAN["logo-extras"])
        await self.request("logo-extras", "maya", {
            "kind": "extra_offer", "description": "Two more concepts and a matching menu header.",
            "revisions": 2, "days": 2, "price": {"amount": "25.00", "currency": "EUR"}})
        await self.drive(PLAN["logo-revision"])

    async def blocked_buyer(self) -> None:
        """BLK-1: tomas takes no more orders from priya (she has none running with him, BLK-2)."""
        blocked = await self.api.get("/blocking/sellers/tomas/blocked-buyers", "tomas")
        if not any(b["buyer_id"] == "priya" for b in blocked["blocked_buyers"]):
            await self.api.put("/blocking/sellers/tomas/blocked-buyers/priya", "tomas", key="block:priya")

    async def away_seller(self) -> None:
        """AVL-1: ines is away for two weeks (her running order goes on)."""
        if (await self.api.get("/availability/sellers/ines", None))["away"] is None:
            now = datetime.fromisoformat(await self._now())
            until = (now + timedelta(days=14)).replace(hour=9, minute=0, second=0, microsecond=0)
            await self.api.put("/availability/sellers/ines/away", "ines", {
                "until": until.isoformat(), "note": "At a writers' retreat, without internet."},
                key=f"away:{until.isoformat()}")

    async def report(self, clock_mode: str) -> None:
        self.say("orders (buyer -> seller, gig: state):")
        for plan in PLANS:
            order = await self.order(plan.name)
            center = await self.api.get(f"/orders/{order['id']}/resolution", SUPPORT)
            requests = ", ".join(f"{r['kind']} {r['state']}" for r in center["requests"])
            late = " (late)" if order.get("late") else ""
            self.say(f"  {order['id']}  {plan.buyer} -> {plan.seller}, {plan.gig}: {order['state']}{late}"
                     + (f"; {requests}" if requests else ""))
        self.say("maya reviewed by noah (cancelled order); tomas blocked priya; ines is away")
        for line in self.skipped:
            self.say(f"skipped ({clock_mode} clock): {line}")
        self.say(f"users: sellers {', '.join(SELLERS)}; buyers {', '.join(BUYERS)}; "
                 "a token: rescenter token maya seller")


async def load(settings: Settings, url: str, out: TextIO = sys.stdout) -> None:
    """Load the demo data set into the service at `url` (raises DemoError)."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        demo = Demo(Api(session, url, settings), out)
        await demo.run()


__all__ = ["DEFAULT_URL", "DemoError", "PLANS", "SELLERS", "BUYERS", "load"]
