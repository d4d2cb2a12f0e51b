"""`GET /orders`: a party's orders a page at a time (keyset pagination, core.order_pages).

Pages hold every order once, newest first (`placed_at`, then `id`, both descending),
whatever is placed meanwhile; a cursor that no page gave is a 422 problem.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from core.errors import Conflict
from core.messages import Actor, PlaceOrder
from core.order_pages import LISTS
from tests.harness import ORDER, Client, Harness
from tests.support import problem


async def place(buyer: Client, **changes: Any) -> dict[str, Any]:
    return await buyer.post("/orders", {**ORDER, **changes}, expect=201)


async def pages(client: Client, query: str, *, between: Any = None) -> list[list[dict[str, Any]]]:
    """Every page, following `next_cursor`; `between(n)` runs while page n+1 is read."""
    found: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        path = f"/orders?{query}" + (f"&cursor={cursor}" if cursor else "")
        if between is not None and found:
            page, _ = await asyncio.gather(client.get(path, expect=200), between(len(found)))
        else:
            page = await client.get(path, expect=200)
        found.append(page["orders"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def newest_first(orders: list[dict[str, Any]]) -> bool:
    keys = [(o["placed_at"], o["id"]) for o in orders]
    return keys == sorted(keys, reverse=True)


async def test_ORD_6_order_list_pages_hold_every_order_once_in_order_while_orders_are_placed() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        admin = h.client(service, "admin-1", "admin")
        # Three instants (the test clock stands still: ties on placed_at, broken by id).
        before: list[str] = []
        for group in (3, 4, 2):
            for _ in range(group):
                before.append((await place(buyer))["id"])
            await admin.post("/admin/clock/advance", {"by": "PT1S"}, expect=200)
        await place(h.client(service, "buyer-2", "buyer"))  # another buyer's: never listed

        placed_meanwhile: list[str] = []

        async def place_more(n: int) -> None:
            # at the clock's instant (newer than every order above) and later still
            placed_meanwhile.append((await place(buyer, gig_id=f"gig-new-{n}"))["id"])
            await admin.post("/admin/clock/advance", {"by": "PT1S"}, expect=200)
            placed_meanwhile.append((await place(buyer, gig_id=f"gig-later-{n}"))["id"])

        found = await pages(buyer, "limit=2", between=place_more)

        listed = [o for page in found for o in page]
        ids = [o["id"] for o in listed]
        assert sorted(ids) == sorted(before), "every order placed before the first page, once, and no other"
        assert newest_first(listed)
        assert all(len(page) == 2 for page in found[:-1]) and 1 <= len(found[-1]) <= 2
        assert placed_meanwhile and not set(placed_meanwhile) & set(ids)
        assert {o["buyer_id"] for o in listed} == {"buyer-1"}

        # The seller pages the same orders (and buyer-2's) as seller; a first page shows the newest.
        seller = h.client(service, "seller-1", "seller")
        as_seller = [o for page in await pages(seller, "as=seller&limit=3") for o in page]
        assert len(as_seller) == len(before) + 1 + len(placed_meanwhile)
        assert len({o["id"] for o in as_seller}) == len(as_seller) and newest_first(as_seller)
        first = await buyer.get("/orders?limit=1", expect=200)
        assert first["orders"][0]["id"] == placed_meanwhile[-1] and first["next_cursor"]


async def test_ORD_6_order_list_default_page_is_50_and_limit_goes_up_to_200() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        placed = [(await place(buyer))["id"] for _ in range(52)]

        first = await buyer.get("/orders", expect=200)
        assert len(first["orders"]) == 50 and first["next_cursor"]
        rest = await buyer.get(f"/orders?cursor={first['next_cursor']}", expect=200)
        assert len(rest["orders"]) == 2 and rest["next_cursor"] is None
        whole = await buyer.get("/orders?limit=200", expect=200)
        assert sorted(o["id"] for o in whole["orders"]) == sorted(placed) and whole["next_cursor"] is None
        assert [o["id"] for o in whole["orders"]] == [o["id"] for o in first["orders"] + rest["orders"]]
        # Exactly a page's worth left: the last full page says so (no empty page after it).
        exact = await buyer.get("/orders?limit=52", expect=200)
        assert len(exact["orders"]) == 52 and exact["next_cursor"] is None
        assert (await buyer.get("/orders?as=seller", expect=200)) == {"orders": [], "next_cursor": None}


def _cursor(fields: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()


async def test_order_list_a_bad_cursor_or_limit_is_a_422_problem() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        for _ in range(3):
            await place(buyer)
        as_buyer = (await buyer.get("/orders?limit=1", expect=200))["next_cursor"]
        assert as_buyer

        for cursor in ("not-a-cursor", _cursor({"as": "buyer", "at": "yesterday", "id": "x"}),
                       _cursor({"as": "buyer", "at": 1, "id": "x", "skip": 5}), _cursor([1, 2]),
                       _cursor({"as": "buyer", "at": 10**20, "id": "x"}), ""):
            body = await buyer.get(f"/orders?cursor={cursor}")
            assert problem(buyer, body, 422, field="cursor")["detail"]
        # A cursor of the buyer's list does not page the seller's.
        body = await buyer.get(f"/orders?as=seller&cursor={as_buyer}")
        assert "buyer" in problem(buyer, body, 422, field="cursor")["detail"]
        for limit in ("0", "201", "-1", "ten", "1.5", "٣"):
            problem(buyer, await buyer.get(f"/orders?limit={limit}"), 422, field="limit")
        problem(buyer, await buyer.get("/orders?as=staff"), 422, field="as")
        # Good input still answers as before.
        assert len((await buyer.get(f"/orders?cursor={as_buyer}", expect=200))["orders"]) == 2


async def test_ORD_6_order_list_pages_across_months_newest_first() -> None:
    """The list is kept per party and month (core.order_pages): pages run across months,
    more of them than one read takes, and skip the months with nothing for this party."""
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        other = h.client(service, "buyer-2", "buyer")
        admin = h.client(service, "admin-1", "admin")
        placed = []
        for month in range(7):
            for _ in range(month % 3):  # 0, 1 or 2 orders a month
                placed.append((await place(buyer))["id"])
            await place(other)
            await admin.post("/admin/clock/advance", {"by": "P31D"}, expect=200)
        for limit in (1, 2, 3, 50):
            listed = [o for page in await pages(buyer, f"limit={limit}") for o in page]
            assert sorted(o["id"] for o in listed) == sorted(placed) and len(listed) == len(placed), limit
            assert newest_first(listed), limit
        assert len({o["placed_at"][:7] for o in listed}) == 4  # four months with orders, newest first


async def test_ORD_6_an_order_whose_placement_failed_is_not_listed_and_a_taken_id_lists_once() -> None:
    """The list entries are written before the order: a placement refused after them (an id
    already taken by another buyer) leaves an entry that names no order of this buyer."""
    async with Harness() as h:
        service = await h.start_instance()
        assert service.services is not None
        buyer = h.client(service, "buyer-1", "buyer")
        taken = (await place(buyer))["id"]
        command = PlaceOrder(order_id=taken, buyer_id="buyer-2", seller_id="seller-2", gig_id="gig-1",
                             price={"amount": "10.00", "currency": "EUR"}, delivery_days=2)
        with pytest.raises(Conflict):
            await service.services.orders.place(command, Actor(id="market", role="service"))
        assert (await h.client(service, "buyer-2", "buyer").get("/orders", expect=200))["orders"] == []
        assert [o["id"] for o in (await buyer.get("/orders", expect=200))["orders"]] == [taken]
        # A retried placement (the same command again) lists its order once.
        same = PlaceOrder(order_id=taken, buyer_id="buyer-1", seller_id=ORDER["seller_id"], gig_id=ORDER["gig_id"],
                          price=ORDER["price"], delivery_days=ORDER["delivery_days"])
        await service.services.orders.place(same, Actor(id="market", role="service"))
        assert [o["id"] for o in (await buyer.get("/orders", expect=200))["orders"]] == [taken]


async def test_ORD_6_orders_stored_before_the_lists_existed_are_listed_after_a_start() -> None:
    async with Harness() as h:
        first = await h.start_instance()
        assert first.services is not None
        buyer = h.client(first, "buyer-1", "buyer")
        placed = [(await place(buyer))["id"] for _ in range(3)]
        store = first.services.store
        # As an older release left them: orders, and no lists at all.
        await store.collection(LISTS).delete_many({})
        assert (await buyer.get("/orders", expect=200))["orders"] == []
        second = await h.start_instance()
        listed = (await h.client(second, "buyer-1", "buyer").get("/orders", expect=200))["orders"]
        assert sorted(o["id"] for o in listed) == sorted(placed)
        seller = (await h.client(second, "seller-1", "seller").get("/orders?as=seller", expect=200))["orders"]
        assert sorted(o["id"] for o in seller) == sorted(placed)
