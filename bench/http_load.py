"""Query latency as data grows: the read routes at a fixed rate over a preloaded store.

    python bench/http_load.py --orders 20000

1. Store: a private embedded store (mongo-java-server on H2, a fresh data file in a
   temporary folder, the `embedded-store` launcher that scripts/install builds), so
   that the load neither slows nor is slowed by anything else using a shared server;
   `--store-url URL` uses that server instead (a fresh database in it).
2. Starts `rescenter run` as a separate process (every plugin on, system clock, its
   own database, exchange and queues), as bench/throughput.py does.
3. Preloads `--orders` orders quickly and directly into the database. A few template
   orders go through the running service first, over HTTP (placed, started, delivered
   and accepted; some cancelled by support instead), so every document is exactly what
   the service and its plugins wrote. Each preloaded order is a template's documents
   with new ids (order, buyer, seller, event ids) and its times moved back, spread over
   `--days`: the `orders` document (state, timeline) inserted in bulk, and the events
   the metrics plugin consumed, recorded again through the plugin's own repository
   (event log, per-order facts, and whatever it keeps per seller), as its handler
   records them. Other plugins' collections are not preloaded (none of the routes
   measured reads them).
4. Offers each query at a fixed rate (`--rate`, 200/s; open loop: requests start on
   schedule whether or not earlier ones answered, latency counted from the scheduled
   start), `--requests` of them or for `--seconds` at most, one query after the other,
   over loopback only, after the service has gone quiet again (an order read answered
   fast five times in a row): an order and its timeline (as its buyer), a seller's
   availability (public), a seller's metrics (as the seller) and a buyer's order list
   (first page).
5. Prints served/s, p50 and p99 per query, errors, and the service process's resident
   memory (VmRSS from /proc/<pid>/status) after the load.

Not a test: figures vary with the machine; compare figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import counters, isolated_service, percentile, wait_ready  # noqa: E402
from core.bus import delete_topology  # noqa: E402
from core.http.auth import issue_token  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.order_pages import LISTS, list_writes  # noqa: E402
from core.settings import BusSettings, load_settings  # noqa: E402
from core.store import Store  # noqa: E402
from plugins.metrics.repository import MetricsRepository  # noqa: E402
from tests.embedded import EmbeddedStore, launcher  # noqa: E402

GROUPS = ("core", "disputes", "reviews", "availability", "blocking", "metrics")
TEMPLATE_SELLER = "tpl-seller"
TEMPLATE_BUYER = "tpl-buyer"
#: lifecycles of the templates: most complete, some are cancelled by support once started
TEMPLATES = ("completed",) * 8 + ("cancelled",) * 2
INSERT_CHUNK = 500
RECORD_CHUNK = 2000


# ---------------------------------------------------------------- the service


@dataclass
class Target:
    port: int
    process: subprocess.Popen[bytes]
    session: aiohttp.ClientSession
    auth: Any
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, user: str, role: str) -> dict[str, str]:
        key = (user, role)
        if key not in self.tokens:
            self.tokens[key] = issue_token(self.auth, user, [role], ttl=6 * 3600)
        return {"Authorization": f"Bearer {self.tokens[key]}"}

    async def call(self, method: str, path: str, user: str, role: str, body: Any = None,
                   expect: int = 200) -> Any:
        async with self.session.request(method, self.base + path, json=body,
                                        headers=self.headers(user, role)) as response:
            payload = await response.json(content_type=None)
            if response.status != expect:
                raise SystemExit(f"{method} {path}: {response.status} {payload}")
            return payload


async def make_templates(target: Target) -> list[str]:
    """Template orders through the service itself, so their documents are the real thing."""
    await target.call("PUT", f"/availability/sellers/{TEMPLATE_SELLER}/order-cap", TEMPLATE_SELLER, "seller",
                      {"max_active_orders": 1000})
    order_ids = []
    for outcome in TEMPLATES:
        order = await target.call("POST", "/orders", TEMPLATE_BUYER, "buyer", {
            "seller_id": TEMPLATE_SELLER, "gig_id": "gig-1", "price": {"amount": "120.00", "currency": "EUR"},
            "delivery_days": 3}, expect=201)
        order_id = order["id"]
        order_ids.append(order_id)
        await target.call("POST", f"/orders/{order_id}/requirements", TEMPLATE_BUYER, "buyer",
                          {"requirements": "a logo in red and blue, 512 px"})
        if outcome == "cancelled":
            await target.call("POST", f"/orders/{order_id}/cancellation", "support-1", "support",
                              {"reason": "the buyer asked support"})
            continue
        await target.call("POST", f"/orders/{order_id}/deliveries", TEMPLATE_SELLER, "seller",
                          {"message": "here it is", "attachments": ["logo.png"]})
        await target.call("POST", f"/orders/{order_id}/acceptance", TEMPLATE_BUYER, "buyer")
    return order_ids


async def settled(port: int, quiet: float = 1.5) -> None:
    """Wait until the plugins have handled what the templates caused."""
    previous = sum((await counters(port))["rescenter_consumed"].values())
    while True:
        await asyncio.sleep(quiet)
        handled = sum((await counters(port))["rescenter_consumed"].values())
        if handled == previous:
            return
        previous = handled


# ---------------------------------------------------------------- preloading


def _rewrite(value: Any, names: dict[str, str], shift: timedelta) -> Any:
    """A template document with its ids replaced (in values and keys) and its times moved."""
    if isinstance(value, dict):
        return {_rename(k, names): _rewrite(v, names, shift) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, names, shift) for v in value]
    if isinstance(value, datetime):
        return value + shift
    if isinstance(value, str):
        return _rename(value, names)
    return value


def _rename(text: str, names: dict[str, str]) -> str:
    if text in names:
        return names[text]
    for old, new in names.items():  # ids inside other ids (deadline ids hold the order id)
        if old in text:
            text = text.replace(old, new)
    return text


@dataclass
class Preloaded:
    order_ids: list[str]
    buyers: list[str]
    sellers: list[str]
    buyer_of: dict[str, str]
    seconds: float
    events: int


async def preload(store: Store, templates: list[str], orders: int, buyers: int, sellers: int,
                  days: float) -> Preloaded:
    started = time.perf_counter()
    order_docs = {d["_id"]: d async for d in store.collection("orders").find({"_id": {"$in": templates}})}
    pending = [i for i, d in order_docs.items() if d.get("_outbox") or d.get("_outbox_due")]
    if pending:
        raise SystemExit(f"template orders still hold unpublished events: {pending}")
    events_of: dict[str, list[dict[str, Any]]] = {order_id: [] for order_id in templates}
    async for event in store.collection("metrics_events").find({"order_id": {"$in": templates}}):
        events_of[event["order_id"]].append(event)
    availability = await store.collection("availability_sellers").find_one({"_id": TEMPLATE_SELLER})

    buyer_names = [f"buyer-{i:05d}" for i in range(buyers)]
    seller_names = [f"seller-{i:04d}" for i in range(sellers)]
    rng = random.Random(7)
    repository = MetricsRepository(store)
    order_ids: list[str] = []
    buyer_of: dict[str, str] = {}
    batch: list[dict[str, Any]] = []
    records: list[Callable[[], Awaitable[None]]] = []
    recorded = 0

    async def flush(final: bool = False) -> None:
        nonlocal batch, records, recorded
        if batch and (final or len(batch) >= INSERT_CHUNK):
            # The parties' lists first, as OrderService.place writes them (core.order_pages).
            await store.collection(LISTS).bulk_write([w for order in batch for w in list_writes(order)],
                                                     ordered=False)
            await store.collection("orders").insert_many(batch, ordered=False)
            batch = []
        if records and (final or len(records) >= RECORD_CHUNK):
            await asyncio.gather(*(record() for record in records))
            recorded += len(records)
            records = []

    for index in range(orders):
        template = templates[rng.randrange(len(templates))]
        order_id = uuid.uuid4().hex
        buyer, seller = buyer_names[rng.randrange(buyers)], seller_names[index % sellers]
        # newest first: spread evenly over `days`, the template's own steps keep their spacing
        shift = -timedelta(days=days * index / orders, seconds=rng.random())
        names = {template: order_id, TEMPLATE_BUYER: buyer, TEMPLATE_SELLER: seller}
        events = events_of[template]
        names.update({event["_id"]: str(uuid.uuid4()) for event in events})
        batch.append(_rewrite(copy.deepcopy(order_docs[template]), names, shift))
        for event in events:
            clone = _rewrite(event, names, shift)
            records.append(lambda e=clone: repository.record(e["_id"], e["type"], e["time"],
                                                             {"order_id": e["order_id"], "seller_id": e["seller_id"],
                                                              **e["data"]}))
        order_ids.append(order_id)
        buyer_of[order_id] = buyer
        await flush()
    await flush(final=True)
    if availability is not None:
        await store.collection("availability_sellers").insert_many(
            [_rewrite(availability, {TEMPLATE_SELLER: seller}, timedelta(0)) for seller in seller_names],
            ordered=False)
    return Preloaded(order_ids=order_ids, buyers=sorted(set(buyer_of.values())), sellers=seller_names,
                     buyer_of=buyer_of, seconds=time.perf_counter() - started, events=recorded)


# ---------------------------------------------------------------- the load


@dataclass
class Query:
    key: str
    name: str
    #: (path, user, role) of one request, chosen at random
    pick: Callable[[random.Random], tuple[str, str, str]]


@dataclass
class Result:
    name: str
    offered: int
    served: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0


async def offer(target: Target, query: Query, rate: float, requests: int, seconds: float,
                timeout: float) -> Result:
    """Open loop: request k starts at k / rate whatever happened to the others."""
    rng = random.Random(query.name)
    count = min(requests, int(rate * seconds))
    result = Result(query.name, offered=count)
    started = time.perf_counter()

    async def one(k: int) -> None:
        scheduled = started + k / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        path, user, role = query.pick(rng)
        try:
            async with target.session.get(target.base + path, headers=target.headers(user, role),
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
            return
        if status == 200:
            result.served += 1
            result.latencies.append(time.perf_counter() - scheduled)
        else:
            result.errors[str(status)] = result.errors.get(str(status), 0) + 1

    await asyncio.gather(*(one(k) for k in range(count)))
    result.seconds = time.perf_counter() - started
    return result


def queries(data: Preloaded) -> list[Query]:
    def order(rng: random.Random) -> tuple[str, str, str]:
        order_id = rng.choice(data.order_ids)
        return f"/orders/{order_id}", data.buyer_of[order_id], "buyer"

    def timeline(rng: random.Random) -> tuple[str, str, str]:
        order_id = rng.choice(data.order_ids)
        return f"/orders/{order_id}/timeline", data.buyer_of[order_id], "buyer"

    def availability(rng: random.Random) -> tuple[str, str, str]:
        return f"/availability/sellers/{rng.choice(data.sellers)}", "visitor", "buyer"

    def order_list(rng: random.Random) -> tuple[str, str, str]:
        return "/orders", rng.choice(data.buyers), "buyer"

    def metrics(rng: random.Random) -> tuple[str, str, str]:
        seller = rng.choice(data.sellers)
        return f"/sellers/{seller}/metrics", seller, "seller"

    # The list last: where the store scans for it, what it leaves queued would weigh on the others.
    return [Query("order", "order", order), Query("timeline", "timeline", timeline),
            Query("availability", "availability", availability), Query("metrics", "seller metrics", metrics),
            Query("list", "order list (page 1)", order_list)]


async def check_seen(target: Target, data: Preloaded) -> None:
    """The service sees the preloaded documents: a buyer's list and a seller's figures hold them."""
    buyer = data.buyer_of[data.order_ids[0]]
    page = await target.call("GET", "/orders", buyer, "buyer")
    seller = data.sellers[0]
    figures = await target.call("GET", f"/sellers/{seller}/metrics", seller, "seller")
    rate = figures["completion_rate"]
    print(f"check: {buyer} sees {len(page['orders'])} orders on the first page; {seller}'s completion rate "
          f"counts {rate['completed']} completed and {rate['cancellations_counted']} cancelled orders in "
          f"its window ({rate['percent']} %)", flush=True)
    if not page["orders"] or not rate["completed"]:
        raise SystemExit("the service does not see the preloaded orders")


async def quiet(target: Target, data: Preloaded, *, fast: float = 0.02, wait: float = 120) -> bool:
    """Wait until the service answers an order read fast five times in a row: what an earlier
    query left queued (in the service or the store) must not count against the next one."""
    order_id = data.order_ids[0]
    headers = target.headers(data.buyer_of[order_id], "buyer")
    deadline, in_a_row = time.monotonic() + wait, 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            async with target.session.get(f"{target.base}/orders/{order_id}", headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=30)) as response:
                await response.read()
                ok = response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            ok = False
        in_a_row = in_a_row + 1 if ok and time.perf_counter() - started < fast else 0
        if in_a_row == 5:
            return True
        await asyncio.sleep(0.2)
    return False


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- main


def _errors(log: str) -> dict[str, int]:
    """The service's error lines by event and the last line of their exception."""
    found: dict[str, int] = {}
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "error":
            cause = (entry.get("exception") or "").strip().splitlines()[-1:] or [""]
            what = f"{entry.get('event')} ({cause[0][:120]})" if cause[0] else str(entry.get("event"))
            found[what] = found.get(what, 0) + 1
    return found


async def cleanup(url: str, store_url: str | None, database: str, exchange: str, prefix: str) -> None:
    if store_url is not None:
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[Any] = AsyncMongoClient(store_url)
        await client.drop_database(database)
        await client.close()
    await delete_topology(BusSettings(url=url, exchange=exchange, queue_prefix=prefix), GROUPS)


async def run(args: argparse.Namespace, store_url: str, store_kind: str, *, private: bool) -> None:
    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    service = isolated_service(url, store_url)
    database, exchange, prefix, port, env = (service.database, service.exchange, service.prefix,
                                             service.port, service.env)
    # The service's own log: errors under load (timeouts) are counted, not printed line by line.
    service_log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "--log-level", "WARNING", "run"],
                               cwd=ROOT, env=env, stdout=service_log, stderr=subprocess.STDOUT)
    store = Store(store_url, database)
    connector = aiohttp.TCPConnector(limit=args.connections)
    results: list[Result] = []
    rss_before = rss_after = float("nan")
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_ready(port, process)
            target = Target(port, process, session, load_settings().auth)
            templates = await make_templates(target)
            await settled(port)
            await store.connect()
            data = await preload(store, templates, args.orders, args.buyers, args.sellers, args.days)
            print(f"preloaded {args.orders} orders ({len(data.buyers)} buyers, {len(data.sellers)} sellers, "
                  f"over {args.days:g} days) and {data.events} metrics events in {data.seconds:.1f} s; "
                  f"store: {store_kind}", flush=True)
            await check_seen(target, data)
            rss_before = rss_mb(process.pid)
            for query in queries(data):
                if args.only and query.key not in args.only:
                    continue
                calm = await quiet(target, data)
                results.append(await offer(target, query, args.rate, args.requests, args.seconds, args.timeout))
                print(f"  {query.name}: done{'' if calm else ' (the service was still busy with the previous load)'}",
                      flush=True)
            rss_after = rss_mb(process.pid)
    finally:
        await store.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        service_log.seek(0)
        service_errors = _errors(service_log.read().decode(errors="replace"))
        service_log.close()
        report(args, results, rss_before, rss_after, service_errors)
        try:
            # A private store goes with its folder; a shared one loses the database.
            await cleanup(url, None if private else store_url, database, exchange, prefix)
        except Exception as exc:  # the figures are printed: say what is left behind
            print(f"cleanup failed ({exc!r}): database {database}, exchange {exchange}, queues {prefix}.* remain")


def report(args: argparse.Namespace, results: list[Result], rss_before: float, rss_after: float,
           service_errors: dict[str, int]) -> None:
    print(f"\n{args.orders} orders stored, each query offered at {args.rate:g}/s "
          f"({args.requests} requests or {args.seconds:g} s at most), over loopback")
    print(f"{'query':<22}{'offered':>9}{'served':>8}{'served/s':>10}{'p50 ms':>10}{'p99 ms':>10}  errors")
    for r in results:
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "-"
        print(f"{r.name:<22}{r.offered:>9}{r.served:>8}{r.served / r.seconds:>10.0f}"
              f"{percentile(r.latencies, 0.5) * 1000:>10.1f}{percentile(r.latencies, 0.99) * 1000:>10.1f}  {failed}")
    print(f"service process RSS: {rss_before:.0f} MB after the preload, {rss_after:.0f} MB after the load")
    if service_errors:
        print(f"the service logged {sum(service_errors.values())} errors: " + "; ".join(
            f"{count} x {what}" for what, count in sorted(service_errors.items(), key=lambda item: -item[1])[:3]))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20_000, help="orders to preload")
    parser.add_argument("--buyers", type=int, default=2_000)
    parser.add_argument("--sellers", type=int, default=200)
    parser.add_argument("--days", type=float, default=120, help="the preloaded orders' placements spread over this")
    parser.add_argument("--rate", type=float, default=200, help="requests per second offered, per query")
    parser.add_argument("--requests", type=int, default=2_000, help="requests per query at most")
    parser.add_argument("--seconds", type=float, default=15, help="seconds of load per query at most")
    parser.add_argument("--timeout", type=float, default=30, help="a request not answered by then is an error")
    parser.add_argument("--connections", type=int, default=200, help="HTTP connections at most")
    parser.add_argument("--only", nargs="+", choices=("order", "timeline", "availability", "list", "metrics"),
                        help="offer only these queries")
    parser.add_argument("--store-url", default=None,
                        help="use this MongoDB-wire server (a fresh database in it) instead of a private "
                             "embedded store")
    args = parser.parse_args()
    configure_logging("WARNING", json=False)
    if args.store_url:
        await run(args, args.store_url, args.store_url, private=False)
        return
    if launcher() is None:
        raise SystemExit("no embedded-store launcher on PATH (scripts/install builds it); or give --store-url")
    with tempfile.TemporaryDirectory(prefix="rescenter-bench-http-") as folder:
        server = EmbeddedStore(Path(folder) / "bench.mv.db")
        await server.start()
        try:
            await run(args, server.url, "private embedded store (mongo-java-server on H2, commit per write)",
                      private=True)
        finally:
            await server.kill()  # its data goes with the folder: no need to wait for a clean close


if __name__ == "__main__":
    asyncio.run(main())
