"""The contract an integrator reads (issue 12): /openapi.json describes every
answer (each 2xx with its schema, each problem it can answer) and how to
authenticate; the checks that hold the service to it (tests/contract.py, run on
every answer the suite receives) catch an answer the document does not
describe; /asyncapi.json lists every queue with its bindings and dead-letter
queue, what a publisher sets, and what each command answers, and the service
does what it says."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import pytest_asyncio
from openapi_spec_validator import validate

from core.cli import documents
from core.clock import utcnow
from core.http.auth import issue_token
from core.messages import Envelope
from core.service import Service
from core.settings import load_settings
from tests.contract import Contract, ContractViolation
from tests.harness import Client, Harness
from tests.support import header

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return documents(load_settings())["openapi.json"]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, item in document["paths"].items()
            for method, operation in item.items()]


def test_openapi_is_a_valid_openapi_3_1_document(openapi: dict[str, Any]) -> None:
    validate(openapi)


def test_openapi_every_operation_describes_its_answer_with_a_schema(openapi: dict[str, Any]) -> None:
    undescribed = []
    for method, path, operation in operations(openapi):
        answers = {status: r for status, r in operation["responses"].items() if status.startswith("2")}
        assert len(answers) == 1, f"{method} {path}: one success status, not {sorted(answers)}"
        (content,) = answers.values()
        for media, body in content.get("content", {}).items():
            if not body.get("schema"):
                undescribed.append(f"{method} {path} ({media})")
        if not content.get("content"):
            undescribed.append(f"{method} {path}")
    assert not undescribed, f"answers without a schema: {undescribed}"


def test_openapi_order_fields_are_documented(openapi: dict[str, Any]) -> None:
    """What integrators had to learn from live answers: the order's fields."""
    schema = openapi["paths"]["/orders/{order_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    order = openapi["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert {"id", "state", "due_at", "cancel_cause", "cancelled_from", "cancel_requested_by", "price",
            "version"} <= set(order["properties"])
    assert order["additionalProperties"] is False
    request = openapi["paths"]["/orders/{order_id}/resolution/requests"]["post"]["responses"]["201"]
    assert "id" in openapi["components"]["schemas"][
        request["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]["required"]


def test_openapi_every_operation_lists_its_problems(openapi: dict[str, Any]) -> None:
    for method, path, operation in operations(openapi):
        responses = operation["responses"]
        problems = {status for status in responses if status == "default" or status[0] in "45"}
        for status in problems:
            schema = responses[status].get("content", {}).get(PROBLEM, {}).get("schema")
            assert schema == {"$ref": "#/components/schemas/Problem"}, f"{method} {path} {status}"
        assert "default" in responses
        if "security" in operation:
            assert {"401", "403"} <= problems, f"{method} {path}: a token may be refused"
        if "{" in path and not path.startswith(("/availability/sellers/{seller_id}", "/sellers/{seller_id}/reviews")):
            assert "404" in problems, f"{method} {path}"
        if "requestBody" in operation:
            assert {"413", "422"} <= problems, f"{method} {path}: a body may be invalid or too large"
        if method in ("POST", "PUT", "DELETE"):
            assert "409" in problems, f"{method} {path}: a change may be refused by a rule"
        if "x-plugin" in operation:
            assert "503" in problems, f"{method} {path}: the plugin may be off"
    problem = openapi["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "rule", "errors"} <= set(problem["properties"])


# ---------------------------------------------------------------- the checks catch what they should


def check(openapi: dict[str, Any], method: str, path: str, status: int, body: Any,
          content_type: str = "application/json") -> None:
    Contract.of(openapi).check(method, f"http://127.0.0.1:1{path}", status, content_type,
                               json.dumps(body).encode())


HEALTH = {"status": "ok", "instance": "i-1"}


def test_contract_accepts_a_described_answer(openapi: dict[str, Any]) -> None:
    check(openapi, "GET", "/healthz", 200, HEALTH)
    check(openapi, "GET", "/orders/o-1", 404,
          {"type": "https://rescenter.dev/problems/not-found", "title": "Not found", "status": 404,
           "detail": "no order 'o-1'", "order_id": "o-1"}, PROBLEM)


@pytest.mark.parametrize(("method", "path", "status", "body", "content_type", "why"), [
    ("GET", "/healthz", 200, {**HEALTH, "uptime": 3}, "application/json", "a field the model does not declare"),
    ("GET", "/healthz", 200, {"status": "ok"}, "application/json", "a required field missing"),
    ("GET", "/admin/clock", 200, {"mode": "test", "now": "yesterday"}, "application/json", "not a date-time"),
    ("GET", "/healthz", 409, {"type": "about:blank", "title": "Conflict", "status": 409}, PROBLEM,
     "a problem status the operation does not list"),
    ("GET", "/orders/o-1", 404, {"title": "Not found"}, PROBLEM, "a problem without type and status"),
    ("GET", "/healthz", 200, HEALTH, PROBLEM, "a content type the operation does not answer with"),
    ("GET", "/no/such/path", 200, HEALTH, "application/json", "no operation, and not a problem"),
])
def test_contract_refuses_an_answer_the_document_does_not_describe(
        openapi: dict[str, Any], method: str, path: str, status: int, body: Any, content_type: str, why: str) -> None:
    with pytest.raises(ContractViolation):
        check(openapi, method, path, status, body, content_type)


# ---------------------------------------------------------------- authentication (the bearer scheme)


def test_auth_is_documented_in_the_openapi_security_scheme(openapi: dict[str, Any]) -> None:
    description = openapi["components"]["securitySchemes"]["bearer"]["description"]
    for claim in ("`roles`", "`sub`", "`aud`", "`exp`", "`iss`"):
        assert claim in description, claim
    for role in ("buyer", "seller", "support", "admin", "service"):
        assert f"`{role}`" in description, role
    assert "real clock" in description and "test clock mode" in description


async def test_auth_exp_is_checked_against_the_real_clock_even_in_test_clock_mode() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        await admin.post("/admin/clock/advance", {"by": "P30D"}, expect=200)
        # A month later on the test clock, a token valid for an hour of real time still works...
        fresh = Client(h.session, f"http://127.0.0.1:{service.port}", h.token("buyer-1", "buyer"))
        assert (await fresh.get("/orders", expect=200))["orders"] == []
        # ...and one whose real exp has passed is refused, whatever the test clock says.
        stale = Client(h.session, f"http://127.0.0.1:{service.port}",
                       issue_token(h.settings.auth, "buyer-1", ["buyer"], ttl=-60))
        refused = await stale.get("/orders", expect=401)
        assert refused["detail"] == "the token has expired"


# ---------------------------------------------------------------- the bus (AsyncAPI)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def running() -> AsyncIterator[tuple[Harness, Service]]:
    async with Harness() as h:
        yield h, await h.start_instance()


def queue_channels(asyncapi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The queue channels, by consumer group (channel `queue_<group>`)."""
    return {key.removeprefix("queue_"): channel for key, channel in asyncapi["channels"].items()
            if key.startswith("queue_")}


async def test_asyncapi_lists_every_queue_with_its_bindings_and_dead_letter_queue(
        running: tuple[Harness, Service]) -> None:
    h, service = running
    bus = service.services.bus
    document = await h.client(service).get("/asyncapi.json", expect=200)
    listed = {channel["address"]: (channel["x-bindings"], channel["x-dead-letter-queue"])
              for channel in queue_channels(document).values()}
    declared = {bus.queue_name(name): (group.bindings, bus.dead_queue_name(name)) for name, group in bus.groups.items()}
    assert listed == declared
    # The core's own queue: every order command and payments' chargebacks (ORD-7).
    assert listed[bus.queue_name("core")][0] == ["command.order.#", "payment.chargeback_reported"]
    dead = {channel["address"]: channel["x-bindings"] for key, channel in document["channels"].items()
            if key.startswith("dead_")}
    assert dead == {dlq: [queue] for queue, (_, dlq) in declared.items()}
    # Each exists on the broker as documented.
    connection = await aio_pika.connect(h.settings.bus.url)
    async with connection:
        for name in [*listed, *dead]:
            channel = await connection.channel()
            await channel.declare_queue(name, passive=True)


async def test_asyncapi_committed_document_lists_the_queues_a_default_instance_declares(
        running: tuple[Harness, Service]) -> None:
    _, service = running
    committed = json.loads((Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json").read_text())
    listed = {group: channel["x-bindings"] for group, channel in queue_channels(committed).items()}
    assert listed == {name: group.bindings for name, group in service.services.bus.groups.items()}
    prefix = load_settings().bus.queue_prefix
    assert queue_channels(committed)["core"]["address"] == f"{prefix}.core"
    assert queue_channels(committed)["core"]["x-dead-letter-queue"] == f"{prefix}.core.dead"


def test_asyncapi_tells_a_publisher_which_amqp_properties_to_set_and_what_happens_without_them() -> None:
    description = documents(load_settings())["asyncapi.json"]["info"]["description"]
    for words in ("`message_id` = the envelope's `id`", "`content_type` = `application/cloudevents+json`",
                  "without the other properties is processed all the same", "x-rescenter-reason"):
        assert words in description, words


def raw_envelope(type_: str, data: dict[str, Any], subject: str) -> Envelope:
    return Envelope(id=uuid.uuid4().hex, source="tests", type=type_, time=utcnow(), subject=subject, data=data)


async def test_asyncapi_every_command_is_answered_as_its_reply_says(running: tuple[Harness, Service]) -> None:
    """ORD-1..ORD-7, DSP-4, DSP-6, DSP-7, DSP-8: each command, published as bare as the document allows
    (no AMQP properties at all), is answered by the event its operation's `reply` names."""
    h, service = running
    document = await h.client(service).get("/asyncapi.json", expect=200)
    replies = {}
    for operation in document["operations"].values():
        if "reply" in operation:
            command = operation["channel"]["$ref"].rsplit("/", 1)[1]
            answer = operation["reply"]["channel"]["$ref"].rsplit("/", 1)[1]
            replies[document["channels"][command]["address"]] = document["channels"][answer]["address"]
    tag = uuid.uuid4().hex[:8]
    buyer = {"id": f"buyer-{tag}", "role": "buyer"}
    seller = {"id": f"seller-{tag}", "role": "seller"}
    staff = {"id": "support-1", "role": "support"}
    answered: set[str] = set()

    async def send(type_: str, order_id: str, **data: Any) -> Envelope:
        before = len(h.probe.of_type(replies[type_], order_id))
        envelope = raw_envelope(type_, {"order_id": order_id, **data}, order_id)
        await h.publish(type_, {}, raw=envelope.body())  # no message_id, no content_type
        await h.probe.wait_for(replies[type_], lambda m: m.subject == order_id, count=before + 1)
        answered.add(type_)
        return envelope

    def place(order_id: str) -> dict[str, Any]:
        return {"buyer_id": buyer["id"], "seller_id": seller["id"], "gig_id": "gig-1",
                "price": {"amount": "50.00", "currency": "EUR"}, "delivery_days": 3}

    first, second, third, fourth = (f"cmd-{tag}-{n}" for n in range(4))
    await send("command.order.place", first, **place(first))
    await send("command.order.submit_requirements", first, actor=buyer, requirements="a logo")
    await send("command.order.extend_delivery", first, actor=staff, days=2)
    await send("command.order.amend", first, actor=staff, added_revisions=1)
    await send("command.order.deliver", first, actor=seller, message="here it is")
    await send("command.order.request_revision", first, actor=buyer, reason="bigger")
    await send("command.order.deliver", first, actor=seller, message="bigger now")
    accepted = await send("command.order.accept", first, actor=buyer)
    for order_id in (second, third, fourth):
        await send("command.order.place", order_id, **place(order_id))
    await send("command.order.cancel", second, actor=staff, reason="duplicate")
    await send("command.order.cancel_by_agreement", third, actor=staff, requested_by="buyer", rule="DSP-6")
    await send("payment.chargeback_reported", fourth)
    assert answered == set(replies)

    # The same command again (same envelope id): applied once, no second answer.
    await h.publish("command.order.accept", {}, raw=accepted.body())
    # A command the state refuses: dead-lettered, reason `rejected`, the rule first (ORD-1).
    refused = raw_envelope("command.order.accept", {"order_id": second, "actor": buyer}, second)
    await h.publish("command.order.accept", {}, raw=refused.body())
    [dead] = await h.dead_letters("core")
    assert header(dead, "x-rescenter-reason") == "rejected"
    assert header(dead, "x-rescenter-error").startswith("ORD-1: ")
    assert Envelope.model_validate_json(dead.body).id == refused.id
    assert len(h.probe.of_type("order.completed", first)) == 1
