"""Blocking (BLK-1 to BLK-3) over HTTP against real RabbitMQ and the MongoDB-wire
server: a blocked buyer's orders are refused in words that do not name the block,
a buyer with an active order cannot be blocked (and the seller is told which
orders), the list is the seller's alone, events, restarts, the plugin switched off."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from core.service import Service
from tests.harness import ORDER, Client, Harness
from tests.support import problem


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared() -> AsyncIterator[tuple[Harness, Service]]:
    """One instance for the tests below; each uses its own seller and buyers."""
    async with Harness() as h:
        yield h, await h.start_instance()


class World:
    def __init__(self, h: Harness, service: Service) -> None:
        self.h, self.service = h, service
        tag = uuid.uuid4().hex[:8]
        self.seller_id, self.buyer_id = f"seller-{tag}", f"buyer-{tag}"
        self.seller = h.client(service, self.seller_id, "seller")
        self.buyer = h.client(service, self.buyer_id, "buyer")
        self.other_buyer = h.client(service, f"other-buyer-{tag}", "buyer")
        self.support = h.client(service, "support-1", "support")
        self.admin = h.client(service, "admin-1", "admin")
        self.list_path = f"/blocking/sellers/{self.seller_id}/blocked-buyers"
        self.path = f"{self.list_path}/{self.buyer_id}"

    async def place(self, buyer: Client, seller_id: str | None = None) -> Any:
        return await buyer.post("/orders", {**ORDER, "seller_id": seller_id or self.seller_id})

    async def delete(self, client: Client, path: str, **kw: Any) -> Any:
        return await client.request("DELETE", path, **kw)

    def seller_events(self) -> list[Any]:
        return [m for m in self.h.probe.messages if m.subject == f"seller:{self.seller_id}"]

    async def wait_for(self, type_: str, count: int = 1) -> list[Any]:
        return await self.h.probe.wait_for(type_, lambda m: m.subject == f"seller:{self.seller_id}", count=count)


@pytest.fixture
def world(shared: tuple[Harness, Service]) -> World:
    return World(*shared)


#: a discreet veto: the buyer gets the reason, never the plugin, its rule or details
CORE_PROBLEM_MEMBERS = {"type", "title", "status", "detail", "instance", "rule"}
REFUSAL = "This seller does not take orders from your account. You may find the same service from another seller."


async def test_BLK_1_a_blocked_buyer_cannot_order_and_is_not_told_about_a_block(world: World) -> None:
    listed = await world.seller.put(world.path, expect=200)
    assert [b["buyer_id"] for b in listed["blocked_buyers"]] == [world.buyer_id]

    refused = problem(world.buyer, await world.place(world.buyer), 409, rule="ORD-5", detail=REFUSAL)
    assert "block" not in refused["detail"].lower()
    assert set(refused) <= CORE_PROBLEM_MEMBERS  # no detail that would tell about the block
    assert (await world.buyer.get("/orders", expect=200))["orders"] == []  # nothing stored

    # Another buyer orders from this seller; the blocked buyer orders from other sellers.
    await world.place(world.other_buyer)
    assert world.other_buyer.last_status == 201
    await world.place(world.buyer, seller_id=f"{world.seller_id}-elsewhere")
    assert world.buyer.last_status == 201

    [event] = await world.wait_for("blocking.buyer_blocked")
    assert event.data == {"seller_id": world.seller_id, "buyer_id": world.buyer_id, "rule": "BLK-1",
                          "actor": {"id": world.seller_id, "role": "seller"}}


async def test_BLK_1_the_refusal_names_no_block_anywhere_in_the_answer(world: World) -> None:
    await world.seller.put(world.path, expect=200)
    refused = await world.place(world.buyer)
    assert world.buyer.last_status == 409
    text = json.dumps(refused).lower()
    assert "block" not in text and "blk" not in text


async def test_BLK_1_blocking_twice_changes_nothing_and_a_seller_cannot_block_themselves(world: World) -> None:
    await world.seller.put(world.path, expect=200)
    await world.seller.put(world.path, expect=200)
    answer = await world.seller.put(f"{world.list_path}/{world.seller_id}")
    problem(world.seller, answer, 422, rule="BLK-1")
    await world.h.probe.settle(0.3)
    assert [m.type for m in world.seller_events()] == ["blocking.buyer_blocked"]


async def test_BLK_2_a_buyer_with_active_orders_cannot_be_blocked_and_the_seller_is_told_which(
        world: World) -> None:
    first = await world.place(world.buyer)
    second = await world.place(world.buyer)
    await world.place(world.buyer, seller_id=f"{world.seller_id}-elsewhere")  # another seller's: irrelevant
    await world.buyer.post(f"/orders/{second['id']}/requirements", {"requirements": "x"}, expect=200)

    answer = await world.seller.put(world.path)
    refused = problem(world.seller, answer, 409, rule="BLK-2", buyer_id=world.buyer_id)
    assert sorted(refused["order_ids"]) == sorted([first["id"], second["id"]])
    assert first["id"] in refused["detail"] and second["id"] in refused["detail"]
    # Nothing changed: not on the list, still ordering, nothing published.
    assert (await world.seller.get(world.list_path, expect=200))["blocked_buyers"] == []
    third = await world.place(world.buyer)
    assert world.buyer.last_status == 201

    # Once every order with this seller is final, the buyer can be blocked.
    for order in (first, second, third):
        await world.support.post(f"/orders/{order['id']}/cancellation", {"reason": "r"}, expect=200)
    await world.seller.put(world.path, expect=200)
    await world.wait_for("blocking.buyer_blocked")
    assert [m.type for m in world.seller_events()] == ["blocking.buyer_blocked"]


async def test_BLK_3_the_seller_unblocks_and_the_buyer_orders_again(world: World) -> None:
    await world.seller.put(world.path, expect=200)
    other = f"{world.list_path}/another-buyer"
    await world.seller.put(other, expect=200)
    listed = await world.seller.get(world.list_path, expect=200)
    assert [b["buyer_id"] for b in listed["blocked_buyers"]] == [world.buyer_id, "another-buyer"]
    assert all(b["blocked_at"] for b in listed["blocked_buyers"])
    problem(world.buyer, await world.place(world.buyer), 409, detail=REFUSAL)

    listed = await world.delete(world.seller, world.path, expect=200)
    assert [b["buyer_id"] for b in listed["blocked_buyers"]] == ["another-buyer"]
    await world.delete(world.seller, world.path, expect=200)  # unblocked already: nothing changes
    await world.place(world.buyer)
    assert world.buyer.last_status == 201

    await world.wait_for("blocking.buyer_unblocked")
    await world.h.probe.settle(0.3)
    assert [m.type for m in world.seller_events()] == [
        "blocking.buyer_blocked", "blocking.buyer_blocked", "blocking.buyer_unblocked"]
    assert world.seller_events()[-1].data["rule"] == "BLK-3"


async def test_BLK_3_nobody_but_the_seller_and_support_sees_or_changes_the_list(world: World) -> None:
    await world.seller.put(world.path, expect=200)
    other_seller = world.h.client(world.service, "seller-other", "seller")
    anonymous = world.h.client(world.service)
    for client in (world.buyer, other_seller, world.h.client(world.service, "svc", "service")):
        problem(client, await client.get(world.list_path), 403)
        problem(client, await client.put(f"{world.list_path}/someone"), 403)
        problem(client, await world.delete(client, world.path), 403)
    problem(anonymous, await anonymous.get(world.list_path), 401)

    listed = await world.support.get(world.list_path, expect=200)
    assert [b["buyer_id"] for b in listed["blocked_buyers"]] == [world.buyer_id]
    # Support acts for the seller; the event says who did it.
    await world.delete(world.support, world.path, expect=200)
    [event] = await world.wait_for("blocking.buyer_unblocked")
    assert event.data["actor"] == {"id": "support-1", "role": "support"}
    assert (await world.seller.get(world.list_path, expect=200))["blocked_buyers"] == []


async def test_BLK_1_concurrent_blocks_and_unblocks_of_many_buyers_lose_none(world: World) -> None:
    buyers = [f"buyer-{n}" for n in range(8)]
    await asyncio.gather(*(world.seller.put(f"{world.list_path}/{b}", expect=200) for b in buyers))
    listed = await world.seller.get(world.list_path, expect=200)
    assert sorted(b["buyer_id"] for b in listed["blocked_buyers"]) == buyers
    await asyncio.gather(*(world.delete(world.seller, f"{world.list_path}/{b}", expect=200) for b in buyers[:4]))
    listed = await world.seller.get(world.list_path, expect=200)
    assert sorted(b["buyer_id"] for b in listed["blocked_buyers"]) == buyers[4:]
    await world.wait_for("blocking.buyer_unblocked", count=4)
    assert len([m for m in world.seller_events() if m.type == "blocking.buyer_blocked"]) == 8


async def test_BLK_1_the_block_survives_a_restart_and_switching_the_plugin_off_lets_orders_through() -> None:
    async with Harness() as h:
        first = await h.start_instance()
        before = World(h, first)
        await before.seller.put(before.path, expect=200)
        await first.stop()

        second = await h.start_instance()
        seller = h.client(second, before.seller_id, "seller")
        buyer = h.client(second, before.buyer_id, "buyer")
        admin = h.client(second, "admin-1", "admin")
        payload = {**ORDER, "seller_id": before.seller_id}
        listed = await seller.get(before.list_path, expect=200)
        assert [b["buyer_id"] for b in listed["blocked_buyers"]] == [before.buyer_id]
        problem(buyer, await buyer.post("/orders", payload), 409, rule="ORD-5", detail=REFUSAL)

        await admin.put("/admin/plugins/blocking", {"enabled": False}, expect=200)
        await buyer.post("/orders", payload, expect=201)
        problem(seller, await seller.get(before.list_path), 503, plugin="blocking")

        await admin.put("/admin/plugins/blocking", {"enabled": True}, expect=200)
        problem(buyer, await buyer.post("/orders", payload), 409, rule="ORD-5", detail=REFUSAL)
