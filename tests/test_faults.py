"""The fault suite (issue 14): order lifecycles streamed through the bus to two service
processes while something breaks, each against real servers (ORD-1, ORD-4, ORD-6).

- an instance killed with SIGKILL three times mid-stream and started again;
- one RabbitMQ node of three killed mid-stream and started again (the cluster of
  `scripts/services start --cluster 3`, started here when it is not running, and stopped
  again by the test that started it);
- the store (an embedded store of the test's own, on a spare port) stopped for 10 s and
  started again, `/readyz` saying what is down while it is down.

Each lifecycle places an order, submits its requirements and delivers it through bus
commands, each sent after the event of the previous one (as a client acts on what it
sees); even ones are accepted by a command, odd ones are left to the auto-completion
deadline (ORD-4), fired by moving the shared test clock once the stream is done. An
independent tap (a durable quorum queue bound to `#`, its own connection) counts the
events by CloudEvents id. Each test prints the counts: sent, final, missing, duplicates
by id (allowed: delivery is at least once, a fault between publish and clear sends an event
again), doubled effects (a change applied twice: never allowed), deadlines fired, and the
longest wait for an event (recovery seconds). `pytest -m faults` runs only these.

The sizes are kept to what two shared slow cores run in a few minutes
(`RESCENTER_FAULT_LIFECYCLES`, 500 per test by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from pymongo import AsyncMongoClient

from core.bus import ClusterConnection
from core.clock import utcnow
from core.messages import (
    AcceptDelivery,
    Actor,
    DeliverOrder,
    Envelope,
    MessageData,
    PlaceOrder,
    SubmitRequirements,
    make_envelope,
)
from tests.embedded import EmbeddedStore, free_port, launcher
from tests.harness import Harness
from tests.support import run
from tests.test_two_processes import ROOT, ServiceProcess, metric, process_env

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

LIFECYCLES = int(os.environ.get("RESCENTER_FAULT_LIFECYCLES", "500"))
IN_FLIGHT = 40  # lifecycles running at once
STEP_TIMEOUT = 20.0  # seconds without the awaited event before the command is sent again (same id)
FINAL_TIMEOUT = 120.0  # for the stream's end, the deadlines and the tap to go quiet
CLUSTER_SIZE = 3
CLUSTER_PORT = int(os.environ.get("RESCENTER_CLUSTER_PORT", "5681"))
SERVICES = ROOT / "scripts" / "services"
#: every lifecycle ends so, accepted by a command or completed by its deadline (ORD-4)
TIMELINE = ["order.placed", "order.requirements_submitted", "order.delivered", "order.completed"]


def _connection(members: tuple[str, ...]) -> ClusterConnection:
    return ClusterConnection(members[0], members=members, fail_fast=False, reconnect_interval=0.5)


class Tap:
    """Another service's view: a durable quorum queue bound to `#` on the exchange, over a
    connection of its own that moves to another member when its node goes away."""

    def __init__(self, members: tuple[str, ...], exchange: str, queue: str) -> None:
        self.members, self.exchange, self.queue_name = members, exchange, queue
        self.messages: list[Envelope] = []
        self.arrived = asyncio.Event()
        self.connection: ClusterConnection | None = None
        self._queue: Any = None  # strong reference, for recovery

    async def start(self) -> None:
        self.connection = _connection(self.members)
        await self.connection.connect()
        channel = await self.connection.channel()
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True,
            arguments={"alternate-exchange": f"{self.exchange}.unrouted"})
        self._queue = await channel.declare_queue(self.queue_name, durable=True,
                                                  arguments={"x-queue-type": "quorum"})
        await self._queue.bind(exchange, routing_key="#")
        await self._queue.consume(self._on_message)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(Envelope.model_validate_json(message.body))
            self.arrived.set()
        with contextlib.suppress(Exception):
            await message.ack()

    def has(self, type_: str, subject: str) -> bool:
        return any(m.type == type_ and m.subject == subject for m in self.messages)

    async def settle(self, quiet: float = 2.0) -> None:
        seen = -1
        while seen != len(self.messages):
            seen = len(self.messages)
            await asyncio.sleep(quiet)

    async def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                channel = await self.connection.channel()
                await channel.queue_delete(self.queue_name)
            await self.connection.close()


class Sender:
    """Another marketplace service sending commands with confirms; a command that is not
    confirmed (its node went away) is sent again with the same id: it applies once (ORD-6)."""

    def __init__(self, members: tuple[str, ...], exchange: str) -> None:
        self.members, self.exchange_name = members, exchange
        self.connection: ClusterConnection | None = None
        self.exchange: Any = None
        self.sent = 0
        self.unconfirmed = 0  # publishes retried because the broker did not confirm them

    async def start(self) -> None:
        self.connection = _connection(self.members)
        await self.connection.connect()
        channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await channel.get_exchange(self.exchange_name)

    async def send(self, envelope: Envelope) -> None:
        message = aio_pika.Message(envelope.body(), message_id=envelope.id, type=envelope.type,
                                   content_type="application/cloudevents+json",
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        for _ in range(120):
            try:
                async with asyncio.timeout(5):
                    await self.exchange.publish(message, routing_key=envelope.type)
                self.sent += 1
                return
            except Exception:
                self.unconfirmed += 1
                await asyncio.sleep(0.5)
        raise AssertionError(f"{envelope.type} {envelope.id} could not be sent for a minute")

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


@dataclass
class Counts:
    fault: str
    sent: int = 0
    final: int = 0
    missing: int = 0
    duplicates: int = 0
    doubled: int = 0
    deadlines_fired: int = 0
    deadlines_expected: int = 0
    dead_letters: int = 0
    resent: int = 0
    recovery: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"[{self.fault}] {self.sent} lifecycles sent in {self.seconds:.0f} s: {self.final} final, "
                f"{self.missing} events missing, {self.duplicates} ids seen twice or more, "
                f"{self.doubled} changes applied twice, deadlines fired {self.deadlines_fired} of "
                f"{self.deadlines_expected}, {self.dead_letters} dead letters, {self.resent} commands sent again "
                f"for want of their event, recovery (longest wait for an event) {self.recovery:.1f} s"
                + (f"; {'; '.join(self.notes)}" if self.notes else ""))


class Stream:
    """The lifecycles, the tap and the counts of one scenario."""

    def __init__(self, h: Harness, sender: Sender, tap: Tap) -> None:
        self.h, self.sender, self.tap = h, sender, tap
        self.orders: dict[str, bool] = {}  # order id -> accepted by a command (else by the deadline)
        self.longest_wait = 0.0
        self.resent = 0  # commands sent again because their event did not come within STEP_TIMEOUT
        self.finished = 0  # lifecycles done

    async def step(self, order_id: str, type_: str, data: MessageData, event: str) -> None:
        envelope = make_envelope(type_, data, subject=order_id, time=utcnow(), source="fault-suite")
        started = time.monotonic()
        resent = 0
        await self.sender.send(envelope)
        while not self.tap.has(event, order_id):
            if time.monotonic() - started > STEP_TIMEOUT * (resent + 1):
                if resent == 3:
                    return  # counted as missing at the end
                await self.sender.send(envelope)  # the same id: applied once whatever happened
                resent += 1
                self.resent += 1
            self.tap.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tap.arrived.wait(), 0.5)
        self.longest_wait = max(self.longest_wait, time.monotonic() - started)

    async def lifecycle(self, i: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            order_id = f"fault-{uuid.uuid4().hex[:12]}"
            accept = i % 2 == 0
            self.orders[order_id] = accept
            buyer = Actor(id=f"buyer-{i % 17}", role="buyer")
            seller = Actor(id=f"seller-{i % 13}", role="seller")
            await self.step(order_id, "command.order.place",
                            PlaceOrder(order_id=order_id, buyer_id=buyer.id, seller_id=seller.id, gig_id="gig-1",
                                       price={"amount": "50.00", "currency": "EUR"}, delivery_days=3),
                            "order.placed")
            await self.step(order_id, "command.order.submit_requirements",
                            SubmitRequirements(order_id=order_id, actor=buyer, requirements="a logo"),
                            "order.requirements_submitted")
            await self.step(order_id, "command.order.deliver",
                            DeliverOrder(order_id=order_id, actor=seller, message="done"), "order.delivered")
            if accept:
                await self.step(order_id, "command.order.accept", AcceptDelivery(order_id=order_id, actor=buyer),
                                "order.completed")
            self.finished += 1

    async def run(self, fault: Callable[[], Awaitable[None]]) -> float:
        """The stream, and the fault started once a fifth of it is under way."""
        gate = asyncio.Semaphore(IN_FLIGHT)
        started = time.monotonic()
        lifecycles = [asyncio.create_task(self.lifecycle(i, gate)) for i in range(LIFECYCLES)]

        async def fault_when_under_way() -> None:
            while sum(1 for m in self.tap.messages if m.type == "order.delivered") < LIFECYCLES // 5:
                await asyncio.sleep(0.1)
            await fault()

        injected = asyncio.create_task(fault_when_under_way())
        await asyncio.gather(*lifecycles)
        await injected
        return time.monotonic() - started

    async def complete_the_rest(self, session: aiohttp.ClientSession, base: str) -> None:
        """Move the shared test clock past every auto-completion (ORD-4)."""
        token = self.h.token("admin-1", "admin")
        async with session.post(f"{base}/admin/clock/advance", json={"by": "P4D"},
                                headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
        unanswered = [o for o, accepted in self.orders.items() if not accepted]
        deadline = time.monotonic() + FINAL_TIMEOUT
        while not all(self.tap.has("order.completed", o) for o in unanswered) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)

    async def count(self, fault: str, seconds: float) -> Counts:
        await self.tap.settle()
        counts = Counts(fault, sent=len(self.orders), seconds=seconds, recovery=self.longest_wait)
        by_id = Counter(m.id for m in self.tap.messages)
        counts.duplicates = sum(1 for n in by_id.values() if n > 1)
        client: AsyncMongoClient[Any] = AsyncMongoClient(self.h.settings.store.url)
        try:
            db = client[self.h.settings.store.database]
            orders = {o["_id"]: o for o in await db["orders"].find(
                {"_id": {"$in": list(self.orders)}}, {"state": 1, "_version": 1, "timeline": 1}).to_list()}
            deadlines = await db["deadlines"].find(
                {"subject": {"$in": list(self.orders)}, "kind": "order.auto_complete"}).to_list()
        finally:
            await client.close()
        for order_id in self.orders:
            order = orders.get(order_id)
            expected = TIMELINE
            events = {(m.type, m.id) for m in self.tap.messages if m.subject == order_id}
            seen_types = Counter(t for t, _ in events)
            counts.missing += sum(1 for t in expected if seen_types[t] == 0)
            if order is None:
                continue
            if order["state"] == "completed":
                counts.final += 1
            timeline = [entry["type"] for entry in order["timeline"]]
            # A change applied twice shows as a timeline entry (and a distinct event id) too many.
            counts.doubled += max(0, len(timeline) - len(expected)) + sum(
                max(0, n - 1) for n in seen_types.values())
            if order["_version"] != len(timeline):
                counts.doubled += 1
                counts.notes.append(f"{order_id}: version {order['_version']} for {len(timeline)} entries")
        counts.deadlines_expected = sum(1 for accepted in self.orders.values() if not accepted)
        counts.deadlines_fired = sum(
            1 for o, accepted in self.orders.items() if not accepted and any(
                entry["type"] == "order.completed" and entry.get("rule") == "ORD-4" and
                (entry.get("actor") or {}).get("role") == "system" for entry in orders.get(o, {}).get("timeline", [])))
        counts.resent = self.resent
        dead = await self.dead_letters()
        counts.dead_letters = len(dead)
        counts.notes += dead
        done = Counter(d["state"] for d in deadlines)
        counts.notes.append(f"auto-completion deadlines {dict(done)}")
        return counts

    async def dead_letters(self) -> list[str]:
        """What the dead-letter queues hold: each message's group, type, reason and error."""
        connection = _connection(self.tap.members)
        await connection.connect()
        found = []
        try:
            for group in ("core", "disputes", "reviews", "metrics"):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                    queue = await channel.declare_queue(f"{self.h.settings.bus.queue_prefix}.{group}.dead",
                                                        passive=True)
                    while (message := await queue.get(no_ack=True, fail=False)) is not None:
                        headers = message.headers or {}
                        found.append(f"{group}: {message.type} {headers.get('x-rescenter-reason')!s} "
                                     f"{headers.get('x-rescenter-error')!s}"[:300])
        finally:
            await connection.close()
        return found


def check(counts: Counts) -> None:
    print(counts)
    assert counts.final == counts.sent, counts
    assert counts.missing == 0, counts
    assert counts.doubled == 0, counts
    assert counts.deadlines_fired == counts.deadlines_expected, counts
    assert counts.dead_letters == 0, counts


@contextlib.asynccontextmanager
async def processes(h: Harness, count: int, urls: list[tuple[str, ...]] | None = None):  # type: ignore[no-untyped-def]
    """`count` service processes on the harness's database, exchange and queues."""
    assert h.session is not None
    logs = Path(tempfile.mkdtemp(prefix=f"rescenter-faults-{h.tag}-"))
    procs = []
    for n in range(count):
        port = free_port()
        env = process_env(h.settings, f"fault-{n}", port)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if urls:
            env["RESCENTER_BUS__URLS"] = json.dumps(list(urls[n % len(urls)]))
        procs.append(ServiceProcess(f"p{n}", env, port, logs / f"p{n}.log"))
    failed = True
    try:
        await asyncio.gather(*(p.start(h.session) for p in procs))
        yield procs
        failed = False
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
        if failed:
            for proc in procs:
                proc.dump()
        else:
            shutil.rmtree(logs, ignore_errors=True)


async def sigkill(proc: ServiceProcess) -> None:
    assert proc.process is not None
    proc.process.send_signal(signal.SIGKILL)
    await proc.process.wait()


@contextlib.asynccontextmanager
async def streaming(h: Harness, members: tuple[str, ...]) -> AsyncIterator[Stream]:
    """Another service's tap on the exchange and its command sender, started, as one Stream;
    both closed (the tap's queue deleted) however the scenario ends."""
    tap = Tap(members, h.settings.bus.exchange, f"{h.settings.bus.queue_prefix}.tap")
    sender = Sender(members, h.settings.bus.exchange)
    try:
        await tap.start()
        await sender.start()
        yield Stream(h, sender, tap)
    finally:
        await sender.close()
        await tap.close()


# ---------------------------------------------------------------- an instance killed three times


async def test_ORD_4_ORD_6_an_instance_killed_three_times_mid_stream_loses_and_doubles_nothing() -> None:
    async with Harness() as h:
        assert h.session is not None
        async with processes(h, 2) as (a, b), streaming(h, (h.settings.bus.url,)) as stream:
            kills: list[int] = []  # lifecycles done at each kill: all three mid-stream

            async def kill_three_times() -> None:
                for _ in range(3):
                    await sigkill(b)
                    kills.append(stream.finished)
                    await asyncio.sleep(0.5)
                    await b.start(h.session)
                    await asyncio.sleep(0.5)

            seconds = await stream.run(kill_three_times)
            await stream.complete_the_rest(h.session, a.base)
            counts = await stream.count("two instances, one SIGKILLed 3 times", seconds)
            counts.notes.append(f"killed when {', '.join(map(str, kills))} lifecycles were done")
        assert len(kills) == 3 and all(done < LIFECYCLES for done in kills), kills
        check(counts)


# ---------------------------------------------------------------- a broker node killed


def cluster_urls() -> tuple[str, ...]:
    return tuple(f"amqp://guest:guest@127.0.0.1:{CLUSTER_PORT + n}/" for n in range(CLUSTER_SIZE))


async def cluster_up() -> bool:
    code, output = await run(str(SERVICES), "status", timeout=60)
    return code == 0 and output.count("cluster member") >= CLUSTER_SIZE


@contextlib.asynccontextmanager
async def cluster():  # type: ignore[no-untyped-def]
    """The local cluster: reused when `scripts/services start --cluster 3` runs it, else
    started here and stopped afterwards."""
    if shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin") is None:
        pytest.skip("RabbitMQ is not installed on this machine: no local cluster")
    ours = not await cluster_up()
    if ours:
        code, output = await run(str(SERVICES), "start", "--cluster", str(CLUSTER_SIZE), timeout=240)
        assert code == 0, output
    try:
        yield cluster_urls()
    finally:
        if ours:
            await run(str(SERVICES), "stop", "--cluster", timeout=120)


async def queue_members(prefix: str) -> dict[str, list[str]]:
    """The nodes each of the service's queues is replicated on (quorum queue members)."""
    env = ROOT / ".local" / "rabbitmq-cluster" / f"node-{CLUSTER_SIZE}" / "env.sh"
    code, output = await run("bash", "-c", f"source {env} && /usr/lib/rabbitmq/bin/rabbitmqctl -q list_queues "
                             "name type members --formatter json", timeout=60)
    assert code == 0, output
    return {q["name"]: q["members"] for q in json.loads(output)
            if q["name"].startswith(prefix + ".") and not q["name"].endswith(".tap")}


async def test_ORD_4_ORD_6_a_broker_node_of_three_killed_mid_stream_loses_and_doubles_nothing() -> None:
    async with cluster() as members:
        # Instances start on different members; the one killed is the first instance's own.
        async with Harness(bus={"url": members[-1], "urls": list(members)}) as h:
            assert h.session is not None
            orders_of_members = [members, members[1:] + members[:1]]
            async with processes(h, 2, orders_of_members) as (a, b), streaming(h, members[::-1]) as stream:
                pid_file = ROOT / ".local" / "rabbitmq-cluster" / "node-1" / "rabbitmq.pid"
                restarted: list[float] = []

                replicas = await queue_members(h.settings.bus.queue_prefix)
                assert replicas and all(len(nodes) == CLUSTER_SIZE for nodes in replicas.values()), replicas
                consumed_by_a: list[float] = []

                async def kill_a_node() -> None:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
                    started = time.monotonic()
                    # The first instance was on that node: it goes on with another member.
                    consumed_by_a.append(await metric(h.session, a.base, "rescenter_consumed_total"))
                    await asyncio.sleep(6.0)
                    consumed_by_a.append(await metric(h.session, a.base, "rescenter_consumed_total"))
                    code, output = await run(str(SERVICES), "start", "--cluster", str(CLUSTER_SIZE), timeout=240)
                    assert code == 0, output
                    restarted.append(time.monotonic() - started)

                seconds = await stream.run(kill_a_node)
                await stream.complete_the_rest(h.session, b.base)
                counts = await stream.count("one RabbitMQ node of three SIGKILLed", seconds)
                counts.notes.append(f"node back after {restarted[0]:.0f} s; the instance that was on it "
                                    f"handled {consumed_by_a[1] - consumed_by_a[0]:.0f} messages meanwhile")
            check(counts)
            assert consumed_by_a[1] > consumed_by_a[0], "the instance on the killed node did not move on"


# ---------------------------------------------------------------- the store stopped for 10 s


@pytest.mark.skipif(launcher() is None, reason="the embedded store is not installed: cannot stop a store of our own")
async def test_ORD_4_ORD_6_the_store_stopped_for_10_s_loses_and_doubles_nothing_and_readyz_says_so() -> None:
    folder = Path(tempfile.mkdtemp(prefix="rescenter-faults-store-"))
    store = EmbeddedStore(folder / "store.mv.db")
    await store.start()
    try:
        async with Harness(store={"url": store.url}) as h:
            assert h.session is not None
            async with processes(h, 2) as (a, b), streaming(h, (h.settings.bus.url,)) as stream:
                said: list[dict[str, Any]] = []

                async def stop_the_store() -> None:
                    await store.stop()
                    outage = time.monotonic()
                    while time.monotonic() - outage < 10:
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                            async with asyncio.timeout(8):
                                async with h.session.get(f"{a.base}/readyz") as response:
                                    said.append({"status": response.status, **(await response.json())})
                        await asyncio.sleep(1.0)
                    await store.start()

                seconds = await stream.run(stop_the_store)
                await stream.complete_the_rest(h.session, a.base)
                counts = await stream.count("the store stopped for 10 s", seconds)
            down = [s for s in said if s["status"] == 503]
            assert down, said
            assert all(s["checks"] == {"bus": True, "store": False} for s in down), down
            assert "store unreachable" in down[0]["detail"], down[0]
            counts.notes.append(f"/readyz answered 503 (store down) {len(down)} times of {len(said)}")
            check(counts)
    finally:
        if store.process is not None:
            await store.kill()
        shutil.rmtree(folder, ignore_errors=True)

