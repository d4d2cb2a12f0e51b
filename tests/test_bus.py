"""The bus against the real RabbitMQ: redeliveries (ORD-6, ORD-7), dead letters
with their reason, the delivery limit, unroutable messages, and a broker
restart under a running service."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import aio_pika
import pytest
from aio_pika.exceptions import DeliveryError

from core.bus import Bus, Subscription, Unroutable, delete_topology
from core.clock import utcnow
from core.messages import (
    Actor,
    Catalogue,
    ChargebackReported,
    DeliverOrder,
    Envelope,
    MessageData,
    MessageType,
    Money,
    PlaceOrder,
    SubmitRequirements,
    core_catalogue,
    new_id,
)
from core.metrics import Metrics
from core.settings import load_settings
from tests import failing_plugin, outage_veto_plugin
from tests.harness import ORDER, Harness
from tests.support import consumed, eventually, header, problem, rabbitmqctl_candidates, rabbitmqctl_for, run

BUYER = Actor(id="buyer-1", role="buyer")
SELLER = Actor(id="seller-1", role="seller")
SUBMIT = "command.order.submit_requirements"


def place_command(order_id: str, *, gig_id: str = "gig-1") -> PlaceOrder:
    return PlaceOrder(order_id=order_id, buyer_id="buyer-1", seller_id="seller-1", gig_id=gig_id,
                      price=Money(amount=Decimal("80.00"), currency="EUR"), delivery_days=3)


async def place_over_bus(h: Harness, order_id: str) -> None:
    await h.publish("command.order.place", place_command(order_id), subject=order_id)
    await h.probe.wait_for("order.placed", lambda m: m.subject == order_id)


async def queue_depth(h: Harness, queue: str) -> int:
    """Messages ready in a queue (not counting those a consumer holds)."""
    connection = await aio_pika.connect(h.settings.bus.url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


# ---------------------------------------------------------------- routing

TOPICS = [("order.#", "order"), ("order.#", "order.placed"), ("order.#", "order.a.b"), ("order.#", "orders.x"),
          ("order.*", "order"), ("order.*", "order.placed"), ("order.*", "order.a.b"), ("#", "any.thing"),
          ("#.placed", "order.placed"), ("#.placed", "placed"), ("*.placed", "placed"),
          ("order.placed", "order.placedx"), ("a.#.z", "a.z"), ("a.#.z", "a.b.c.z"), ("a.*.z", "a.z")]


async def test_a_subscription_takes_exactly_what_the_broker_routes_to_its_queue() -> None:
    """The bus finds a message's handler by the same topic patterns its queue is bound with:
    a message the broker delivers must find its handler, and only then (`#` is zero or more
    words, `*` exactly one)."""
    connection = await aio_pika.connect(load_settings().bus.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(f"test.topics.{new_id()}", aio_pika.ExchangeType.TOPIC)
        try:
            for pattern, key in TOPICS:
                queue = await channel.declare_queue(exclusive=True)
                await queue.bind(exchange, routing_key=pattern)
                try:
                    await exchange.publish(aio_pika.Message(b"{}"), routing_key=key, mandatory=True)
                    routed = True
                except DeliveryError:
                    routed = False
                subscription = Subscription(types=(pattern,), handler=lambda *_: None)  # type: ignore[arg-type]
                assert subscription.matches(key) is routed, (pattern, key, routed)
                await queue.delete(if_unused=False, if_empty=False)
        finally:
            await exchange.delete()


# ---------------------------------------------------------------- acknowledgements


class Numbered(MessageData):
    n: int


@contextlib.asynccontextmanager
async def numbered_bus(handler: Any, **settings: Any) -> Any:
    """A bus of its own (exchange, queue) with one group taking `test.numbered` messages."""
    tag = new_id()[:8]
    bus_settings = load_settings().bus.model_copy(
        update={"exchange": f"test.{tag}.events", "queue_prefix": f"test.{tag}", **settings})
    catalogue = Catalogue()
    catalogue.add(MessageType("test.numbered", Numbered, "A numbered test message.", "publish"))
    bus = Bus(bus_settings, catalogue, Metrics())
    await bus.connect()
    try:
        await bus.declare_group("numbers", [Subscription(types=("test.numbered",), handler=handler)])
        await bus.start_consuming("numbers")
        yield bus
    finally:
        await bus.close()
        await delete_topology(bus_settings, ("numbers",))


async def publish_numbers(bus: Bus, count: int) -> None:
    for n in range(count):
        await bus.publish(Envelope(id=f"n-{n}", source="tests", type="test.numbered", time=utcnow(),
                                   subject=f"s-{n}", data={"n": n}))


async def nothing_unacknowledged(bus: Bus, group: str) -> bool:
    """Stop the group's consumer and close its channel: whatever it left unacknowledged goes
    back to the queue, which must then be empty."""
    await bus.stop_consuming(group)
    channel = bus.groups[group].channel
    assert channel is not None
    await channel.close()
    return (await bus.queue_depths([bus.queue_name(group)]))[bus.queue_name(group)] == 0


async def test_a_message_handed_back_is_not_acknowledged_with_those_that_finish_meanwhile() -> None:
    """Acks are coalesced (one frame for a run of finished deliveries, core.acks); a delivery
    that fails and is handed back while later ones finish must come back, not be covered by
    their ack (ORD-6: at least once)."""
    calls: dict[int, int] = {}

    async def handler(envelope: Envelope, data: Any) -> None:
        calls[data.n] = calls.get(data.n, 0) + 1
        if data.n == 0 and calls[0] == 1:
            raise RuntimeError("a transient failure")

    async with numbered_bus(handler) as bus:
        await publish_numbers(bus, 30)
        await eventually(lambda: len(calls) == 30 and calls[0] == 2, what="every message, the first one twice")
        await asyncio.sleep(0.3)
        assert calls[0] == 2
        assert await nothing_unacknowledged(bus, "numbers")


async def test_messages_finished_behind_a_slow_one_are_acknowledged_without_waiting_for_it() -> None:
    """With a prefetch of 4, a message whose handler is still busy must not hold the acks of
    those that finished after it: the consumer goes on taking messages."""
    release = asyncio.Event()
    handled: list[int] = []

    async def handler(envelope: Envelope, data: Any) -> None:
        if data.n == 0:
            await release.wait()
        handled.append(data.n)

    async with numbered_bus(handler, prefetch=4) as bus:
        await publish_numbers(bus, 20)
        await eventually(lambda: len(handled) == 19, what="the 19 others handled while the first is busy")
        assert 0 not in handled
        release.set()
        await eventually(lambda: 0 in handled, what="the first one finished")
        assert await nothing_unacknowledged(bus, "numbers")


# ---------------------------------------------------------------- redelivery


async def test_ORD_6_redelivered_command_changes_nothing_twice() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = "bus-redelivered-1"
        await place_over_bus(h, order_id)

        submit = SubmitRequirements(order_id=order_id, actor=BUYER, requirements="a blue logo")
        await h.publish(SUBMIT, submit, subject=order_id, id="submit-once")
        await h.publish(SUBMIT, submit, subject=order_id, id="submit-once")  # the broker redelivers it
        await eventually(lambda: consumed(service, "core", SUBMIT) == 2, what="both copies handled")

        await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)
        await h.probe.settle(0.3)
        assert len(h.probe.of_type("order.requirements_submitted", order_id)) == 1
        order = await buyer.get(f"/orders/{order_id}", expect=200)
        assert order["state"] == "in_progress"
        assert order["version"] == 2  # placed, then changed once
        timeline = await buyer.get(f"/orders/{order_id}/timeline", expect=200)
        assert [e["type"] for e in timeline["entries"]] == ["order.placed", "order.requirements_submitted"]
        # The copy was a no-op, not a refusal: nothing was dead-lettered.
        assert await queue_depth(h, f"{h.settings.bus.queue_prefix}.core.dead") == 0


async def test_ORD_7_chargeback_reported_twice_cancels_once() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = "bus-chargeback-1"
        await place_over_bus(h, order_id)

        report = ChargebackReported(order_id=order_id, payment_id="pay-1")
        await h.publish("payment.chargeback_reported", report, subject=order_id, id="chargeback-1")
        await h.publish("payment.chargeback_reported", report, subject=order_id, id="chargeback-1")
        await eventually(lambda: consumed(service, "core", "payment.chargeback_reported") == 2,
                         what="both copies handled")

        cancelled = await h.probe.wait_for("order.cancelled", lambda m: m.subject == order_id)
        await h.probe.settle(0.3)
        assert len(h.probe.of_type("order.cancelled", order_id)) == 1
        assert cancelled[0].data["cause"] == "chargeback" and cancelled[0].data["rule"] == "ORD-7"
        order = await buyer.get(f"/orders/{order_id}", expect=200)
        assert order["state"] == "cancelled" and order["cancel_cause"] == "chargeback"
        timeline = await buyer.get(f"/orders/{order_id}/timeline", expect=200)
        assert [e["type"] for e in timeline["entries"]] == ["order.placed", "order.cancelled"]
        assert await queue_depth(h, f"{h.settings.bus.queue_prefix}.core.dead") == 0


# ---------------------------------------------------------------- dead letters


async def test_malformed_messages_are_dead_lettered_with_the_reason_and_the_consumer_carries_on() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        await h.publish("command.order.place", {}, raw=b"{this is not json")
        await h.publish("command.order.place", {"order_id": "bad-1", "buyer_id": "buyer-1"}, subject="bad-1",
                        id="invalid-data")
        await h.publish("command.order.zzz", {"order_id": "bad-2"}, subject="bad-2", id="unknown-type")
        await place_over_bus(h, "after-the-bad-ones")  # processed: the consumer is still there

        dead = await h.dead_letters("core", count=3)
        errors = {header(m, "x-rescenter-error"): m for m in dead}
        assert {header(m, "x-rescenter-reason") for m in dead} == {"invalid"}
        assert all(header(m, "x-rescenter-queue") == f"{h.settings.bus.queue_prefix}.core" for m in dead)

        not_json = [e for e in errors if e.startswith("invalid envelope")]
        assert len(not_json) == 1 and "JSON" in not_json[0]
        assert errors[not_json[0]].body == b"{this is not json"  # kept as it came, for a human to look at

        bad_data = [e for e in errors if e.startswith("invalid data for command.order.place")]
        assert len(bad_data) == 1
        for missing in ("seller_id", "gig_id", "price", "delivery_days"):
            assert missing in bad_data[0]
        assert errors[bad_data[0]].message_id == "invalid-data"

        unknown = [e for e in errors if "unknown message type" in e]
        assert unknown == ["unknown message type 'command.order.zzz'"]
        assert header(errors[unknown[0]], "x-rescenter-routing-key") == "command.order.zzz"

        order = await h.client(service, "buyer-1", "buyer").get("/orders/after-the-bad-ones", expect=200)
        assert order["state"] == "awaiting_requirements"
        assert await service.services.orders.collection.count_documents({"_id": {"$in": ["bad-1", "bad-2"]}}) == 0


async def test_ORD_1_command_refused_by_a_rule_is_dead_lettered_as_rejected_with_the_rule() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        seller = h.client(service, "seller-1", "seller")
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await buyer.post(f"/orders/{order_id}/requirements", {"requirements": "x"}, expect=200)
        await seller.post(f"/orders/{order_id}/deliveries", {"message": "v1"}, expect=200)
        await buyer.post(f"/orders/{order_id}/acceptance", expect=200)
        await h.probe.wait_for("order.completed", lambda m: m.subject == order_id)

        late_work = DeliverOrder(order_id=order_id, actor=SELLER, message="one more thing")
        await h.publish("command.order.deliver", late_work, subject=order_id, id="deliver-after-completion")

        [dead] = await h.dead_letters("core")
        assert header(dead, "x-rescenter-reason") == "rejected"
        error = header(dead, "x-rescenter-error")
        assert error.startswith("ORD-1: ") and "completed" in error
        assert dead.message_id == "deliver-after-completion"
        order = await buyer.get(f"/orders/{order_id}", expect=200)
        assert order["state"] == "completed" and order["delivery_count"] == 1
        await h.probe.settle(0.3)
        assert len(h.probe.of_type("order.delivered", order_id)) == 1


async def test_ORD_3_empty_delivery_over_the_bus_is_recorded_then_dead_lettered() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        order_id = "bus-empty-delivery"
        await place_over_bus(h, order_id)
        await h.publish(SUBMIT, SubmitRequirements(order_id=order_id, actor=BUYER, requirements="x"),
                        subject=order_id)
        await h.probe.wait_for("order.requirements_submitted", lambda m: m.subject == order_id)

        await h.publish("command.order.deliver", DeliverOrder(order_id=order_id, actor=SELLER, message="  "),
                        subject=order_id, id="empty-delivery")

        [dead] = await h.dead_letters("core")
        assert header(dead, "x-rescenter-reason") == "rejected"
        assert header(dead, "x-rescenter-error").startswith("ORD-3: empty delivery refused")
        refused = await h.probe.wait_for("order.delivery_refused", lambda m: m.subject == order_id)
        assert refused[0].data["rule"] == "ORD-3"
        order = await buyer.get(f"/orders/{order_id}", expect=200)
        assert order["state"] == "in_progress" and order["delivery_count"] == 0
        timeline = await buyer.get(f"/orders/{order_id}/timeline", expect=200)
        assert [e["type"] for e in timeline["entries"]][-1] == "order.delivery_refused"


async def test_handler_that_keeps_failing_is_dead_lettered_after_the_delivery_limit() -> None:
    async with Harness() as h:
        limit = 3  # not the default, so the setting is what counts
        service = await h.start_instance(plugins={"extra": ["tests.failing_plugin"]},
                                         bus={"delivery_limit": limit})
        assert "failing_plugin" in service.services.plugins.enabled
        await h.publish(failing_plugin.TYPE, {"note": "boom"}, id="poke-1")

        [dead] = await h.dead_letters("failing_plugin")
        assert header(dead, "x-rescenter-reason") == "delivery_limit"
        assert header(dead, "x-rescenter-error") == "RuntimeError: the failing plugin cannot handle poke-1"
        assert dead.message_id == "poke-1"
        # The dead letter is sent after the last attempt: the count is final.
        attempts = await service.services.store.collection(failing_plugin.COLLECTION).find_one({"_id": "poke-1"})
        assert attempts["attempts"] == limit
        # Given up for good: nothing left in the queue to try again.
        assert await queue_depth(h, f"{h.settings.bus.queue_prefix}.failing_plugin") == 0


async def test_a_store_outage_does_not_use_up_the_delivery_limit() -> None:
    """A handler that finds the store unreachable runs again in place, the message kept:
    a store down for longer than `delivery_limit` quick retries dead-lettered it before."""
    async with Harness() as h:
        service = await h.start_instance(plugins={"extra": ["tests.failing_plugin"]}, bus={"delivery_limit": 3})
        await h.publish(failing_plugin.OUTAGE_TYPE, {"note": "later"}, id="outage-1")
        attempts = service.services.store.collection(failing_plugin.COLLECTION)
        done = await eventually(lambda: attempts.find_one({"_id": "outage-1"}), timeout=30,
                                what="the handler succeeds once the store is back")
        assert done["attempts"] == failing_plugin.OUTAGE_RUNS + 1
        assert consumed(service, "failing_plugin", failing_plugin.OUTAGE_TYPE) == 1
        assert await queue_depth(h, f"{h.settings.bus.queue_prefix}.failing_plugin.dead") == 0
        registry = service.services.metrics.registry
        assert registry.get_sample_value("rescenter_store_outage_retries_total",
                                         {"plugin": "failing_plugin"}) == failing_plugin.OUTAGE_RUNS


async def test_ORD_5_a_veto_that_finds_the_store_unreachable_is_not_a_refusal() -> None:
    """A plugin that cannot check a new order because the store is down does not refuse it
    for good (ORD-5 "could not check this order", dead-lettered as rejected): over HTTP the
    placement is a 503 to retry, over the bus the command waits and the order is placed."""
    async with Harness() as h:
        service = await h.start_instance(plugins={"extra": ["tests.outage_veto_plugin"]})
        buyer = h.client(service, "buyer-1", "buyer")
        refused = await buyer.post("/orders", {**ORDER, "gig_id": outage_veto_plugin.GIG})
        problem(buyer, refused, 503)
        assert "rule" not in refused, refused
        assert len(outage_veto_plugin.undone) == 1  # what other plugins reserved is given back

        await h.publish("command.order.place", place_command("placed-after-outage", gig_id=outage_veto_plugin.GIG),
                        subject="placed-after-outage")
        await h.probe.wait_for("order.placed", lambda m: m.subject == "placed-after-outage", timeout=20)
        assert outage_veto_plugin.asked["placed-after-outage"] == outage_veto_plugin.OUTAGE_RUNS + 1
        assert await queue_depth(h, f"{h.settings.bus.queue_prefix}.core.dead") == 0


async def test_a_cluster_member_down_at_start_is_skipped_for_the_next() -> None:
    """`bus.urls`: each connection attempt goes to the next member (core.bus.ClusterConnection)."""
    from tests.embedded import free_port

    async with Harness() as h:
        down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        settings = h.settings.bus.model_copy(update={"url": down, "urls": [down, h.settings.bus.url]})
        bus = Bus(settings, core_catalogue(), Metrics())
        await bus.connect()
        try:
            assert bus.connected
            assert f":{urlparse(h.settings.bus.url).port or 5672}/" in str(bus.connection)
            await bus.publish(Envelope(id="through-the-second-member", source="tests", type="order.nobody_listens",
                                       time=utcnow(), subject="o-1", data={}))
        finally:
            await bus.close()


# ---------------------------------------------------------------- unroutable


async def test_publish_raises_unroutable_when_the_broker_returns_the_message() -> None:
    async with Harness() as h:
        # The harness's probe listens to everything; unbind it so nothing is subscribed.
        await h.probe.queue.unbind(h.settings.bus.exchange, "#")
        bus = Bus(h.settings.bus, core_catalogue(), Metrics())
        await bus.connect()
        try:
            def envelope(id_: str) -> Envelope:
                return Envelope(id=id_, source="tests", type="order.nobody_listens", time=utcnow(),
                                subject="o-1", data={})

            # Nobody subscribes: the alternate exchange keeps it.
            await bus.publish(envelope("kept"))
            await eventually(lambda: queue_depth(h, bus.unrouted_name), what="the unrouted queue holds it")

            # Even that queue is gone: the broker returns the message, publish says so.
            connection = await aio_pika.connect(h.settings.bus.url)
            async with connection:
                await (await connection.channel()).queue_delete(bus.unrouted_name)
            with pytest.raises(Unroutable, match="order.nobody_listens was returned"):
                await bus.publish(envelope("returned"))
        finally:
            await bus.close()


async def test_the_unrouted_queue_is_a_quorum_queue_and_an_older_classic_one_is_kept() -> None:
    async with Harness() as h:
        bus = Bus(h.settings.bus, core_catalogue(), Metrics())
        await bus.connect()
        await bus.close()
        connection = await aio_pika.connect(h.settings.bus.url)
        async with connection:
            channel = await connection.channel()
            # Declaring it again as classic is refused: it is a quorum queue.
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(bus.unrouted_name, durable=True, arguments={
                    "x-max-length": h.settings.bus.unrouted_max_length, "x-overflow": "drop-head"})
            channel = await connection.channel()
            await channel.queue_delete(bus.unrouted_name)
            # As an older release declared it: the service still starts and uses it.
            await channel.declare_queue(bus.unrouted_name, durable=True, arguments={
                "x-max-length": h.settings.bus.unrouted_max_length, "x-overflow": "drop-head"})
        service = await h.start_instance()
        assert service.services is not None and service.services.bus.connected


# ---------------------------------------------------------------- broker restart


def _local_broker(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


async def _rabbitmqctl(tool: str, *args: str) -> None:
    code, output = await run(tool, *args)
    assert code == 0, f"rabbitmqctl {' '.join(args)} failed: {output}"


class Witness:
    """A consumer on a durable queue, as another service would keep one: it
    misses nothing published while the broker restarts."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.name = f"{h.settings.bus.queue_prefix}.witness"
        self.messages: list[Envelope] = []
        self.connection: Any = None

    async def start(self) -> None:
        self.connection = await aio_pika.connect_robust(self.h.settings.bus.url, reconnect_interval=1)
        channel = await self.connection.channel()
        queue = await channel.declare_queue(self.name, durable=True)
        await queue.bind(self.h.settings.bus.exchange, routing_key="order.*")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: Any) -> None:
        self.messages.append(Envelope.model_validate_json(message.body))

    def has(self, type_: str, subject: str) -> bool:
        return any(m.type == type_ and m.subject == subject for m in self.messages)

    async def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                channel = await self.connection.channel()
                await channel.queue_delete(self.name)
            await self.connection.close()


@pytest.mark.skipif(not rabbitmqctl_candidates(), reason="rabbitmqctl is not on PATH: cannot restart the broker")
async def test_broker_restart_under_a_running_service_loses_no_message() -> None:
    async with Harness(plugins={"extra": ["tests.probe_plugin"]}) as h:
        if not _local_broker(h.settings.bus.url):
            pytest.skip(f"the broker at {h.settings.bus.url} is not local: not restarting it")
        rabbitmqctl = await rabbitmqctl_for(urlparse(h.settings.bus.url).port or 5672)
        service = await h.start_instance()
        assert service.services is not None
        witness = Witness(h)
        await witness.start()
        try:
            await _outage_and_recovery(h, service, witness, rabbitmqctl)
        finally:
            await witness.close()


async def _outage_and_recovery(h: Harness, service: Any, witness: Witness, rabbitmqctl: str) -> None:
    buyer = h.client(service, "buyer-1", "buyer")
    seller = h.client(service, "seller-1", "seller")
    first = (await buyer.post("/orders", ORDER, expect=201))["id"]
    await buyer.post(f"/orders/{first}/requirements", {"requirements": "x"}, expect=200)
    await eventually(lambda: witness.has("order.requirements_submitted", first), what="the witness is ready")

    try:
        await _rabbitmqctl(rabbitmqctl, "stop_app")
        # While the broker is away, commands are stored and answered; events wait in the outbox.
        delivered = await seller.post(f"/orders/{first}/deliveries", {"message": "v1"})
        assert seller.last_status == 200, delivered
        second = await buyer.post("/orders", ORDER)
        assert buyer.last_status == 201, second
        second_id = second["id"]
    finally:  # whatever happened, the broker is up again for the other tests
        await _rabbitmqctl(rabbitmqctl, "start_app")
        await _rabbitmqctl(rabbitmqctl, "await_startup")

    # A command over the bus after the restart: the core's consumer came back.
    await h.publish(SUBMIT, SubmitRequirements(order_id=second_id, actor=BUYER, requirements="y"),
                    subject=second_id)
    expected = [("order.delivered", first), ("order.placed", second_id),
                ("order.requirements_submitted", second_id)]
    await eventually(lambda: all(witness.has(t, s) for t, s in expected), timeout=30,
                     what=f"{expected} after the restart")

    # The probe plugin's consumer came back too and stored each of them.
    seen = service.services.store.collection("probe_seen")
    ids = list({m.id for m in witness.messages if (m.type, m.subject) in expected})
    await eventually(lambda: _count(seen, ids, len(ids)), timeout=30, what="the probe plugin caught up")
    for group in ("core", "probe"):
        assert service.services.bus.groups[group].consumer_tag is not None


async def _count(collection: Any, ids: list[str], expected: int) -> bool:
    return await collection.count_documents({"_id": {"$in": ids}}) == expected
