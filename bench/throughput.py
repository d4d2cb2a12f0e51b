"""Throughput benchmark: order lifecycles through the running service vs raw aio-pika.

    python bench/throughput.py --orders 2000

Starts `rescenter run` as a separate process (every plugin on, system clock,
its own database, exchange and queues), then, in one run:

1. service: for each order publishes the four commands of its lifecycle
   (place, submit requirements, deliver, accept), each after the event of
   the previous one, `--window` lifecycles at once, on the bus, as another
   marketplace service would, and consumes the events the service publishes
   after storing each change. Latency is from a command's publish to the
   arrival of the event its stored change produced.
2. raw: the same number of messages published with confirms to a quorum
   queue on an exchange of its own and consumed with manual acks by plain
   aio-pika in this process: the ceiling the service is measured against.
3. bus alone: the same load as 1. against bench/fanout.py instead of the
   service: the queues and bindings the service documents in its AsyncAPI
   document, each command consumed, its event published with a confirm and
   acked, every plugin queue consumed and acked, but no store and no rules.
   Each command costs two publishes and about four deliveries (raw: one and
   one), so this is what the broker and aio-pika allow the service here.
   Then again with one queue per process bound to every pattern (the other
   topology: the process hands each event to its plugins itself; three
   deliveries per command).
4. paced: one instance again, and the bus alone, at half the peak rate of the
   first run of 1. (`--paced-seconds`, 15 by default; 0 skips it), each
   command after the event of the previous one: p50/p99 there are latency,
   not queueing behind a flood.

The service load runs once per number in `--instances` (default `1,2`): with 1
process, then with 2 processes sharing a database, an exchange and queues
(competing consumers), each run on fresh ones. For each it also prints the CPU
used during the load, in cores: the whole machine, the service processes,
RabbitMQ (beam.smp) and the embedded store (java), which says what saturates.

It prints events/s, p50/p99 latency for each, and the ratios, then the
MongoDB commands (round trips) the service sent for the whole load, plugins'
handlers included (read from its `rescenter_store_commands_total` counter,
fed by a PyMongo CommandListener), per command and by collection.

    python bench/throughput.py --orders 500 --rate 100

With `--rate N` the load is paced only, at N: lifecycles start evenly so that
about N commands per second are sent, each command after the event of the
previous one (as users act on what they see), and p50/p99 command->event
latency is the figure to read.

    python bench/throughput.py --orders 1000 --preload 0,20000

With `--preload 0,20000` it runs one instance twice, on an empty store and on
one holding 20,000 orders (stored as bench/http_load.py preloads them), and
prints the ratio: whether the service slows down as data grows.

It is not a test: figures vary with the machine; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.bus import delete_topology  # noqa: E402
from core.messages import Actor, Envelope, topic_match  # noqa: E402
from core.settings import BusSettings  # noqa: E402
from tests.embedded import free_port  # noqa: E402

COMMANDS = ("command.order.place", "command.order.submit_requirements", "command.order.deliver",
            "command.order.accept")
EVENT_OF = {"order.placed": 0, "order.requirements_submitted": 1, "order.delivered": 2, "order.completed": 3}


@dataclass(frozen=True)
class IsolatedService:
    """Where a benchmark's own service process works: a database, an exchange and queues of
    its own, a free HTTP port, the system clock; `env` is its environment."""

    database: str
    exchange: str
    prefix: str
    port: int
    env: dict[str, str]


def isolated_service(bus_url: str, store_url: str) -> IsolatedService:
    tag = uuid.uuid4().hex[:8]
    database, exchange, prefix, port = f"bench_{tag}", f"bench.{tag}.events", f"bench.{tag}", free_port()
    env = {
        **os.environ,
        "RABBITMQ_URL": bus_url, "MONGODB_URL": store_url,
        "RESCENTER_STORE__DATABASE": database, "RESCENTER_BUS__EXCHANGE": exchange,
        "RESCENTER_BUS__QUEUE_PREFIX": prefix, "RESCENTER_HTTP__HOST": "127.0.0.1",
        "RESCENTER_HTTP__PORT": str(port), "RESCENTER_CLOCK__MODE": "system",
    }
    return IsolatedService(database, exchange, prefix, port, env)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def command(type_: str, order_id: str, buyer: str, seller: str) -> Envelope:
    data: dict[str, Any]
    if type_ == "command.order.place":
        data = {"order_id": order_id, "buyer_id": buyer, "seller_id": seller, "gig_id": "gig-1",
                "price": {"amount": "50.00", "currency": "EUR"}, "delivery_days": 3}
    else:
        party = "seller" if type_ == "command.order.deliver" else "buyer"
        actor = Actor(id=seller if party == "seller" else buyer, role=party).model_dump()  # type: ignore[arg-type]
        data = {"order_id": order_id, "actor": actor}
        if type_ == "command.order.submit_requirements":
            data["requirements"] = "a logo"
        elif type_ == "command.order.deliver":
            data["message"] = "done"
    return Envelope(id=str(uuid.uuid4()), source="bench", type=type_, time=datetime.now(UTC),
                    subject=order_id, data=data)


async def run_service_load(url: str, exchange_name: str, orders: int, window: int,
                           rate: float | None = None) -> dict[str, Any]:
    connection = await aio_pika.connect_robust(url)
    async with connection:
        publish_channel = await connection.channel(publisher_confirms=True)
        exchange = await publish_channel.get_exchange(exchange_name)
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=1000)
        events = await consume_channel.declare_queue(exclusive=True, auto_delete=True)
        for key in EVENT_OF:
            await events.bind(exchange_name, routing_key=key)

        sent: dict[tuple[str, int], float] = {}
        arrived: dict[tuple[str, int], asyncio.Event] = {}
        latencies: list[float] = []
        remaining = orders * len(COMMANDS)
        finished = asyncio.Event()
        inflight = asyncio.Semaphore(window)  # orders in flight at once

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal remaining
            body = json.loads(message.body)
            step = EVENT_OF.get(body["type"])
            started = sent.pop((body["subject"], step), None) if step is not None else None
            if started is not None:
                latencies.append(time.perf_counter() - started)
                if (body["subject"], step) in arrived:
                    arrived.pop((body["subject"], step)).set()
                remaining -= 1
                if step == 3:
                    inflight.release()
                if remaining == 0:
                    finished.set()

        await events.consume(on_event, no_ack=True)

        async def lifecycle(index: int) -> None:
            if rate is not None:  # paced: start on schedule, each command after the previous event
                await asyncio.sleep(max(0.0, started + index * len(COMMANDS) / rate - time.perf_counter()))
            else:
                await inflight.acquire()
            order_id = f"bench-{uuid.uuid4().hex[:12]}"
            buyer, seller = f"buyer-{index % 97}", f"seller-{index % 89}"
            # Each command after the event of the previous one: with several instances competing
            # for the core queue, commands about one order sent at once may be taken by two of
            # them and applied out of order (a delivery before the requirements: refused, ORD-1).
            for step, type_ in enumerate(COMMANDS):
                envelope = command(type_, order_id, buyer, seller)
                arrived[(order_id, step)] = event = asyncio.Event()  # on_event may pop it before the confirm
                sent[(order_id, step)] = time.perf_counter()
                await exchange.publish(
                    aio_pika.Message(envelope.body(), message_id=envelope.id,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=type_)
                await asyncio.wait_for(event.wait(), timeout=60)

        started = time.perf_counter()
        await asyncio.gather(*(lifecycle(i) for i in range(orders)))
        await asyncio.wait_for(finished.wait(), timeout=600)
        elapsed = time.perf_counter() - started
    count = orders * len(COMMANDS)
    return {"messages": count, "seconds": elapsed, "per_second": count / elapsed,
            "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}


async def run_raw(url: str, exchange_name: str, prefix: str, count: int, window: int) -> dict[str, Any]:
    """Plain aio-pika over the same exchange: publish with confirms, consume, ack."""
    connection = await aio_pika.connect_robust(url)
    async with connection:
        publish_channel = await connection.channel(publisher_confirms=True)
        exchange = await publish_channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=64)
        queue = await consume_channel.declare_queue(
            f"{prefix}.raw", durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind(exchange_name, routing_key="bench.raw")
        latencies: list[float] = []
        received = 0
        done = asyncio.Event()
        inflight = asyncio.Semaphore(window * len(COMMANDS))

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received
            sent_at = float(message.headers["sent"])  # type: ignore[arg-type]
            await message.ack()
            latencies.append(time.perf_counter() - sent_at)
            received += 1
            inflight.release()
            if received == count:
                done.set()

        await queue.consume(on_message)

        async def one(index: int) -> None:
            await inflight.acquire()
            await exchange.publish(
                aio_pika.Message(b'{"n": %d}' % index, headers={"sent": time.perf_counter()},
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="bench.raw")

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
    return {"messages": count, "seconds": elapsed, "per_second": count / elapsed,
            "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}


async def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the service exited with {process.returncode}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the service did not become ready")


async def counters(port: int) -> dict[str, dict[tuple[str, ...], float]]:
    """The service's Prometheus counters: store commands by (command, collection), messages
    handled by (plugin, type, outcome)."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    wanted = {"rescenter_store_commands": ("command", "collection"), "rescenter_consumed": ("plugin", "type", "outcome")}
    found: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in wanted}
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[family.name][tuple(sample.labels[k] for k in wanted[family.name])] = sample.value
    return found


async def settled_store_commands(port: int, quiet: float = 1.5) -> dict[tuple[str, ...], float]:
    """Wait until the plugins have handled what the load caused (no message handled for
    `quiet` seconds), then read the store command counts."""
    previous = sum((await counters(port))["rescenter_consumed"].values())
    while True:
        await asyncio.sleep(quiet)
        current = await counters(port)
        handled = sum(current["rescenter_consumed"].values())
        if handled == previous:
            return current["rescenter_store_commands"]
        previous = handled


def round_trip_report(before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float],
                      commands: int) -> str:
    delta = {key: after[key] - before.get(key, 0) for key in after if after[key] - before.get(key, 0) > 0}
    total = sum(delta.values())
    lines = [f"MongoDB round trips: {total:.0f} for {commands} commands = {total / commands:.2f} per command"]
    for (name, collection), count in sorted(delta.items(), key=lambda item: -item[1]):
        lines.append(f"  {name:<16}{collection:<24}{count:>8.0f}{count / commands:>8.2f}")
    return "\n".join(lines)


async def cleanup(url: str, mongo_url: str, database: str, exchange: str, prefix: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url)
    await client.drop_database(database)
    await client.close()
    await delete_topology(BusSettings(url=url, exchange=exchange, queue_prefix=prefix),
                          ("core", "disputes", "reviews", "availability", "blocking", "metrics"))


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) so far: the service processes, RabbitMQ's VM (beam.smp),
    the embedded store's JVM (java) and the whole machine (busy, from /proc/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {"service": 0.0, "rabbitmq": 0.0, "store": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(entry.name) in pids:
            found["service"] += seconds
        elif comm == "beam.smp":
            found["rabbitmq"] += seconds
        elif comm == "java":
            found["store"] += seconds
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    found["machine"] = (sum(map(int, cpu)) - int(cpu[3]) - int(cpu[4])) / tick  # all but idle and iowait
    return found


async def measure(url: str, mongo_url: str, instances: int, args: argparse.Namespace) -> dict[str, Any]:
    """The service load against `instances` processes sharing a database, an exchange and queues."""
    service = isolated_service(url, mongo_url)
    ports = [service.port] + [free_port() for _ in range(instances - 1)]
    processes = [subprocess.Popen([sys.executable, "-m", "core.cli", "--log-level", "WARNING", "run"], cwd=ROOT,
                                  env={**service.env, "RESCENTER_HTTP__PORT": str(port),
                                       "RESCENTER_SERVICE__INSTANCE_ID": f"bench-{n}"})
                 for n, port in enumerate(ports)]
    try:
        for port, process in zip(ports, processes, strict=True):
            await wait_ready(port, process)
        queues = await documented_queues(ports[0], service.prefix)
        if args.preload:
            await preload_orders(ports[0], processes[0], mongo_url, service.database, args.preload)
        before = [(await counters(port))["rescenter_store_commands"] for port in ports]
        cpu_before = cpu_seconds([p.pid for p in processes])
        result = await run_service_load(url, service.exchange, args.orders, args.window, args.rate)
        cpu_after = cpu_seconds([p.pid for p in processes])
        after = [await settled_store_commands(port) for port in ports]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        await cleanup(url, mongo_url, service.database, service.exchange, service.prefix)
    result["instances"] = instances
    result["preload"] = args.preload
    result["cpu"] = {k: (cpu_after[k] - cpu_before[k]) / result["seconds"] for k in cpu_after}
    result["round_trips"] = round_trip_report(_summed(before), _summed(after), result["messages"])
    result["prefix"] = service.prefix
    result["exchange"] = service.exchange
    result["queues"] = queues
    return result


async def documented_queues(port: int, prefix: str) -> dict[str, list[str]]:
    """The running service's consumer groups and their topic patterns, from its AsyncAPI
    document: each queue channel's `x-bindings`. A consumer group's queue is the one that
    dead-letters (its own dead-letter queue and the unrouted queue do not)."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/asyncapi.json") as response:
        document = await response.json()
    return {channel["address"].removeprefix(f"{prefix}."): channel["x-bindings"]
            for channel in document["channels"].values()
            if channel["bindings"]["amqp"]["is"] == "queue"
            and "x-dead-letter-exchange" in channel.get("x-arguments", {})}


def deliveries_to(queues: dict[str, list[str]]) -> int:
    """Deliveries of one lifecycle's commands and events to these queues, and of its events
    to the bench's tap."""
    return sum(1 for key in (*COMMANDS, *EVENT_OF) for patterns in queues.values()
               if any(topic_match(p, key) for p in patterns)) + len(EVENT_OF)


async def run_bus_alone(url: str, queues: dict[str, list[str]], args: argparse.Namespace) -> dict[str, Any]:
    """The same load against bench/fanout.py: the service's queues, bindings and AMQP work per
    command (consume, publish the event with a confirm, ack; every plugin queue consumed and
    acked), without the store or the rules: the ceiling for the service on this machine."""
    tag = uuid.uuid4().hex[:8]
    exchange, prefix = f"bench.{tag}.events", f"bench.{tag}"
    settings = BusSettings()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fanout.py"), "--url", url, "--exchange", exchange, "--prefix", prefix,
         "--queues", json.dumps(queues), "--prefetch", str(settings.prefetch),
         "--delivery-limit", str(settings.delivery_limit)],
        cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=60)
        if line.strip() != b"ready":
            raise SystemExit(f"bench/fanout.py did not start (exit {process.poll()})")
        cpu_before = cpu_seconds([process.pid])
        result = await run_service_load(url, exchange, args.orders, args.window, args.rate)
        cpu_after = cpu_seconds([process.pid])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        await delete_topology(BusSettings(url=url, exchange=exchange, queue_prefix=prefix), queues)
    result["cpu"] = {k: (cpu_after[k] - cpu_before[k]) / result["seconds"] for k in cpu_after}
    return result


async def preload_orders(port: int, process: subprocess.Popen[bytes], mongo_url: str, database: str,
                         orders: int) -> None:
    """`orders` orders stored before the load, as bench/http_load.py preloads them (template
    orders through the service, cloned with new ids and earlier times), for "no slowdown
    with volume": the same load on an empty and on a filled store."""
    from bench.http_load import Target, make_templates, preload, settled
    from core.settings import load_settings
    from core.store import Store

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        templates = await make_templates(Target(port, process, session, load_settings().auth))
    await settled(port)
    store = Store(mongo_url, database)
    await store.connect()
    try:
        await preload(store, templates, orders, buyers=max(10, orders // 10), sellers=max(10, orders // 100),
                      days=120)
    finally:
        await store.close()
    await settled(port)
    print(f"preloaded {orders} orders in {time.perf_counter() - started:.1f} s", flush=True)


def _summed(per_instance: list[dict[tuple[str, ...], float]]) -> dict[tuple[str, ...], float]:
    total: dict[tuple[str, ...], float] = {}
    for counts in per_instance:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--window", type=int, default=100, help="order lifecycles in flight at once")
    parser.add_argument("--rate", type=float, default=None,
                        help="paced mode only: about this many commands per second, for latency")
    parser.add_argument("--paced-seconds", type=float, default=15,
                        help="after the unpaced runs, this long paced at half the peak of the first (0: skip)")
    parser.add_argument("--instances", default="1,2",
                        help="service processes to run the load against, one run per number (1,2: both)")
    parser.add_argument("--preload", default="0", metavar="N[,N...]",
                        help="orders stored before the load, one run per number (0,20000: an empty and a filled "
                             "store, with --instances 1)")
    args = parser.parse_args()

    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    mongo_url = os.environ.get("MONGODB_URL", "mongodb://127.0.0.1:27017/")
    preloads = [int(n) for n in args.preload.split(",")]
    if len(preloads) > 1:  # one instance, several store sizes
        runs = [await measure(url, mongo_url, 1, argparse.Namespace(**{**vars(args), "preload": n}))
                for n in preloads]
    else:
        args.preload = preloads[0]
        runs = [await measure(url, mongo_url, int(n), args) for n in args.instances.split(",")]
    queues = runs[0]["queues"]
    raw_names = BusSettings(url=url, exchange=f"{runs[-1]['prefix']}.raw", queue_prefix=runs[-1]["prefix"])
    try:
        raw = await run_raw(url, raw_names.exchange, raw_names.queue_prefix, runs[-1]["messages"], args.window)
    finally:
        await delete_topology(raw_names, ())
    bus = await run_bus_alone(url, queues, args)
    merged = {"process": sorted({p for patterns in queues.values() for p in patterns})}
    one_queue = await run_bus_alone(url, merged, args)
    paced: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (service, bus alone) at half the peak
    if args.rate is None and args.paced_seconds > 0 and len(preloads) == 1:
        half = runs[0]["per_second"] / 2
        pace = argparse.Namespace(**{**vars(args), "rate": half, "preload": 0,
                                     "orders": max(50, round(half * args.paced_seconds / len(COMMANDS)))})
        paced.append((await measure(url, mongo_url, 1, pace), await run_bus_alone(url, queues, pace)))
        for row in paced[0]:
            row["rate"] = half

    mode = f"paced at {args.rate:g} commands/s" if args.rate else "unpaced"
    print(f"\n{args.orders} order lifecycles, {runs[0]['messages']} commands -> events, all plugins on, {mode}, "
          f"{os.cpu_count()} cores")
    print(f"{'':44}{'msgs/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'seconds':>9}   CPU used, in cores")

    def label(row: dict[str, Any]) -> str:
        return f"service x{row['instances']}" + (f", {row['preload']} stored" if row["preload"] else "")

    def line(name: str, row: dict[str, Any], cpu: str = "") -> None:
        print(f"{name:44}{row['per_second']:>8.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}{row['seconds']:>9.1f}"
              + (f"   {cpu}" if cpu else ""))

    def service_cpu(cpu: dict[str, float]) -> str:
        return (f"machine {cpu['machine']:.2f}: service {cpu['service']:.2f}, RabbitMQ {cpu['rabbitmq']:.2f}, "
                f"store {cpu['store']:.2f}")

    def bus_cpu(cpu: dict[str, float]) -> str:
        return f"machine {cpu['machine']:.2f}: fanout.py {cpu['service']:.2f}, RabbitMQ {cpu['rabbitmq']:.2f}"

    for row in runs:
        line(f"{label(row)} (cmd -> event)", row, service_cpu(row["cpu"]))
    line("bus alone (fanout.py: no store, no rules)", bus, bus_cpu(bus["cpu"]))
    line("bus alone, one queue per process", one_queue, bus_cpu(one_queue["cpu"]))
    line("raw aio-pika (pub->ack)", raw)
    for service, alone in paced:
        print(f"paced at {service['rate']:.0f} commands/s (half the peak of service x1), "
              f"{service['messages']} commands:")
        line("  service x1 (cmd -> event)", service, service_cpu(service["cpu"]))
        line("  bus alone", alone, bus_cpu(alone["cpu"]))
    deliveries = deliveries_to(queues)
    print(f"per command: 2 publishes (the command, its event) and {deliveries / len(COMMANDS):.2f} deliveries "
          f"(core, plugins, the bench's tap); with one queue per process, "
          f"{deliveries_to(merged) / len(COMMANDS):.2f}; raw: 1 and 1")
    if args.rate:
        print("ratio service/raw: not meaningful when paced (the service gets what the pace offers);"
              " read p50/p99")
    else:
        print(f"ratio bus alone/raw: {bus['per_second'] / raw['per_second']:.3f} (the ceiling on this machine); "
              f"with one queue per process: {one_queue['per_second'] / raw['per_second']:.3f}")
        for row in runs:
            print(f"ratio {label(row)}/raw: {row['per_second'] / raw['per_second']:.3f}; "
                  f"{label(row)}/bus alone: {row['per_second'] / bus['per_second']:.3f}")
        if len(runs) > 1 and len(preloads) > 1:
            print(f"with {runs[-1]['preload']} orders stored / with {runs[0]['preload']}: "
                  f"{runs[-1]['per_second'] / runs[0]['per_second']:.2f}")
        elif len(runs) > 1:
            print(f"scaling x{runs[-1]['instances']}/x{runs[0]['instances']}: "
                  f"{runs[-1]['per_second'] / runs[0]['per_second']:.2f}")
    for row in runs:
        print(f"{label(row)}: {row['round_trips']}")
    for service, _ in paced:
        print(f"paced service x1: {service['round_trips']}")


if __name__ == "__main__":
    asyncio.run(main())
