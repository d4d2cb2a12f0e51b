"""The HTTP API against real RabbitMQ and the MongoDB-wire server: authentication,
who sees what, strict bodies, ORD-1, ORD-3, ORD-5, idempotency, system routes and
the test clock. Every error must be RFC 9457 problem+json."""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
import pytest_asyncio

from core.messages import core_catalogue
from core.service import Service
from tests.harness import ORDER, Client, Harness
from tests.support import header, problem

PROBE = {"extra": ["tests.probe_plugin"]}
PROBE_NAME = "probe"  # tests.probe_plugin names itself (NAME)


def as_client(h: Harness, service: Service, token: str | None) -> Client:
    assert h.session is not None
    return Client(h.session, f"http://127.0.0.1:{service.port}", token)


async def place(buyer: Client, **changes: Any) -> dict[str, Any]:
    return await buyer.post("/orders", {**ORDER, **changes}, expect=201)


async def start(buyer: Client, **changes: Any) -> str:
    order_id = (await place(buyer, **changes))["id"]
    await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a red logo"}, expect=200)
    return order_id


async def snapshot(client: Client, order_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    order = await client.get(f"/orders/{order_id}", expect=200)
    timeline = await client.get(f"/orders/{order_id}/timeline", expect=200)
    return order, timeline["entries"]


# ---------------------------------------------------------------- authentication


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared() -> AsyncIterator[tuple[Harness, Service]]:
    """One instance for the tests that change nothing (authentication, system routes)."""
    async with Harness(plugins=PROBE) as h:
        yield h, await h.start_instance()


def _claims(h: Harness, **changes: Any) -> dict[str, Any]:
    claims = {"sub": "buyer-1", "roles": ["buyer"], "aud": h.settings.auth.audience,
              "exp": int(time.time()) + 600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(h: Harness, claims: dict[str, Any], algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)  # HS512 with our key
        return jwt.encode(claims, h.settings.auth.secret, algorithm=algorithm)


def _unsigned(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


BAD_TOKENS = {
    "no_exp": (lambda h: _signed(h, _claims(h, exp=None)), "'exp'"),
    "expired": (lambda h: _signed(h, _claims(h, exp=int(time.time()) - 60)), "expired"),
    "wrong_audience": (lambda h: _signed(h, _claims(h, aud="another-service")), "audience"),
    "HS512_when_HS256_is_pinned": (lambda h: _signed(h, _claims(h), "HS512"), "alg"),
    "unsigned_alg_none": (lambda h: _unsigned(_claims(h)), "alg"),
    "another_secret": (lambda h: jwt.encode(_claims(h), "x" * 48, algorithm="HS256"), "signature"),
    "no_sub": (lambda h: _signed(h, _claims(h, sub=None)), "'sub'"),
    "unknown_role": (lambda h: _signed(h, _claims(h, roles=["superuser"])), "role"),
    "not_a_jwt": (lambda h: "not-a-token", "invalid token"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_auth_bad_token_is_refused_401_naming_the_problem(shared: tuple[Harness, Service], case: str) -> None:
    h, service = shared
    make, words = BAD_TOKENS[case]
    client = as_client(h, service, make(h))
    body = await client.post("/orders", ORDER)
    assert words in problem(client, body, 401)["detail"].lower()
    body = await client.get("/orders")
    problem(client, body, 401)


async def test_auth_no_authorization_header_is_401(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    anonymous = as_client(h, service, None)
    body = await anonymous.get("/orders")
    assert "Authorization" in problem(anonymous, body, 401)["detail"]
    body = await anonymous.request("GET", "/orders", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert "Bearer" in problem(anonymous, body, 401)["detail"]


async def test_auth_a_good_token_passes(shared: tuple[Harness, Service]) -> None:
    """The counterpart of the refusals above: the same claims, correctly signed, work."""
    h, service = shared
    client = as_client(h, service, _signed(h, _claims(h, sub="buyer-good")))
    assert (await client.get("/orders", expect=200)) == {"orders": [], "next_cursor": None}


async def test_auth_a_seller_token_on_a_buyer_route_is_403(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    seller = h.client(service, "seller-9", "seller")
    body = await seller.post("/orders", ORDER)
    assert "buyer" in problem(seller, body, 403)["detail"]
    assert (await seller.get("/orders?as=seller", expect=200)) == {"orders": [], "next_cursor": None}


# ---------------------------------------------------------------- who sees what


async def test_visibility_a_buyer_cannot_read_another_buyers_order_or_timeline() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        stranger = h.client(service, "buyer-2", "buyer")
        order_id = (await place(buyer))["id"]

        for path in (f"/orders/{order_id}", f"/orders/{order_id}/timeline"):
            hidden = problem(stranger, await stranger.get(path), 404)
            missing = problem(stranger, await stranger.get(path.replace(order_id, "no-such-order")), 404)
            # The same answer as for an order that does not exist: nothing about it leaks.
            assert json.dumps(hidden).replace(order_id, "X") == json.dumps(missing).replace("no-such-order", "X")
            # (without the order's own id, which is random and may hold "120" by chance)
            for secret in ("buyer-1", "seller-1", "gig-1", "awaiting_requirements", "120"):
                assert secret not in json.dumps(hidden).replace(order_id, "X")
        # Nor can the stranger act on it, or find it in a list.
        problem(stranger, await stranger.post(f"/orders/{order_id}/requirements", {"requirements": "x"}), 404)
        assert (await stranger.get("/orders", expect=200)) == {"orders": [], "next_cursor": None}
        assert (await buyer.get(f"/orders/{order_id}", expect=200))["state"] == "awaiting_requirements"


async def test_visibility_the_orders_seller_and_support_can_read_it_another_seller_cannot() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = (await place(buyer))["id"]
        for reader in (h.client(service, "seller-1", "seller"), h.client(service, "support-1", "support")):
            order, entries = await snapshot(reader, order_id)
            assert order["id"] == order_id and order["buyer_id"] == "buyer-1"
            assert [e["type"] for e in entries] == ["order.placed"]
        other_seller = h.client(service, "seller-2", "seller")
        problem(other_seller, await other_seller.get(f"/orders/{order_id}"), 404)
        problem(other_seller, await other_seller.get(f"/orders/{order_id}/timeline"), 404)
        seller = h.client(service, "seller-1", "seller")
        assert [o["id"] for o in (await seller.get("/orders?as=seller", expect=200))["orders"]] == [order_id]


async def test_visibility_deadlines_of_an_unknown_order_are_404_not_an_empty_list() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer, support = h.client(service, "buyer-1", "buyer"), h.client(service, "support-1", "support")
        order_id = await start(buyer)
        known = await support.get(f"/orders/{order_id}/deadlines", expect=200)
        assert [d["kind"] for d in known["deadlines"]] == ["order.late"]
        refused = problem(support, await support.get(f"/orders/{order_id}-typo/deadlines"), 404)
        assert refused["order_id"] == f"{order_id}-typo"


# ---------------------------------------------------------------- strict bodies


async def test_strict_body_an_unknown_field_is_422_naming_it_and_changes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = (await place(buyer))["id"]
        before = await snapshot(buyer, order_id)

        body = await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x", "priority": "high"})
        refused = problem(buyer, body, 422)
        assert "priority" in refused["detail"]
        assert [e["field"] for e in refused["errors"]] == ["priority"]
        assert await snapshot(buyer, order_id) == before

        body = await buyer.post("/orders", {**ORDER, "discount": "100%"})
        assert "discount" in problem(buyer, body, 422)["detail"]
        assert [o["id"] for o in (await buyer.get("/orders", expect=200))["orders"]] == [order_id]


async def test_strict_body_invalid_json_is_422_and_changes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = (await place(buyer))["id"]
        before = await snapshot(buyer, order_id)
        body = await buyer.post(f"/orders/{order_id}/requirements", raw=b'{"requirements": "a red')
        assert "JSON" in problem(buyer, body, 422)["detail"]
        body = await buyer.post(f"/orders/{order_id}/requirements", raw=b'["requirements"]')
        problem(buyer, body, 422)
        assert await snapshot(buyer, order_id) == before


async def test_strict_body_over_max_body_bytes_is_413_and_changes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance(http={"max_body_bytes": 1024})
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = (await place(buyer))["id"]
        before = await snapshot(buyer, order_id)

        body = await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x" * 2000})
        assert "1024" in problem(buyer, body, 413)["detail"]
        assert await snapshot(buyer, order_id) == before
        # Under the limit it goes through.
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x" * 900}, expect=200)


async def test_strict_body_a_command_without_a_body_takes_none_or_an_empty_object_and_refuses_anything_else() \
        -> None:
    """A body posted to the wrong route (a revision's reason sent to /acceptance) must not
    complete the order: a route without a body model refuses any member, invalid JSON and
    anything but an object, and changes nothing (ORD-4 only on a real acceptance)."""
    async with Harness() as h:
        service = await h.start_instance(http={"max_body_bytes": 1024})
        buyer, seller = h.client(service, "buyer-1", "buyer"), h.client(service, "seller-1", "seller")
        order_id = await start(buyer)
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "done"}, expect=200)
        before = await snapshot(buyer, order_id)
        acceptance = f"/orders/{order_id}/acceptance"

        refused = problem(buyer, await buyer.post(acceptance, {"reason": "the colours are wrong"}), 422)
        assert [e["field"] for e in refused["errors"]] == ["reason"] and "takes no body" in refused["detail"]
        assert "JSON" in problem(buyer, await buyer.post(acceptance, raw=b'{"reason": "the col'), 422)["detail"]
        problem(buyer, await buyer.post(acceptance, raw=b'["reason"]'), 422)
        assert "1024" in problem(buyer, await buyer.post(acceptance, raw=b'{"a": "' + b"x" * 2000 + b'"}'),
                                 413)["detail"]
        assert await snapshot(buyer, order_id) == before

        accepted = await buyer.post(acceptance, raw=b" {} ", expect=200)
        assert accepted["state"] == "completed"


async def test_strict_body_not_sent_as_JSON_is_415_and_does_not_use_its_idempotency_key() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        payload = json.dumps(ORDER).encode()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
            body = await buyer.post("/orders", raw=payload,
                                    headers={"Content-Type": content_type, "Idempotency-Key": "k-415"})
            refused = problem(buyer, body, 415)
            assert refused["content_type"] == content_type and "application/json" in refused["detail"]
        assert (await buyer.get("/orders", expect=200))["orders"] == []
        # A JSON media type with its parameters, or a +json one, is JSON; the key was not used up.
        placed = await buyer.post("/orders", raw=payload, expect=201,
                                  headers={"Content-Type": "application/json; charset=utf-8",
                                           "Idempotency-Key": "k-415"})
        assert [o["id"] for o in (await buyer.get("/orders", expect=200))["orders"]] == [placed["id"]]


async def test_strict_body_a_member_named_twice_is_422_and_places_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        fields = ", ".join(f'"{k}": {json.dumps(v)}' for k, v in ORDER.items())
        body = await buyer.post("/orders", raw=f'{{{fields}, "seller_id": "someone-else"}}'.encode())
        refused = problem(buyer, body, 422)
        assert [e["field"] for e in refused["errors"]] == ["seller_id"] and "more than once" in refused["detail"]
        assert (await buyer.get("/orders", expect=200))["orders"] == []


NOT_BOOLEANS = ("yes", "no", "true", "false", "", 1, 0, None, [True], {"value": True})
NOT_AMOUNTS = (" 10 ", "\u0661\u0660", "59.990", "5.999e1", "1e2", "+10", "-10", "10.", ".5", "1_000",
               "0x10", "NaN", "Infinity", "010", "10.00\n", "\uff11\uff10", "1000000000000", 10, 10.5, True, None)


async def test_strict_body_a_boolean_is_a_JSON_boolean_and_anything_else_changes_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        for value in NOT_BOOLEANS:
            refused = problem(admin, await admin.put("/admin/plugins/reviews", {"enabled": value}), 422)
            assert refused["errors"][0]["field"] == "enabled", value
        rows = {p["name"]: p for p in (await admin.get("/admin/plugins", expect=200))["plugins"]}
        assert rows["reviews"]["enabled"] is True
        await h.probe.settle(0.2)
        assert h.probe.of_type("plugin.switched") == []
        assert (await admin.put("/admin/plugins/reviews", {"enabled": False}, expect=200))["enabled"] is False


async def test_strict_body_an_integer_is_a_JSON_integer() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        for value in ("3", 3.0, True, "3 days"):
            refused = problem(buyer, await buyer.post("/orders", {**ORDER, "delivery_days": value}), 422)
            assert refused["errors"][0]["field"] == "delivery_days", value
        assert (await buyer.get("/orders", expect=200)) == {"orders": [], "next_cursor": None}


async def test_strict_body_an_amount_is_ASCII_digits_with_at_most_two_decimals_on_core_and_plugin_routes() -> None:
    """ORD-5 and DSP-2 bodies: an amount is a string of ASCII digits with at most two
    decimals; padded, signed, exponent, three-decimal, non-ASCII digits or a JSON number
    are refused with a 422 problem naming the field, and nothing is stored."""
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        for amount in NOT_AMOUNTS:
            body = await buyer.post("/orders", {**ORDER, "price": {"amount": amount, "currency": "EUR"}})
            refused = problem(buyer, body, 422)
            assert refused["errors"][0]["field"] == "price.amount", amount
        assert (await buyer.get("/orders", expect=200)) == {"orders": [], "next_cursor": None}

        placed = [await place(buyer, price={"amount": amount, "currency": "EUR"}) for amount in ("59.99", "10", "10.5")]
        # Accepted as given, shown as the API shows every amount: two decimal places.
        assert [o["price"]["amount"] for o in placed] == ["59.99", "10.00", "10.50"]
        order_id = placed[0]["id"]
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "a logo"}, expect=200)
        path = f"/orders/{order_id}/resolution/requests"
        for amount in NOT_AMOUNTS:
            refund = {"kind": "partial_refund", "amount": {"amount": amount, "currency": "EUR"},
                      "explanation": "Part of the work is missing.", "reason": "compensation_for_delay"}
            refused = problem(seller, await seller.post(path, refund), 422)
            assert refused["errors"][0]["field"] == "partial_refund.amount.amount", amount
            offer = {"kind": "extra_offer", "description": "Two more logos.", "price": {"amount": amount,
                                                                                       "currency": "EUR"}}
            refused = problem(seller, await seller.post(path, offer), 422)
            assert refused["errors"][0]["field"] == "extra_offer.price.amount", amount
        assert (await seller.get(f"/orders/{order_id}/resolution", expect=200))["requests"] == []


async def test_strict_an_amount_on_the_bus_is_ASCII_digits_with_at_most_two_decimals() -> None:
    async with Harness() as h:
        await h.start_instance()
        command = {"order_id": "bus-amount", "buyer_id": "buyer-1", "seller_id": "seller-1", "gig_id": "gig-1",
                   "delivery_days": 3}
        await h.publish("command.order.place", {**command, "price": {"amount": "59.990", "currency": "EUR"}},
                        subject="bus-amount")
        [dead] = await h.dead_letters("core")
        assert header(dead, "x-rescenter-reason") == "invalid"
        assert "price.amount" in header(dead, "x-rescenter-error")
        await h.publish("command.order.place", {**command, "price": {"amount": "59.99", "currency": "EUR"}},
                        subject="bus-amount")
        [placed] = await h.probe.wait_for("order.placed", lambda m: m.subject == "bus-amount")
        assert placed.data["price"] == {"amount": "59.99", "currency": "EUR"}


async def test_strict_bus_data_an_integer_or_a_boolean_of_another_JSON_type_is_dead_lettered_invalid() -> None:
    """The bus reads `data` as strictly as HTTP reads a body: `true` is not a one-day delivery."""
    async with Harness() as h:
        await h.start_instance()
        command = {"order_id": "bus-days", "buyer_id": "buyer-1", "seller_id": "seller-1", "gig_id": "gig-1",
                   "price": {"amount": "59.99", "currency": "EUR"}}
        wrong = ("3", 3.0, True)
        for days in wrong:
            await h.publish("command.order.place", {**command, "delivery_days": days}, subject="bus-days")
        dead = await h.dead_letters("core", count=len(wrong))
        assert [header(d, "x-rescenter-reason") for d in dead] == ["invalid"] * len(wrong)
        assert all("delivery_days" in header(d, "x-rescenter-error") for d in dead)
        await h.publish("command.order.place", {**command, "delivery_days": 3}, subject="bus-days")
        [placed] = await h.probe.wait_for("order.placed", lambda m: m.subject == "bus-days")
        assert placed.data["delivery_days"] == 3


async def test_a_command_routed_by_another_key_than_its_type_is_dead_lettered_unhandled_and_changes_nothing() \
        -> None:
    """The broker delivers by routing key (and the senders' permissions are per type): a body of
    another type than its key is not acted on."""
    async with Harness() as h:
        service = await h.start_instance()
        command = {"order_id": "bus-key", "buyer_id": "buyer-1", "seller_id": "seller-1", "gig_id": "gig-1",
                   "price": {"amount": "59.99", "currency": "EUR"}, "delivery_days": 3}
        await h.publish("command.order.place", command, subject="bus-key", routing_key="command.order.accept")
        [dead] = await h.dead_letters("core")
        assert header(dead, "x-rescenter-reason") == "unhandled"
        assert "command.order.accept" in header(dead, "x-rescenter-error")
        await h.probe.settle(0.3)
        assert h.probe.of_type("order.placed") == []
        support = h.client(service, "support-1", "support")
        problem(support, await support.get("/orders/bus-key"), 404)


# ---------------------------------------------------------------- ORD-1


COMMANDS_ON_AN_ORDER = [
    ("buyer", "requirements", {"requirements": "more"}),
    ("seller", "deliveries", {"message": "late work", "attachments": ["a.zip"]}),
    ("buyer", "acceptance", None),
    ("buyer", "revisions", {"reason": "again"}),
    ("support", "cancellation", {"reason": "too late"}),
]


async def _every_command_is_refused_with_ORD_1(h: Harness, service: Service, order_id: str) -> None:
    clients = {"buyer": h.client(service, "buyer-1", "buyer"), "seller": h.client(service, "seller-1", "seller"),
               "support": h.client(service, "support-1", "support")}
    before = await snapshot(clients["support"], order_id)
    for who, command, payload in COMMANDS_ON_AN_ORDER:
        client = clients[who]
        body = await client.post(f"/orders/{order_id}/{command}", payload)
        refused = problem(client, body, 409, rule="ORD-1", state=before[0]["state"])
        assert "final state" in refused["detail"]
    assert await snapshot(clients["support"], order_id) == before


async def test_ORD_1_commands_on_a_completed_order_are_refused_and_change_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        order_id = await start(buyer)
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "done"}, expect=200)
        await buyer.post(f"/orders/{order_id}/acceptance", expect=200)
        await _every_command_is_refused_with_ORD_1(h, service, order_id)


async def test_ORD_1_commands_on_a_cancelled_order_are_refused_and_change_nothing() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        support = h.client(service, "support-1", "support")
        order_id = await start(buyer)
        await support.post(f"/orders/{order_id}/cancellation", {"reason": "fraud"}, expect=200)
        await _every_command_is_refused_with_ORD_1(h, service, order_id)


async def test_ORD_1_revision_path_delivered_in_revision_delivered_completed() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        order_id = await start(buyer)
        assert (await seller.post(f"/orders/{order_id}/deliveries", {"message": "v1"}, expect=200))["state"] == "delivered"
        revised = await buyer.post(f"/orders/{order_id}/revisions", {"reason": "bigger, please"}, expect=200)
        assert revised["state"] == "in_revision" and revised["revision_count"] == 1
        # Accepting while in revision is out of order.
        problem(buyer, await buyer.post(f"/orders/{order_id}/acceptance"), 409, rule="ORD-1", state="in_revision")
        again = await seller.post(f"/orders/{order_id}/deliveries", {"attachments": ["v2.png"]}, expect=200)
        assert again["state"] == "delivered" and again["delivery_count"] == 2
        done = await buyer.post(f"/orders/{order_id}/acceptance", expect=200)
        assert done["state"] == "completed" and done["completion_cause"] == "accepted"

        entries = (await buyer.get(f"/orders/{order_id}/timeline", expect=200))["entries"]
        assert [(e["type"], e["details"]["state"]) for e in entries] == [
            ("order.placed", "awaiting_requirements"),
            ("order.requirements_submitted", "in_progress"),
            ("order.delivered", "delivered"),
            ("order.revision_requested", "in_revision"),
            ("order.delivered", "delivered"),
            ("order.completed", "completed"),
        ]
        assert [e["actor"]["id"] for e in entries[2:]] == ["seller-1", "buyer-1", "seller-1", "buyer-1"]
        events = await h.probe.wait_for("order.completed", lambda m: m.subject == order_id)
        assert events[0].data["previous_state"] == "delivered"


async def test_ORD_1_support_cancels_an_order_a_buyer_or_seller_cannot() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        support = h.client(service, "support-1", "support")
        order_id = await start(buyer)
        for party in (buyer, seller):
            body = await party.post(f"/orders/{order_id}/cancellation", {"reason": "I changed my mind"})
            problem(party, body, 403)
        assert (await buyer.get(f"/orders/{order_id}", expect=200))["state"] == "in_progress"

        cancelled = await support.post(f"/orders/{order_id}/cancellation", {"reason": "fraud"}, expect=200)
        assert cancelled["state"] == "cancelled" and cancelled["cancel_cause"] == "support"
        assert cancelled["cancelled_from"] == "in_progress"
        event = (await h.probe.wait_for("order.cancelled", lambda m: m.subject == order_id))[0]
        assert event.data["actor"] == {"id": "support-1", "role": "support"} and event.data["reason"] == "fraud"
        last = (await buyer.get(f"/orders/{order_id}/timeline", expect=200))["entries"][-1]
        assert last["type"] == "order.cancelled" and last["rule"] == "ORD-1"


# ---------------------------------------------------------------- ORD-3


EMPTY_DELIVERIES = [{}, {"message": "", "attachments": []}, {"message": "  \n\t "}, {"attachments": ["  "]}]


async def test_ORD_3_an_empty_delivery_is_refused_recorded_and_published() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        order_id = await start(buyer)

        for delivery in EMPTY_DELIVERIES:
            body = await seller.post(f"/orders/{order_id}/deliveries", delivery)
            assert "empty delivery" in problem(seller, body, 409, rule="ORD-3")["detail"], delivery

        order, entries = await snapshot(buyer, order_id)
        assert order["state"] == "in_progress" and order["delivery_count"] == 0
        refused = [e for e in entries if e["type"] == "order.delivery_refused"]
        assert len(refused) == len(EMPTY_DELIVERIES)
        assert all(e["rule"] == "ORD-3" and e["actor"]["id"] == "seller-1" for e in refused)
        events = await h.probe.wait_for("order.delivery_refused", lambda m: m.subject == order_id,
                                        count=len(EMPTY_DELIVERIES))
        assert {e.data["rule"] for e in events} == {"ORD-3"}
        assert [e.id for e in events] == [e["event_id"] for e in refused]

        # A real delivery still goes through afterwards.
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "the logo"}, expect=200)


# ---------------------------------------------------------------- ORD-5


async def test_ORD_5_a_plugin_veto_refuses_the_order_with_its_reason_and_stores_nothing() -> None:
    async with Harness(plugins=PROBE) as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        body = await buyer.post("/orders", {**ORDER, "gig_id": "vetoed-gig"})
        refused = problem(buyer, body, 409, rule="ORD-5", plugin=PROBE_NAME, plugin_rule="PROBE-1",
                          gig_id="vetoed-gig")
        assert refused["detail"] == "This gig does not take orders in tests."
        assert (await buyer.get("/orders", expect=200)) == {"orders": [], "next_cursor": None}

        accepted = await place(buyer, gig_id="gig-2")
        assert [o["id"] for o in (await buyer.get("/orders", expect=200))["orders"]] == [accepted["id"]]
        # Events leave in order: once the accepted order's event is here, a vetoed one would be too.
        await h.probe.wait_for("order.placed", lambda m: m.subject == accepted["id"])
        assert [m.data["gig_id"] for m in h.probe.of_type("order.placed")] == ["gig-2"]


async def test_ORD_5_the_veto_names_the_plugin_as_admin_plugins_lists_it() -> None:
    async with Harness(plugins=PROBE) as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        outside = [p["name"] for p in (await admin.get("/admin/plugins", expect=200))["plugins"] if not p.get("builtin")]
        assert outside == [PROBE_NAME]


async def test_plugins_a_plugin_that_fails_to_load_is_reported_and_the_others_run() -> None:
    extra = ["tests.no_such_plugin", "tests.broken_plugin", "tests.probe_plugin"]
    async with Harness(plugins={"extra": extra}) as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        rows = {p["name"]: p for p in (await admin.get("/admin/plugins", expect=200))["plugins"]}

        assert rows["no_such_plugin"]["loaded"] is False and rows["no_such_plugin"]["enabled"] is False
        assert "ModuleNotFoundError" in rows["no_such_plugin"]["error"]
        assert "tests.no_such_plugin" in rows["no_such_plugin"]["error"]
        assert rows["broken_plugin"]["loaded"] is False
        assert rows["broken_plugin"]["error"] == "RuntimeError: this plugin is broken on purpose (tests)"
        for name in ("disputes", "reviews", "availability", "blocking", "metrics", PROBE_NAME):
            assert rows[name]["loaded"] is True and rows[name]["enabled"] is True, rows[name]

        # ...and they do run: the probe still vetoes, orders still go through and get consumed.
        buyer = h.client(service, "buyer-1", "buyer")
        problem(buyer, await buyer.post("/orders", {**ORDER, "gig_id": "vetoed-gig"}), 409, plugin=PROBE_NAME)
        order_id = (await place(buyer))["id"]
        await h.probe.wait_for("order.placed", lambda m: m.subject == order_id)
        support = h.client(service, "support-1", "support")
        assert (await support.get("/admin/plugins", expect=200))["plugins"] == list(rows.values())


# ---------------------------------------------------------------- Idempotency-Key


async def test_idempotency_key_a_repeated_POST_orders_places_one_order() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        key = {"Idempotency-Key": "checkout-42"}
        first = await buyer.post("/orders", ORDER, headers=key, expect=201)
        second = await buyer.post("/orders", ORDER, headers=key, expect=201)
        assert second == first
        assert [o["id"] for o in (await buyer.get("/orders", expect=200))["orders"]] == [first["id"]]
        # The same key from another buyer is another order: keys belong to their caller.
        other = await h.client(service, "buyer-2", "buyer").post("/orders", ORDER, headers=key, expect=201)
        assert other["id"] != first["id"]

        await h.probe.wait_for("order.placed", lambda m: m.subject == other["id"])
        assert len(h.probe.of_type("order.placed", first["id"])) == 1


async def test_idempotency_key_a_repeated_POST_requirements_changes_nothing_twice() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        order_id = (await place(buyer))["id"]
        key = {"Idempotency-Key": "requirements-1"}
        path = f"/orders/{order_id}/requirements"
        first = await buyer.post(path, {"requirements": "a red logo"}, headers=key, expect=200)
        second = await buyer.post(path, {"requirements": "a red logo"}, headers=key, expect=200)
        assert second == first and first["state"] == "in_progress"
        # Without the key, the same call is a second command, refused by ORD-1.
        problem(buyer, await buyer.post(path, {"requirements": "a red logo"}), 409, rule="ORD-1")

        await seller.post(f"/orders/{order_id}/deliveries", {"message": "v1"}, expect=200)
        await h.probe.wait_for("order.delivered", lambda m: m.subject == order_id)
        assert len(h.probe.of_type("order.requirements_submitted", order_id)) == 1
        entries = (await buyer.get(f"/orders/{order_id}/timeline", expect=200))["entries"]
        assert [e["type"] for e in entries] == ["order.placed", "order.requirements_submitted", "order.delivered"]


async def test_idempotency_key_longer_than_200_characters_is_422(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    buyer = h.client(service, "buyer-key", "buyer")
    body = await buyer.post("/orders", ORDER, headers={"Idempotency-Key": "k" * 201})
    problem(buyer, body, 422)
    assert (await buyer.get("/orders", expect=200)) == {"orders": [], "next_cursor": None}


# ---------------------------------------------------------------- system routes


async def test_system_healthz_and_readyz(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    anonymous = as_client(h, service, None)
    assert (await anonymous.get("/healthz", expect=200))["status"] == "ok"
    assert (await anonymous.get("/readyz", expect=200)) == {"status": "ready", "checks": {"bus": True, "store": True}}


async def test_system_metrics_is_prometheus_text(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    anonymous = as_client(h, service, None)
    await anonymous.get("/healthz", expect=200)
    text = await anonymous.get("/metrics", expect=200)
    assert anonymous.last_content_type == "text/plain"
    assert "# TYPE rescenter_http_requests_total counter" in text
    assert 'rescenter_http_requests_total{method="GET",route="/healthz",status="200"}' in text


async def test_system_openapi_lists_every_route(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    document = await as_client(h, service, None).get("/openapi.json", expect=200)
    assert document["openapi"].startswith("3.1")
    listed = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    served = {(route.method, route.path) for route in service.routes}
    assert listed == served
    assert ("GET", "/probe/seen") in listed  # plugin routes too
    assert document["paths"]["/orders"]["post"]["x-rules"] == ["ORD-1", "ORD-5"]


async def test_system_asyncapi_has_a_channel_for_every_core_message_type(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    document = await as_client(h, service, None).get("/asyncapi.json", expect=200)
    assert document["asyncapi"] == "3.0.0"
    # One channel per routing key (= message type); the queues have channels of their own.
    addresses = {channel["address"] for channel in document["channels"].values()
                 if channel["bindings"]["amqp"]["is"] == "routingKey"}
    assert set(core_catalogue().types) <= addresses
    assert set(service.services.catalogue.types) == addresses


async def test_system_unknown_path_is_404_problem(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    anonymous = as_client(h, service, None)
    problem(anonymous, await anonymous.get("/no/such/path"), 404)


async def test_system_wrong_method_is_405_problem_with_allow(shared: tuple[Harness, Service]) -> None:
    h, service = shared
    client = h.client(service, "buyer-1", "buyer")
    problem(client, await client.request("DELETE", "/orders"), 405)
    assert h.session is not None
    async with h.session.delete(f"http://127.0.0.1:{service.port}/orders") as response:
        assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}


# ---------------------------------------------------------------- test clock


async def test_clock_advance_is_admin_only() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        before = (await admin.get("/admin/clock", expect=200))["now"]
        for role in ("buyer", "seller", "support", "service"):
            client = h.client(service, f"{role}-1", role)
            problem(client, await client.post("/admin/clock/advance", {"by": "PT1H"}), 403)
        assert (await admin.get("/admin/clock", expect=200))["now"] == before
        moved = await admin.post("/admin/clock/advance", {"by": "PT1H"}, expect=200)
        assert datetime.fromisoformat(moved["now"]) == datetime.fromisoformat(before) + timedelta(hours=1)


async def test_clock_advance_is_refused_409_on_the_system_clock() -> None:
    async with Harness() as h:
        service = await h.start_instance(clock={"mode": "system"})
        admin = h.client(service, "admin-1", "admin")
        assert (await admin.get("/admin/clock", expect=200))["mode"] == "system"
        refused = problem(admin, await admin.post("/admin/clock/advance", {"by": "P2D"}), 409, mode="system")
        assert "test" in refused["detail"]


async def test_clock_advance_beyond_what_a_date_holds_is_422_and_moves_nothing() -> None:
    """Any body gets a 4xx problem: a duration that overflows the calendar, an instant past
    the last one the test clock takes, an offset that leaves the year 9999, a bare number."""
    async with Harness() as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        now = (await admin.get("/admin/clock", expect=200))["now"]
        for body in ({"by": "P99999999D"}, {"by": "P999999999D"}, {"by": "P9999999999D"},
                     {"by": "P1000000W"}, {"to": "9999-12-31T23:59:59+00:00"},
                     {"to": "9999-12-31T23:59:59-23:59"}, {"to": "9000-01-01T00:00:01+00:00"},
                     {"by": 1e300}, {"by": 3600}, {"by": "1 day"}):
            refused = problem(admin, await admin.post("/admin/clock/advance", body), 422)
            assert refused["status"] == 422, body
            assert (await admin.get("/admin/clock", expect=200))["now"] == now, body
        moved = await admin.post("/admin/clock/advance", {"to": "8999-12-31T23:00:00-01:00"}, expect=200)
        assert datetime.fromisoformat(moved["now"]) == datetime.fromisoformat("9000-01-01T00:00:00+00:00")


async def test_clock_moving_backwards_is_422() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        now = (await admin.get("/admin/clock", expect=200))["now"]
        earlier = (datetime.fromisoformat(now) - timedelta(hours=1)).isoformat()
        assert "forward" in problem(admin, await admin.post("/admin/clock/advance", {"to": earlier}), 422)["detail"]
        problem(admin, await admin.post("/admin/clock/advance", {"by": "-PT1H"}), 422)
        problem(admin, await admin.post("/admin/clock/advance", {"by": "PT1H", "to": now}), 422)
        assert (await admin.get("/admin/clock", expect=200))["now"] == now
