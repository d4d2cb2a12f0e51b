"""Bus commands are authorized by RabbitMQ's validated user id (issue 12, item 10).

Each test makes broker users of its own with rabbitmqctl, connects as them and
publishes with the AMQP `user_id` property set, which the broker checks against the
connection's user. The service applies a command only when `bus.authorization`
allows that user to send that type and to act for the role of `data.actor`; anything
else is dead-lettered with reason `unauthorized` and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, get_args
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import pytest
import pytest_asyncio

from core.bus import Bus, Senders, broker_user, topology
from core.clock import utcnow
from core.messages import (
    CORE_BINDINGS,
    Actor,
    CancelOrder,
    ChargebackReported,
    MessageData,
    SubmitRequirements,
    asyncapi_document,
    core_catalogue,
    make_envelope,
)
from core.metrics import Metrics
from core.settings import ActorRole, BusAuthorization, BusSettings
from tests.harness import ORDER, Harness
from tests.support import eventually, header, rabbitmqctl_for, run
from tests.test_disputes import SELLER_CANCEL, new_case

SUPPORT = Actor(id="support-1", role="support")


# ---------------------------------------------------------------- the decision, without a broker


def senders(require_user_id: bool = True, **users: dict[str, Any]) -> Senders:
    return Senders(BusAuthorization(require_user_id=require_user_id, users=users), own_user="rescenter")


SUBMIT = SubmitRequirements(order_id="o-1", actor=Actor(id="buyer-1", role="buyer"), requirements="x")
CANCEL = CancelOrder(order_id="o-1", actor=SUPPORT, reason="fraud")
CHARGEBACK = ChargebackReported(order_id="o-1")


@pytest.mark.parametrize(("user_id", "type_", "data", "refused"), [
    ("shop", "command.order.submit_requirements", SUBMIT, None),
    ("shop", "command.order.cancel", CANCEL, "may not act for the role 'support'"),
    ("desk", "command.order.cancel", CANCEL, None),
    ("desk", "command.order.submit_requirements", SUBMIT, "may not send command.order.submit_requirements"),
    ("payments", "payment.chargeback_reported", CHARGEBACK, None),  # no actor: the type is what counts
    ("payments", "command.order.cancel", CANCEL, "may not send command.order.cancel"),
    ("stranger", "payment.chargeback_reported", CHARGEBACK, "'stranger' is not in bus.authorization.users"),
    ("rescenter", "command.order.cancel", CANCEL, None),  # the service's own broker user
    (None, "command.order.submit_requirements", SUBMIT, "has no user_id property"),
])
def test_a_sender_is_allowed_its_types_and_roles_only(user_id: str | None, type_: str, data: MessageData,
                                                     refused: str | None) -> None:
    decide = senders(shop={"types": ["command.order.*"], "roles": ["buyer", "seller"]},
                     desk={"types": ["command.order.cancel"], "roles": ["support"]},
                     payments={"types": ["payment.#"]})
    refusal = decide.refusal(user_id, type_, data)
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refused in refusal


def test_topic_patterns_match_words_as_bindings_do() -> None:
    decide = senders(one={"types": ["command.*"]}, any={"types": ["command.#"]})
    assert decide.refusal("one", "command.order.cancel", CANCEL) is not None  # "*" is one word
    assert "may not act for the role 'support'" in decide.refusal("any", "command.order.cancel", CANCEL)


def test_without_require_user_id_a_message_without_one_is_applied_as_before() -> None:
    assert senders(require_user_id=False).refusal(None, "command.order.cancel", CANCEL) is None
    # A user id that is set is still checked.
    assert senders(require_user_id=False).refusal("stranger", "command.order.cancel", CANCEL) is not None


def test_the_roles_of_the_map_are_the_roles_an_actor_can_have() -> None:
    assert set(get_args(ActorRole)) == set(get_args(Actor.model_fields["role"].annotation))


@pytest.mark.parametrize(("url", "user"), [
    ("amqp://guest:guest@127.0.0.1:5672/", "guest"),
    ("amqp://rescenter%40prod:pw@rabbit/", "rescenter@prod"),
    ("amqp://127.0.0.1/", "guest"),  # RabbitMQ's default user when the URL names none
    ("amqps://rabbit:5671/?auth=external", None),  # a certificate names it: the URL cannot tell
])
def test_broker_user_is_the_user_of_the_url(url: str, user: str | None) -> None:
    assert broker_user(url) == user


def test_the_services_own_user_can_be_named_when_the_url_does_not() -> None:
    settings = BusSettings(url="amqps://rabbit:5671/?auth=external",
                           authorization=BusAuthorization(require_user_id=True, service_user="rescenter"))
    bus = Bus(settings, core_catalogue(), Metrics())
    assert bus.own_user == "rescenter"
    assert bus.senders.refusal("rescenter", "command.order.cancel", CANCEL) is None


def test_asyncapi_tells_each_sender_to_set_user_id_and_what_a_refusal_does() -> None:
    document = asyncapi_document(core_catalogue(), topology(BusSettings(), {"core": CORE_BINDINGS}))
    assert "`user_id`" in document["info"]["description"]
    assert "unauthorized" in document["info"]["description"]
    receive = {name: op for name, op in document["operations"].items() if op["action"] == "receive"}
    assert "receive_command_order_cancel" in receive and "receive_payment_chargeback_reported" in receive
    for name, operation in receive.items():
        assert "AMQP `user_id`" in operation.get("description", ""), name
        assert "`unauthorized`" in operation["description"], name
    assert "data.actor.role" in receive["receive_command_order_cancel"]["description"]
    assert "data.actor.role" not in receive["receive_payment_chargeback_reported"]["description"]


# ---------------------------------------------------------------- against the broker


MakeUser = Callable[[str], Awaitable[str]]


@pytest_asyncio.fixture(loop_scope="session")
async def harness() -> AsyncIterator[Harness]:
    async with Harness() as h:
        yield h


@pytest_asyncio.fixture(loop_scope="session")
async def broker_users(harness: Harness) -> AsyncIterator[MakeUser]:
    """Make broker users that may only write to this test's exchange; delete them after."""
    url = urlsplit(harness.settings.bus.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"the broker at {url.hostname} is not local: no rabbitmqctl for it")
    tool = await rabbitmqctl_for(url.port or 5672)
    vhost = url.path[1:] or "/"
    made: list[str] = []

    async def make(role: str) -> str:
        name = f"rc-test-{harness.tag}-{role}"
        for args in (("add_user", name, name), ("set_permissions", "-p", vhost, name, "^$",
                                                 f"^{harness.settings.bus.exchange.replace('.', '[.]')}$", "^$")):
            code, output = await run(tool, "-q", *args)
            assert code == 0, f"rabbitmqctl {args[0]} {name}: {output}"
            if args[0] == "add_user":
                made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            await run(tool, "-q", "delete_user", name)


async def send_as(h: Harness, user: str, type_: str, data: MessageData, *, subject: str,
                  user_id: str | None = "") -> str:
    """Publish as broker user `user` (password = name), with `user_id` = that user unless told."""
    url = urlsplit(h.settings.bus.url)
    netloc = f"{quote(user, safe='')}:{quote(user, safe='')}@{url.hostname}:{url.port or 5672}"
    envelope = make_envelope(type_, data, subject=subject, time=utcnow(), id=f"{type_}-{uuid.uuid4().hex[:8]}",
                             source=user)
    connection = await aio_pika.connect(urlunsplit((url.scheme, netloc, url.path, "", "")))
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(h.settings.bus.exchange, ensure=False)  # no configure right
        await exchange.publish(aio_pika.Message(
            envelope.body(), message_id=envelope.id, content_type="application/cloudevents+json",
            user_id=user if user_id == "" else user_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=type_)
    return envelope.id


def authorization(**users: dict[str, Any]) -> dict[str, Any]:
    """bus.authorization on, as in production: guest (the service's own user here) is not listed."""
    return {"authorization": {"require_user_id": True, "users": users}}


async def test_a_broker_user_sends_the_types_it_is_allowed_and_no_other(
        harness: Harness, broker_users: MakeUser) -> None:
    h = harness
    shop, payments = await broker_users("shop"), await broker_users("payments")
    service = await h.start_instance(bus=authorization(
        **{shop: {"types": ["command.order.submit_requirements", "command.order.deliver"], "roles": ["buyer"]},
           payments: {"types": ["payment.chargeback_reported"]}}))
    support = h.client(service, "support-1", "support")
    order_id = (await h.client(service, "buyer-1", "buyer").post("/orders", ORDER, expect=201))["id"]

    # ORD-2 by the shop, acting for the buyer: allowed, applied.
    submit = SubmitRequirements(order_id=order_id, actor=Actor(id="buyer-1", role="buyer"), requirements="x")
    await send_as(h, shop, "command.order.submit_requirements", submit, subject=order_id)
    await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)

    # ORD-1 cancellation by payments, which may send chargebacks only: refused, nothing changes.
    cancel = CancelOrder(order_id=order_id, actor=SUPPORT, reason="payments says so")
    message_id = await send_as(h, payments, "command.order.cancel", cancel, subject=order_id)
    [dead] = await h.dead_letters("core")
    assert header(dead, "x-rescenter-reason") == "unauthorized"
    assert header(dead, "x-rescenter-error") == f"broker user {payments!r} may not send command.order.cancel"
    assert header(dead, "x-rescenter-user-id") == payments
    assert dead.message_id == message_id
    order = await support.get(f"/orders/{order_id}", expect=200)
    assert (order["state"], order["version"]) == ("in_progress", 2)
    await h.probe.settle(0.3)
    assert h.probe.of_type("order.cancelled", order_id) == []

    # ORD-7 by payments: its own type, applied.
    await send_as(h, payments, "payment.chargeback_reported", ChargebackReported(order_id=order_id),
                  subject=order_id)
    [cancelled] = await h.probe.wait_for("order.cancelled", lambda m: m.subject == order_id)
    assert cancelled.data["cause"] == "chargeback"


async def test_a_broker_user_acts_only_for_the_roles_it_is_allowed(
        harness: Harness, broker_users: MakeUser) -> None:
    h = harness
    shop = await broker_users("shop")
    service = await h.start_instance(bus=authorization(
        **{shop: {"types": ["command.order.#"], "roles": ["buyer", "seller"]}}))
    support = h.client(service, "support-1", "support")
    order_id = (await h.client(service, "buyer-1", "buyer").post("/orders", ORDER, expect=201))["id"]

    # The shop may send every order command, but not as support (ORD-1: support cancels).
    cancel = CancelOrder(order_id=order_id, actor=SUPPORT, reason="I say I am support")
    await send_as(h, shop, "command.order.cancel", cancel, subject=order_id)
    [dead] = await h.dead_letters("core")
    assert header(dead, "x-rescenter-reason") == "unauthorized"
    assert header(dead, "x-rescenter-error") == (
        f"broker user {shop!r} may not act for the role 'support' (command.order.cancel)")
    assert (await support.get(f"/orders/{order_id}", expect=200))["state"] == "awaiting_requirements"

    submit = SubmitRequirements(order_id=order_id, actor=Actor(id="buyer-1", role="buyer"), requirements="x")
    await send_as(h, shop, "command.order.submit_requirements", submit, subject=order_id)
    await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)
    await h.probe.settle(0.3)
    assert h.probe.of_type("order.cancelled", order_id) == []


async def test_a_command_without_user_id_is_unauthorized_when_one_is_required(
        harness: Harness, broker_users: MakeUser) -> None:
    h = harness
    desk = await broker_users("desk")
    service = await h.start_instance(bus=authorization(
        **{desk: {"types": ["command.order.cancel"], "roles": ["support"]}}))
    support = h.client(service, "support-1", "support")
    order_id = (await h.client(service, "buyer-1", "buyer").post("/orders", ORDER, expect=201))["id"]
    cancel = CancelOrder(order_id=order_id, actor=SUPPORT, reason="duplicate order")

    # From an allowed user, but without the property: nobody can tell who sent it.
    await send_as(h, desk, "command.order.cancel", cancel, subject=order_id, user_id=None)
    [dead] = await h.dead_letters("core")
    assert header(dead, "x-rescenter-reason") == "unauthorized"
    assert "has no user_id property" in header(dead, "x-rescenter-error")
    assert (await support.get(f"/orders/{order_id}", expect=200))["state"] == "awaiting_requirements"

    await send_as(h, desk, "command.order.cancel", cancel, subject=order_id)
    [cancelled] = await h.probe.wait_for("order.cancelled", lambda m: m.subject == order_id)
    assert cancelled.data["cause"] == "support"


async def test_DSP_4_the_resolution_centers_command_carries_the_services_broker_user_and_is_applied(
        harness: Harness, broker_users: MakeUser) -> None:
    """The service's own user is not in the map; its commands to the core pass all the same."""
    h = harness
    other = await broker_users("other")
    service = await h.start_instance(bus=authorization(**{other: {"types": ["payment.#"]}}))
    seen: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(h.settings.bus.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(h.settings.bus.exchange, "command.order.cancel_by_agreement")

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen.append(message)

        await queue.consume(keep, no_ack=True)

        case = await new_case(h, service, f"busauth-{h.tag}")
        request = await case.open(case.seller, SELLER_CANCEL)
        await case.answer(case.buyer, request["id"], "accept")
        [cancelled] = await case.events("order.cancelled")
        assert (cancelled.data["cause"], cancelled.data["rule"]) == ("mutual_agreement", "DSP-4")
        await eventually(lambda: seen, what="the resolution center's command")
    assert {m.user_id for m in seen} == {broker_user(h.settings.bus.url)}


async def test_a_replayed_unauthorized_command_is_judged_as_its_original_sender_and_refused_again(
        harness: Harness, broker_users: MakeUser) -> None:
    """A replay is published by rescenter's own broker user, which may send anything: the
    service must still judge it as the user that sent the original (ORD-1: support cancels)."""
    h = harness
    payments = await broker_users("payments")
    service = await h.start_instance(bus=authorization(**{payments: {"types": ["payment.chargeback_reported"]}}))
    support = h.client(service, "support-1", "support")
    order_id = (await h.client(service, "buyer-1", "buyer").post("/orders", ORDER, expect=201))["id"]
    cancel = CancelOrder(order_id=order_id, actor=SUPPORT, reason="payments says so")
    message_id = await send_as(h, payments, "command.order.cancel", cancel, subject=order_id)
    await h.dead_letters("core")

    dead_letters = service.services.dead_letters
    queue = f"{h.settings.bus.queue_prefix}.core.dead"
    assert (await dead_letters.get(queue, message_id)).sender == payments
    replay = await dead_letters.replay(queue, [message_id], Actor(id="ada", role="admin"))
    assert replay.replayed == [message_id]

    async def refused_again() -> Any:
        record = await dead_letters.get(queue, message_id)
        return record if record.state == "dead" and record.replays == 1 else None

    record = await eventually(refused_again, what="the replay refused again")
    assert (record.reason, record.sender) == ("unauthorized", payments)
    assert record.error == f"broker user {payments!r} may not send command.order.cancel"
    assert (await support.get(f"/orders/{order_id}", expect=200))["state"] == "awaiting_requirements"
    await h.probe.settle(0.3)
    assert h.probe.of_type("order.cancelled", order_id) == []
