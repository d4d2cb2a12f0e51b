"""The console (/console) in a real browser: headless Chromium, as an operator uses it.
Each page visited is saved under docs/console/ (the README shows them) and checked
with axe-core: no serious accessibility violation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests import flaky_plugin
from tests.browser import Browser, start_driver
from tests.harness import ORDER, Harness
from tests.support import eventually
from tests.test_dead_letters import FLAKY, dead_letter_pokes, handled
from tests.test_reviews import World

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    driver = start_driver()
    yield driver
    driver.quit()


@pytest.fixture
async def console(driver: Any) -> AsyncIterator[tuple[Harness, Any, Browser]]:
    async with Harness() as h:
        service = await h.start_instance()
        yield h, service, Browser(driver, f"http://127.0.0.1:{service.port}")


async def started_order(h: Harness, service: Any, buyer: str = "buyer-1") -> dict[str, Any]:
    """An order in progress: placed, its requirements in, due in 3 days (ORD-2)."""
    client = h.client(service, buyer, "buyer")
    order = await client.post("/orders", ORDER, expect=201)
    return await client.post(f"/orders/{order['id']}/requirements", {"requirements": "A logo"}, expect=200)


async def test_sign_in_keeps_the_token_in_an_HttpOnly_SameSite_Strict_cookie(console: Any) -> None:
    h, _, browser = console
    await browser.do(browser.open, "/console/")
    assert "Sign in" in await browser.do(browser.title)
    await browser.do(browser.check, "sign-in")
    await browser.do(browser.sign_in, h.token("ada", "admin"))
    text = await browser.do(browser.text)
    assert "Signed in as ada" in text and "Plugins" in text
    await browser.do(browser.check, "home")
    cookie = await browser.do(browser.cookie, "rescenter_session")
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"


async def test_a_bad_token_is_refused_with_a_readable_problem(console: Any) -> None:
    _, _, browser = console
    await browser.do(browser.sign_in, "not-a-token")
    text = await browser.do(browser.text)
    assert "Not authenticated" in text and "invalid token" in text and '"status"' not in text
    assert await browser.do(browser.cookie, "rescenter_session") is None


async def test_ORD_5_admin_switches_a_plugin_off_and_on_after_confirming(console: Any) -> None:
    h, service, browser = console
    plugins = service.services.plugins
    await browser.do(browser.sign_in, h.token("ada", "admin"))
    await browser.do(browser.open, "/console/plugins")
    text = await browser.do(browser.text)
    for name in ("availability", "blocking", "disputes", "metrics", "reviews"):
        assert name in text
    await browser.do(browser.check, "plugins")

    await browser.do(browser.click, "Switch availability off")
    assert "Switch availability off?" in await browser.do(browser.text)
    assert "availability" in plugins.enabled, "the confirmation page switches nothing"
    await browser.do(browser.check, "plugin-switch")
    await browser.do(browser.click, "Yes, switch availability off")
    assert "The plugin was switched off" in await browser.do(browser.text)
    await eventually(lambda: "availability" not in plugins.enabled, what="availability off")
    await h.client(service).get("/availability/sellers/bob", expect=503)
    await browser.do(browser.open, "/console/sellers/bob")  # a page's part of a plugin that is off
    assert "Plugin disabled\nthe availability plugin is switched off" in await browser.do(browser.text)
    await browser.do(browser.open, "/console/plugins")

    await browser.do(browser.click, "Switch availability on")
    await browser.do(browser.click, "Yes, switch availability on")
    await eventually(lambda: "availability" in plugins.enabled, what="availability back on")
    await h.client(service).get("/availability/sellers/bob", expect=200)


async def test_ORD_6_support_finds_an_order_and_reads_its_timeline_and_requests(console: Any) -> None:
    h, service, browser = console
    order = await started_order(h, service)
    seller = h.client(service, "seller-1", "seller")
    await seller.post(f"/orders/{order['id']}/resolution/requests",
                      {"kind": "extension_request", "days": 2, "reason": "A second colour scheme"}, expect=201)

    await browser.do(browser.sign_in, h.token("sam", "support"))
    await browser.do(browser.open, "/console/orders")
    await browser.do(browser.fill, "q", "buyer-1")
    await browser.do(browser.submit_form, "/console/orders")
    text = await browser.do(browser.text)
    assert "Orders with buyer-1 as buyer" in text and order["id"] in text
    await browser.do(browser.check, "orders")

    await browser.do(browser.fill, "q", order["id"])
    await browser.do(browser.submit_form, "/console/orders")
    text = await browser.do(browser.text)
    assert f"Order {order['id']}" in text and "in_progress" in text
    for line in ("order.placed buyer-1 (buyer) ORD-1", "order.requirements_submitted buyer-1 (buyer) ORD-2"):
        assert line in text
    # DSP-7, DSP-10: the request, its answer window and what silence will do
    assert "extension_request DSP-7 seller → buyer open" in text
    assert "the extension is accepted: the due date moves by 2 day(s)" in text
    assert "answer_window" in text and "order.late" in text  # the deadlines
    await browser.do(browser.check, "order")

    await browser.do(browser.open, "/console/sellers/seller-1")
    text = await browser.do(browser.text)
    assert "Completion rate (MET-1)" in text and "Success score (MET-4)" in text and "Blocked buyers" in text


async def test_MET_2_support_cancels_and_flags_an_order_with_its_forms(console: Any) -> None:
    h, service, browser = console
    order = await started_order(h, service)
    await browser.do(browser.sign_in, h.token("sam", "support"))
    await browser.do(browser.open, f"/console/orders/{order['id']}")
    await browser.do(browser.fill, "cancel-reason", "Placed twice by mistake")
    await browser.do(browser.click, "Cancel the order")
    text = await browser.do(browser.text)
    assert "The order was cancelled." in text and "order.cancelled sam (support)" in text
    assert (await h.client(service, "sam", "support").get(f"/orders/{order['id']}"))["state"] == "cancelled"

    await browser.do(browser.fill, "flag-note", "A duplicate")
    await browser.do(browser.click, "Save the flag")
    await eventually(lambda: "flagged" in browser.driver.page_source, what="the flag saved")
    flag = await h.client(service, "sam", "support").get(f"/orders/{order['id']}/cancellation-flag", expect=200)
    assert flag["flag"] == "fraud" and flag["note"] == "A duplicate"


async def test_ORD_2_admin_advances_the_test_clock_and_sees_a_deadline_fire(console: Any) -> None:
    h, service, browser = console
    order = await started_order(h, service)
    await browser.do(browser.sign_in, h.token("ada", "admin"))
    await browser.do(browser.open, "/console/clock")
    assert "Mode: test" in await browser.do(browser.text)
    await browser.do(browser.fill, "by", "P4D")
    await browser.do(browser.click, "Advance")
    text = await browser.do(browser.text)
    assert "Moved by P4D: what fired" in text and "core order.late" in text, text
    await browser.do(browser.check, "clock")

    await browser.do(browser.open, f"/console/orders/{order['id']}")
    assert "(late, ORD-2)" in await browser.do(browser.text)


async def test_a_buyer_sees_no_admin_page(console: Any) -> None:
    h, _, browser = console
    await browser.do(browser.sign_in, h.token("alice", "buyer"))
    text = await browser.do(browser.text)
    assert "Plugins" not in text and "Clock" not in text
    for path in ("/console/plugins", "/console/clock", "/console/plugins/availability/switch?to=off"):
        await browser.do(browser.open, path)
        text = await browser.do(browser.text)
        assert "Forbidden" in text and "this needs one of the roles" in text, (path, text)
    await browser.do(browser.check, "forbidden")


async def test_a_form_posted_without_its_CSRF_token_is_refused(console: Any) -> None:
    h, service, browser = console
    await browser.do(browser.sign_in, h.token("ada", "admin"))
    await browser.do(browser.open, "/console/plugins/availability/switch?to=off")
    await browser.do(browser.driver.execute_script,
                     "document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    await browser.do(browser.click, "Yes, switch availability off")
    text = await browser.do(browser.text)
    assert "Forbidden" in text and "CSRF token is missing" in text
    assert "availability" in service.services.plugins.enabled


async def test_admin_reads_a_dead_letter_and_replays_it(driver: Any) -> None:
    async with Harness() as h:
        service = await h.start_instance(**FLAKY)
        browser = Browser(driver, f"http://127.0.0.1:{service.port}")
        queue = f"{h.settings.bus.queue_prefix}.flaky_plugin.dead"
        await dead_letter_pokes(h, service, "poke-1", "poke-2")
        await flaky_plugin.set_broken(service.services.store, False)

        await browser.do(browser.sign_in, h.token("ada", "admin"))
        await browser.do(browser.open, "/console/plugins")
        assert "flaky_plugin" in await browser.do(browser.text)
        await browser.do(browser.open, "/console/dead-letters")
        text = await browser.do(browser.text)
        assert f"{queue} flaky_plugin 2" in text and "delivery_limit: 2" in text
        await browser.do(browser.check, "dead-letters")

        await browser.do(browser.click, queue)
        text = await browser.do(browser.text)
        assert "poke-1" in text and "RuntimeError: the flaky plugin is broken and cannot handle poke-1" in text
        await browser.do(browser.check, "dead-letter-queue")

        await browser.do(browser.click, "poke-1")
        text = await browser.do(browser.text)
        assert "Dead letter poke-1" in text and '"note": "note of poke-1"' in text
        await browser.do(browser.check, "dead-letter")
        await browser.do(browser.click, "Replay this message")
        assert "Replayed: poke-1." in await browser.do(browser.text)
        await eventually(lambda: handled(service, "poke-1"), what="the replay handled")
        assert await handled(service, "poke-2") is None, "only the message replayed"

        await browser.do(browser.open, f"/console/dead-letters/{queue}")
        text = await browser.do(browser.text)
        assert "poke-2" in text and "poke-1" not in text

        await browser.do(browser.click, "poke-2")
        await browser.do(browser.fill, "discard-reason", "A test poke, nobody needs it")
        await browser.do(browser.click, "Discard this message")
        assert "Discarded: poke-2." in await browser.do(browser.text)
        assert (await service.services.dead_letters.page(queue)).messages == []
        assert await handled(service, "poke-2") is None, "a discarded message is not handled"


async def test_REV_8_support_removes_a_review_with_a_reason_from_the_order_page(console: Any) -> None:
    h, service, browser = console
    w = World(h, service)
    await w.regular_buyer("rm-b")  # REV-2
    order_id = await w.order("rm-b", "rm-s", deliver=True)  # REV-1: the buyer received a delivery
    await w.cancel(order_id)
    await w.cancelled("rm-b", order_id)
    review = await w.review("rm-b", order_id, rating=1, text="Call me at 555-0100", expect=201)

    await browser.do(browser.sign_in, h.token("sam", "support"))
    await browser.do(browser.open, f"/console/orders/{order_id}")
    text = await browser.do(browser.text)
    assert "1/5, “Call me at 555-0100”" in text and "The buyer may review this order" not in text
    await browser.do(browser.check, "order-review")
    await browser.do(browser.fill, "removal-reason", "Personal contact details (terms 4.2)")
    await browser.do(browser.click, "Remove the review")
    text = await browser.do(browser.text)
    assert "The review was removed" in text and "Personal contact details (terms 4.2) (REV-8)" in text
    removed = await w.support.get(f"/orders/{order_id}/review", expect=200)
    assert removed["review_id"] == review["review_id"] and removed["status"] == "removed"
    assert removed["removal"]["reason"] == "Personal contact details (terms 4.2)"

    # MET-1, MET-4: the seller's figures with the orders behind them, as the metrics plugin heard them
    text = await browser.do(browser.open_until, "/console/sellers/rm-s", f"{order_id} cancelled")
    assert "0.0 %: 0 completed of 1 orders that count" in text and "counts as a cancellation (MET-1)" in text
    await browser.do(browser.check, "seller")


async def test_MET_1_support_replays_a_policy_change_on_the_what_if_page(console: Any) -> None:
    h, service, browser = console
    await started_order(h, service)
    await browser.do(browser.sign_in, h.token("sam", "support"))
    await browser.do(browser.click, "Policy what-if")
    await browser.do(browser.fill, "set", "policy.metrics.completion_window=P90D\npolicy.reviews.review_window=P7D")
    await browser.do(browser.click, "Replay")
    text = await browser.do(browser.text)
    assert "What if policy.metrics.completion_window=P90D, policy.reviews.review_window=P7D" in text, text
    await browser.do(browser.check, "policy-what-if")
