"""`Idempotency-Key` on core and plugin routes (issue 12, item 1), against the real
servers: a key belongs to its caller and to the first request sent with it (method,
path, body fingerprint); the same request again gets the first answer's status and
body; the same key for another request is a 422 naming the key; a repetition while
the first runs is a 409; keys expire after `idempotency.expire_after`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from core.errors import Conflict
from core.http.idempotency import COLLECTION
from core.service import Service
from plugins.disputes.center import center_for
from tests.harness import ORDER, Client, Harness
from tests.support import eventually, problem

REUSED = "https://rescenter.dev/problems/idempotency-key-reused"
IN_USE = "https://rescenter.dev/problems/idempotency-key-in-use"


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def replayed(client: Client) -> bool:
    return client.last_headers.get("Idempotent-Replayed") == "true"


async def started_order(h: Harness, service: Service, tag: str) -> tuple[Client, Client, str]:
    buyer = h.client(service, f"buyer-{tag}", "buyer")
    seller = h.client(service, f"seller-{tag}", "seller")
    order = await buyer.post("/orders", {**ORDER, "seller_id": f"seller-{tag}"}, expect=201)
    await buyer.post(f"/orders/{order['id']}/requirements", {"requirements": "a logo"}, expect=200)
    return buyer, seller, order["id"]


class Gate:
    """Holds a service method at its door until the test opens it."""

    def __init__(self, target: Any, name: str, *, hold: int = 1) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.calls = 0
        self.hold = hold
        original: Callable[..., Awaitable[Any]] = getattr(target, name)

        async def gated(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls <= self.hold:
                self.entered.set()
                await self.opened.wait()
            return await original(*args, **kwargs)

        setattr(target, name, gated)

    async def __aenter__(self) -> Gate:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.opened.set()  # whatever happened, let the held request finish


# ---------------------------------------------------------------- another request with the key


async def test_ORD_4_a_key_reused_for_another_command_is_422_naming_it_and_the_order_can_still_complete() -> None:
    """Requirements with K, a delivery, then acceptance with K: refused, not a silent 200
    that leaves the order delivered forever."""
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a logo"}, headers=key("K"),
                         expect=200)
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "v1"}, expect=200)
        timeline = (await buyer.get(f"/orders/{order_id}/timeline", expect=200))["entries"]

        refused = problem(buyer, await buyer.post(f"/orders/{order_id}/acceptance", headers=key("K")), 422,
                          type=REUSED, idempotency_key="K",
                          first_request=f"POST /orders/{order_id}/requirements")
        assert "'K'" in refused["detail"]
        assert (await buyer.get(f"/orders/{order_id}", expect=200))["state"] == "delivered"
        assert (await buyer.get(f"/orders/{order_id}/timeline", expect=200))["entries"] == timeline

        completed = await buyer.post(f"/orders/{order_id}/acceptance", headers=key("K2"), expect=200)
        assert completed["state"] == "completed"
        await h.probe.wait_for("order.completed", lambda m: m.subject == order_id)


async def test_DSP_3_a_key_reused_to_accept_another_request_is_422_and_the_refund_waits() -> None:
    """Decline request 1 with K, then accept request 2 (a partial refund) with K: refused
    naming K; request 2 stays open and no refund is issued until it is accepted with its
    own key."""
    async with Harness() as h:
        service = await h.start_instance()
        buyer, seller, order_id = await started_order(h, service, "dsp3")
        base = f"/orders/{order_id}/resolution/requests"
        extension = await seller.post(base, {"kind": "extension_request", "days": 2, "reason": "More variants."},
                                      expect=201)
        refund = await seller.post(base, {"kind": "partial_refund", "amount": {"amount": "30.00", "currency": "EUR"},
                                          "explanation": "A part is missing.", "reason": "compensation_for_delay"},
                                   expect=201)
        await buyer.post(f"{base}/{extension['id']}/answer", {"answer": "decline"}, headers=key("K"), expect=200)

        problem(buyer, await buyer.post(f"{base}/{refund['id']}/answer", {"answer": "accept"}, headers=key("K")),
                422, type=REUSED, idempotency_key="K")
        assert (await buyer.get(f"{base}/{refund['id']}", expect=200))["state"] == "open"
        await h.probe.settle(0.3)
        assert h.probe.of_type("dispute.refund_issued", order_id) == []

        accepted = await buyer.post(f"{base}/{refund['id']}/answer", {"answer": "accept"}, headers=key("K2"),
                                    expect=200)
        assert accepted["state"] == "accepted"
        await h.probe.wait_for("dispute.refund_issued", lambda m: m.subject == order_id)


async def test_the_same_key_with_another_body_is_422_naming_the_key_on_core_and_plugin_routes() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer, seller, order_id = await started_order(h, service, "body")
        first = await buyer.post("/orders", ORDER, headers=key("checkout"), expect=201)
        refused = problem(buyer, await buyer.post("/orders", {**ORDER, "gig_id": "gig-2"}, headers=key("checkout")),
                          422, type=REUSED, idempotency_key="checkout", first_request="POST /orders")
        assert "another body" in refused["detail"]
        assert {o["id"] for o in (await buyer.get("/orders", expect=200))["orders"]} == {order_id, first["id"]}

        base = f"/orders/{order_id}/resolution/requests"
        opened = await seller.post(base, {"kind": "extension_request", "days": 2, "reason": "More variants."},
                                   headers=key("ask"), expect=201)
        problem(seller, await seller.post(base, {"kind": "extension_request", "days": 3, "reason": "More variants."},
                                          headers=key("ask")), 422, type=REUSED, idempotency_key="ask")
        overview = await seller.get(f"/orders/{order_id}/resolution", expect=200)
        assert [(r["id"], r["terms"]["days"]) for r in overview["requests"]] == [(opened["id"], 2)]


# ---------------------------------------------------------------- the same request again


async def test_the_same_request_again_gets_the_first_status_and_body_on_core_and_plugin_routes() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer, seller, order_id = await started_order(h, service, "replay")

        # POST /orders: 201 twice, the same body, one order; key order and spacing do not matter.
        first = await buyer.post("/orders", ORDER, headers=key("place"), expect=201)
        assert not replayed(buyer)
        again = await buyer.request("POST", "/orders", headers=key("place"),
                                    raw=b'{"delivery_days": 3, "price": {"currency": "EUR", "amount": "120.00"},'
                                        b'   "gig_id": "gig-1", "seller_id": "seller-1"}')
        assert (buyer.last_status, again) == (201, first) and replayed(buyer)

        # ORD-3: an empty delivery is refused (and recorded); its repetition gets the same 409,
        # and the attempt is recorded once.
        deliveries = f"/orders/{order_id}/deliveries"
        refusal = problem(seller, await seller.post(deliveries, {"message": " "}, headers=key("empty")), 409,
                          rule="ORD-3")
        assert not replayed(seller)
        assert await seller.post(deliveries, {"message": " "}, headers=key("empty"), expect=409) == refusal
        assert replayed(seller)
        entries = (await seller.get(f"/orders/{order_id}/timeline", expect=200))["entries"]
        assert [e["type"] for e in entries].count("order.delivery_refused") == 1

        # A plugin's POST (the resolution center) and PUT (availability).
        base = f"/orders/{order_id}/resolution/requests"
        body = {"kind": "extension_request", "days": 2, "reason": "More variants."}
        opened = await seller.post(base, body, headers=key("ask"), expect=201)
        assert await seller.post(base, body, headers=key("ask"), expect=201) == opened and replayed(seller)
        cap = "/availability/sellers/seller-replay/order-cap"
        capped = await seller.put(cap, {"max_active_orders": 3}, headers=key("cap"), expect=200)
        assert await seller.put(cap, {"max_active_orders": 3}, headers=key("cap"), expect=200) == capped
        assert replayed(seller)

        await h.probe.settle(0.3)
        assert len(h.probe.of_type("order.placed", first["id"])) == 1
        assert len({m.id for m in h.probe.of_type("dispute.request_opened", order_id)}) == 1


# ---------------------------------------------------------------- while the first request runs


async def test_a_repetition_while_the_first_request_runs_is_409_on_a_core_route() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        assert service.services is not None
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a logo"}, expect=200)
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "v1"}, expect=200)
        gate = Gate(service.services.orders, "accept")
        path = f"/orders/{order_id}/acceptance"
        first_tab, second_tab = h.client(service, "buyer-1", "buyer"), h.client(service, "buyer-1", "buyer")

        first = asyncio.create_task(first_tab.post(path, headers=key("accept")))
        async with gate:
            await asyncio.wait_for(gate.entered.wait(), 5)
            problem(second_tab, await second_tab.post(path, headers=key("accept")), 409, type=IN_USE,
                    idempotency_key="accept")
            # Another request with the key is refused as such, even while the first runs.
            problem(second_tab, await second_tab.post(f"/orders/{order_id}/revisions", {"reason": "x"},
                                                      headers=key("accept")), 422, type=REUSED)
        answer = await first
        assert first_tab.last_status == 200 and answer["state"] == "completed"
        assert await second_tab.post(path, headers=key("accept"), expect=200) == answer
        assert replayed(second_tab) and gate.calls == 1


async def test_a_repetition_while_the_first_request_runs_is_409_on_a_plugin_route() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        _, seller, order_id = await started_order(h, service, "running")
        gate = Gate(center_for(service.services), "open")
        path = f"/orders/{order_id}/resolution/requests"
        body = {"kind": "extension_request", "days": 2, "reason": "More variants."}
        other_tab = h.client(service, "seller-running", "seller")

        first = asyncio.create_task(seller.post(path, body, headers=key("ask")))
        async with gate:
            await asyncio.wait_for(gate.entered.wait(), 5)
            problem(other_tab, await other_tab.post(path, body, headers=key("ask")), 409, type=IN_USE,
                    idempotency_key="ask")
        opened = await first
        assert seller.last_status == 201
        assert await other_tab.post(path, body, headers=key("ask"), expect=201) == opened and replayed(other_tab)
        assert gate.calls == 1


async def test_a_first_request_whose_process_died_gives_its_key_up_after_the_lease() -> None:
    async with Harness(idempotency={"in_progress_lease": timedelta(seconds=0.5)}) as h:
        service = await h.start_instance()
        assert service.services is not None
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        gate = Gate(service.services.orders, "submit_requirements")
        path = f"/orders/{order_id}/requirements"
        stuck = asyncio.create_task(h.client(service, "buyer-1", "buyer").post(path, {"requirements": "a logo"},
                                                                              headers=key("req")))
        async with gate:
            await asyncio.wait_for(gate.entered.wait(), 5)
            problem(buyer, await buyer.post(path, {"requirements": "a logo"}, headers=key("req")), 409,
                    type=IN_USE)
            await asyncio.sleep(0.6)
            taken_over = await buyer.post(path, {"requirements": "a logo"}, headers=key("req"), expect=200)
            assert taken_over["state"] == "in_progress" and not replayed(buyer)
        assert (await stuck)["state"] == "in_progress"  # the command's own guard: applied once
        assert await buyer.post(path, {"requirements": "a logo"}, headers=key("req"), expect=200) == taken_over
        await h.probe.settle(0.3)
        assert len({m.id for m in h.probe.of_type("order.requirements_submitted", order_id)}) == 1


async def test_an_answer_that_invites_a_retry_is_not_kept_and_the_key_stays_usable() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        assert service.services is not None
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        orders = service.services.orders
        original = orders.submit_requirements

        async def lost_a_race(*args: Any, **kwargs: Any) -> Any:
            orders.submit_requirements = original  # type: ignore[method-assign]
            raise Conflict(f"order {order_id!r} is changing too fast; try again", order_id=order_id)

        orders.submit_requirements = lost_a_race  # type: ignore[method-assign]
        path = f"/orders/{order_id}/requirements"
        problem(buyer, await buyer.post(path, {"requirements": "a logo"}, headers=key("req")), 409,
                type="https://rescenter.dev/problems/conflict")
        done = await buyer.post(path, {"requirements": "a logo"}, headers=key("req"), expect=200)
        assert done["state"] == "in_progress" and not replayed(buyer)
        # That answer is kept: the next repetition is a replay.
        assert await buyer.post(path, {"requirements": "a logo"}, headers=key("req"), expect=200) == done
        assert replayed(buyer)


# ---------------------------------------------------------------- expiry


async def test_a_key_expires_after_the_configured_time_and_may_name_a_new_request() -> None:
    """An expired record is absent on read, even before the prune has deleted it."""
    async with Harness(idempotency={"expire_after": timedelta(seconds=1), "prune_interval": timedelta(hours=1)}) as h:
        service = await h.start_instance()
        assert service.services is not None
        buyer = h.client(service, "buyer-1", "buyer")
        first = await buyer.post("/orders", ORDER, headers=key("checkout"), expect=201)
        problem(buyer, await buyer.post("/orders", {**ORDER, "gig_id": "gig-2"}, headers=key("checkout")), 422)
        await asyncio.sleep(1.1)
        assert await service.services.store.collection(COLLECTION).count_documents({}) == 1  # not pruned yet

        second = await buyer.post("/orders", {**ORDER, "gig_id": "gig-2"}, headers=key("checkout"), expect=201)
        assert second["id"] != first["id"] and not replayed(buyer)
        # The key now names the second request.
        problem(buyer, await buyer.post("/orders", ORDER, headers=key("checkout")), 422, idempotency_key="checkout")
        assert await buyer.post("/orders", {**ORDER, "gig_id": "gig-2"}, headers=key("checkout"), expect=201) == second


async def test_expired_keys_are_deleted_and_the_collection_has_an_index_on_expiry() -> None:
    async with Harness(idempotency={"expire_after": timedelta(seconds=0.5),
                                    "prune_interval": timedelta(seconds=0.2)}) as h:
        service = await h.start_instance()
        assert service.services is not None
        collection = service.services.store.collection(COLLECTION)
        indexes = await collection.index_information()
        assert any(index["key"] == [("expires_at", 1)] and index.get("expireAfterSeconds") == 0
                   for index in indexes.values()), indexes
        buyer = h.client(service, "buyer-1", "buyer")
        await buyer.post("/orders", ORDER, headers=key("one"), expect=201)
        record = await collection.find_one({})
        assert record is not None and record["state"] == "done" and record["status"] == 201
        assert record["method"] == "POST" and record["path"] == "/orders" and record["key"] == "one"
        assert record["expires_at"] - record["created_at"] == timedelta(seconds=0.5)
        await eventually(lambda: _empty(collection), timeout=5, what="the expired key is deleted")


async def _empty(collection: Any) -> bool:
    return await collection.count_documents({}) == 0


# ---------------------------------------------------------------- the contract


async def test_openapi_describes_the_idempotency_key_header_on_every_command() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        document = await h.client(service).get("/openapi.json", expect=200)
        for path, method in (("/orders", "post"), ("/orders/{order_id}/acceptance", "post"),
                             ("/orders/{order_id}/resolution/requests", "post"),
                             ("/availability/sellers/{seller_id}/order-cap", "put"),
                             ("/admin/plugins/{name}", "put")):
            [header] = [p for p in document["paths"][path][method]["parameters"] if p.get("name") == "Idempotency-Key"]
            description = header["description"]
            for promise in ("422", "409", "24 h", "Idempotent-Replayed", "method, path"):
                assert promise in description, (path, promise)
