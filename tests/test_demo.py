"""`rescenter demo` (issue 16): a small data set through the public API, in which every page and
query has something to show, and which a second run does not add to."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from core.service import Service
from tests.harness import Harness

ROOT = Path(__file__).resolve().parent.parent
SELLERS = ("maya", "tomas", "ines")
STATES = {"awaiting_requirements", "in_progress", "delivered", "in_revision", "completed", "cancelled"}
KINDS = {"partial_refund", "seller_cancel_request", "update_request", "buyer_cancel_request", "extension_request",
         "extra_offer"}


async def run_demo(service: Service) -> str:
    """`rescenter demo --url ...` of this checkout, as a separate process, with the configuration
    the instance was started with (the same token secret)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.cli", "demo", "--url", f"http://127.0.0.1:{service.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def data_set(h: Harness, service: Service) -> dict[str, Any]:
    """What the demo's users see: their orders, each order's requests, the reviews, the rest."""
    support = h.client(service, "support-1", "support")
    orders: dict[str, dict[str, Any]] = {}
    for seller in SELLERS:
        for order in (await h.client(service, seller, "seller").get("/orders?as=seller", expect=200))["orders"]:
            orders[order["id"]] = order
    requests = []
    for order_id in orders:
        requests += (await support.get(f"/orders/{order_id}/resolution", expect=200))["requests"]
    anyone = h.client(service)
    return {
        "orders": orders,
        "requests": requests,
        "reviews": (await anyone.get("/sellers/maya/reviews", expect=200))["reviews"],
        "ines": await anyone.get("/availability/sellers/ines", expect=200),
        "blocked": (await h.client(service, "tomas", "seller").get("/blocking/sellers/tomas/blocked-buyers",
                                                                   expect=200))["blocked_buyers"],
        "ines_metrics": await h.client(service, "ines", "seller").get("/sellers/ines/metrics", expect=200),
        "clock": (await h.client(service, "admin-1", "admin").get("/admin/clock", expect=200))["now"],
    }


def fingerprint(data: dict[str, Any]) -> tuple[Any, ...]:
    return (sorted((o["id"], o["state"], o["version"]) for o in data["orders"].values()),
            sorted((r["id"], r["state"]) for r in data["requests"]), data["reviews"], data["ines"],
            data["blocked"], data["clock"])


async def test_demo_loads_every_state_and_a_second_run_adds_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        first = await run_demo(service)
        assert "moved the test clock" in first, first
        data = await data_set(h, service)
        orders = list(data["orders"].values())

        states = Counter(o["state"] for o in orders)
        assert set(states) == STATES, states
        assert any(o["late"] and o["state"] == "in_progress" for o in orders), "no late order (ORD-2)"
        assert {r["kind"] for r in data["requests"]} == KINDS
        assert {r["state"] for r in data["requests"]} >= {"open", "accepted", "expired"}
        [review] = data["reviews"]  # REV-6: a review of a cancelled order, with the seller's reply (REV-5)
        assert review["label"] == "cancelled_order" and review["reply"] is not None
        cancelled = data["orders"][review["review_id"].removeprefix("rev-")]
        assert cancelled["state"] == "cancelled" and cancelled["cancel_cause"] == "mutual_agreement"
        assert data["ines"]["available"] is False and data["ines"]["away"]["note"]  # AVL-1
        assert [b["buyer_id"] for b in data["blocked"]] == ["priya"]  # BLK-1
        assert data["ines_metrics"]["completion_rate"]["cancellations_excluded"] == 1  # MET-2: flagged
        assert len({o["buyer_id"] for o in orders}) == 4

        await h.probe.settle(0.5)
        published = len(h.probe.messages)
        second = await run_demo(service)
        await h.probe.settle(0.5)
        assert "moved the test clock" not in second, second
        assert len(h.probe.messages) == published, [m.type for m in h.probe.messages[published:]]
        assert fingerprint(await data_set(h, service)) == fingerprint(data)


async def test_demo_on_the_system_clock_says_what_it_leaves_out() -> None:
    async with Harness() as h:
        service = await h.start_instance(clock={"mode": "system"})
        output = await run_demo(service)
        assert "moved the test clock" not in output
        for rule in ("ORD-2", "ORD-4", "REV-5"):
            assert "skipped (system clock): " in output and rule in output, output
        data = await data_set(h, service)
        assert {o["state"] for o in data["orders"].values()} == STATES
        assert not any(o["late"] for o in data["orders"].values())
        assert {r["kind"] for r in data["requests"]} == KINDS
        assert data["reviews"][0]["reply"] is None

