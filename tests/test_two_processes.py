"""Two service processes on one database, exchange and queue prefix (ORD-2, ORD-4, ORD-6).

Real OS processes (`rescenter run`, configured through RESCENTER_* variables
only), not two Service objects in the test process: each has its own event
loop, connection pools, per-process locks and scheduler. The test sends
commands on the same orders to both at once, over HTTP to both ports and as bus
commands on the shared core queue, and an independent tap bound to `#` on the
exchange collects every event by its CloudEvents id. It checks that

- each order changes exactly once per command that won: one decision
  (`order.completed` or `order.revision_requested`) per order, one winner among
  the racing requests, the others refused by ORD-1 (HTTP 409, bus commands
  dead-lettered as `rejected`), `version` = timeline length, counters
  (`delivery_count`, `revision_count`) that agree with the timeline;
- no event is lost or invented: the tap's core events for an order are exactly
  the order's timeline (ORD-6), and an id seen twice (at-least-once delivery)
  carries the same content;
- with both processes advancing the shared test clock at once, each deadline
  fires once: `order.late` once per late order (ORD-2), auto-completion once per
  unanswered delivery (ORD-4), each deadline claimed once (`attempts` = 1), the
  two processes' fired counts add up to the number of deadlines;
- every order of the race reaches a final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from core.messages import ORDER_EVENTS, AcceptDelivery, Actor, Envelope
from core.settings import Settings
from tests.embedded import free_port
from tests.harness import ORDER, Client, Harness
from tests.support import eventually

ROOT = Path(__file__).resolve().parent.parent
#: `rescenter` from this checkout's code, whichever checkout the venv was installed from
RESCENTER = (sys.executable, "-m", "core.cli")

RACE = 40  # delivered orders that both processes are asked to accept (and revise) at once
LATE = 12  # started, never delivered: `order.late` once each (ORD-2)
UNANSWERED = 12  # delivered, never answered: completed once each by the deadline (ORD-4)
HEAD_START = 0.002  # seconds: how far the leading racer of each order is ahead of the others
CORE_EVENT_TYPES = frozenset(t.type for t in ORDER_EVENTS if t.type.startswith("order."))
#: the whole scenario; stays under pytest's timeout so that the processes are always stopped
BUDGET = 90.0


def _duration(value: timedelta) -> str:
    return f"PT{value.total_seconds():g}S"


def process_env(settings: Settings, instance_id: str, port: int) -> dict[str, str]:
    """The isolated test settings of `Harness` (tests.harness.isolated_settings), as the
    RESCENTER_<SECTION>__<KEY> variables a separately started process reads."""
    s = settings
    values = {
        "SERVICE__ENVIRONMENT": s.service.environment,
        "SERVICE__INSTANCE_ID": instance_id,
        "HTTP__HOST": "127.0.0.1",
        "HTTP__PORT": str(port),
        "STORE__URL": s.store.url,
        "STORE__DATABASE": s.store.database,
        "BUS__URL": s.bus.url,
        "BUS__EXCHANGE": s.bus.exchange,
        "BUS__QUEUE_PREFIX": s.bus.queue_prefix,
        "BUS__RETRY_DELAY": _duration(s.bus.retry_delay),
        "BUS__SHUTDOWN_GRACE": _duration(s.bus.shutdown_grace),
        "CLOCK__MODE": s.clock.mode,
        "SCHEDULER__POLL_INTERVAL": _duration(s.scheduler.poll_interval),
        "SCHEDULER__SCAN_INTERVAL": _duration(s.scheduler.scan_interval),
        "SCHEDULER__LEASE": _duration(s.scheduler.lease),
        "OUTBOX__SWEEP_INTERVAL": _duration(s.outbox.sweep_interval),
        "OUTBOX__LEASE": _duration(s.outbox.lease),
        "PLUGINS__POLL_INTERVAL": _duration(s.plugins.poll_interval),
    }
    return {**os.environ, "PYTHONUNBUFFERED": "1", **{f"RESCENTER_{k}": v for k, v in values.items()}}


@dataclass
class ServiceProcess:
    """One `rescenter run` process; its stdout and stderr go to a temporary file."""

    name: str
    env: dict[str, str]
    port: int
    log: Path
    process: asyncio.subprocess.Process | None = None
    exit_code: int | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                *RESCENTER, "--log-level", "INFO", "run",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=self.env, cwd=ROOT,
            )
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.process.returncode is not None:
                        raise AssertionError(f"process {self.name} exited with {self.process.returncode}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{self.base}/readyz") as response:
                            if response.status == 200 and (await response.json())["status"] == "ready":
                                return
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"process {self.name} did not answer /readyz within {timeout} s") from None

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then wait for the graceful stop (SIGKILL if it does not come)."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
                self.exit_code = -signal.SIGKILL
                return self.exit_code
        self.exit_code = process.returncode
        return self.exit_code

    def dump(self) -> None:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no output)"
        print(f"\n===== process {self.name} (port {self.port}, exit {self.exit_code}): {self.log} =====")
        print(text)


async def call(session: aiohttp.ClientSession, base: str, token: str, method: str, path: str,
               body: Any = None, *, key: str | None = None) -> tuple[int, Any]:
    """One request; the status is returned with the answer (Client keeps only the last one,
    which concurrent requests on one client would overwrite)."""
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with session.request(method, base + path, json=body, headers=headers) as response:
        payload = await response.json(content_type=None)
        return response.status, payload


async def metric(session: aiohttp.ClientSession, base: str, name: str, **labels: str) -> float:
    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass
class RaceOrder:
    id: str
    shared_key: str | None  # both HTTP acceptances carry this Idempotency-Key (a retry via the other process)
    bus_ids: tuple[str, str]
    http_accepts: list[tuple[int, Any]] = field(default_factory=list)
    revision: tuple[int, Any] | None = None


async def test_ORD_2_ORD_4_ORD_6_two_service_processes_change_each_order_once_and_fire_each_deadline_once() -> None:
    # No process dies here: a claim lease running out under load would legitimately fire a
    # deadline a second time (idempotently) and blur "claimed once"; keep leases long.
    async with Harness(scheduler={"lease": timedelta(seconds=30)}) as h:
        assert h.session is not None
        session = h.session
        logs = Path(tempfile.mkdtemp(prefix=f"rescenter-two-processes-{h.tag}-"))
        procs = []
        for name in ("a", "b"):
            port = free_port()
            procs.append(ServiceProcess(name, process_env(h.settings, f"proc-{name}", port), port,
                                        logs / f"{name}.log"))
        a, b = procs
        failed = True
        try:
            async with asyncio.timeout(BUDGET):
                started = time.monotonic()
                await asyncio.gather(a.start(session), b.start(session))
                await _scenario(h, session, a, b)
                print(f"scenario took {time.monotonic() - started:.1f} s")
            failed = False
        finally:
            codes = await asyncio.gather(a.stop(), b.stop())
            if failed or codes != [0, 0]:
                for proc in procs:
                    proc.dump()
            else:
                shutil.rmtree(logs, ignore_errors=True)
        assert codes == [0, 0], f"the processes did not stop cleanly on SIGTERM: {codes}"


async def dead_letter_records(h: Harness, queue: str, count: int) -> list[dict[str, Any]] | None:
    """The queue's dead-letter records, once there are `count` of them."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(h.settings.store.url)
    try:
        records = await client[h.settings.store.database]["dead_letters"].find({"queue": queue}).to_list(None)
    finally:
        await client.close()
    return records if len(records) >= count else None


async def _scenario(h: Harness, session: aiohttp.ClientSession, a: ServiceProcess, b: ServiceProcess) -> None:
    procs = (a, b)
    admin_token = h.token("admin-1", "admin")

    def buyer(i: int) -> str:
        return f"buyer-{i % 4}"

    def seller(i: int) -> str:
        return f"seller-{i % 4}"

    def client(proc: ServiceProcess, sub: str, role: str) -> Client:
        return Client(session, proc.base, h.token(sub, role))

    admin = client(a, "admin-1", "admin")

    async def clocks_agree(now: str) -> None:
        """The process that did not move the test clock re-reads it every 0.2 s: until then it
        stamps its changes with the instant before the move."""
        async def agree() -> bool:
            seen = [(await client(p, "admin-1", "admin").get("/admin/clock", expect=200))["now"] for p in procs]
            return all(datetime.fromisoformat(t) == datetime.fromisoformat(now) for t in seen)

        await eventually(agree, what=f"both processes at {now}", timeout=5)

    clock = await admin.get("/admin/clock", expect=200)
    assert clock["mode"] == "test"
    base_time = datetime.fromisoformat(clock["now"])
    assert (await client(b, "admin-1", "admin").get("/admin/clock", expect=200))["now"] == clock["now"]

    # ------------------------------------------------------------ set-up, through both processes

    async def new_order(i: int, *, delivery_days: int, deliver: bool) -> str:
        here, there = procs[i % 2], procs[(i + 1) % 2]
        placed = await client(here, buyer(i), "buyer").post(
            "/orders", {**ORDER, "seller_id": seller(i), "delivery_days": delivery_days}, expect=201)
        order_id = placed["id"]
        await client(there, buyer(i), "buyer").post(f"/orders/{order_id}/requirements",
                                                     {"requirements": f"r{i}"}, expect=200)
        if deliver:
            await client(here, seller(i), "seller").post(f"/orders/{order_id}/deliveries",
                                                          {"message": f"v1 of {i}"}, expect=200)
        return order_id

    race_ids, late_ids, unanswered_ids = await asyncio.gather(
        asyncio.gather(*(new_order(i, delivery_days=3, deliver=True) for i in range(RACE))),
        asyncio.gather(*(new_order(i, delivery_days=1 + i % 3, deliver=False) for i in range(LATE))),
        asyncio.gather(*(new_order(i, delivery_days=3, deliver=True) for i in range(UNANSWERED))),
    )
    all_ids = [*race_ids, *late_ids, *unanswered_ids]
    assert len(set(all_ids)) == len(all_ids)
    delivered_ids = set(race_ids) | set(unanswered_ids)
    await h.probe.wait_for("order.delivered", lambda m: m.subject in delivered_ids, count=len(delivered_ids))

    # ------------------------------------------------------------ the race (ORD-4, ORD-6)
    # For each delivered order, all at once: the buyer's acceptance on both processes (for
    # some orders with one Idempotency-Key on both: a retry that the load balancer sent to the
    # other process), two `command.order.accept` from other services with their own message
    # ids (the core queue is shared: either process may take either), and a revision request.
    # Every combination of who leaves first (i % 4), with or without a head start (i // 4 % 2)
    # and with or without one key on both acceptances (i // 8 % 2) occurs at least twice.
    race = [RaceOrder(order_id, f"accept-{order_id}" if i // 8 % 2 else None,
                      (f"{order_id}-bus-1", f"{order_id}-bus-2"))
            for i, order_id in enumerate(race_ids)]

    async def accept_over_http(i: int, order: RaceOrder, proc: ServiceProcess) -> None:
        order.http_accepts.append(await call(session, proc.base, h.token(buyer(i), "buyer"), "POST",
                                             f"/orders/{order.id}/acceptance", key=order.shared_key))

    async def revise_over_http(i: int, order: RaceOrder) -> None:
        proc = procs[(i // 2) % 2]
        order.revision = await call(session, proc.base, h.token(buyer(i), "buyer"), "POST",
                                    f"/orders/{order.id}/revisions", {"reason": "one more colour"})

    async def accept_over_bus(order: RaceOrder, n: int) -> None:
        await h.publish("command.order.accept",
                        AcceptDelivery(order_id=order.id, actor=Actor(id=f"checkout-{n + 1}", role="service")),
                        subject=order.id, id=order.bus_ids[n])

    async def one_order(i: int, order: RaceOrder) -> None:
        # All at once, a different kind of racer leaving first turn by turn (a bus command once
        # the broker has confirmed it); for half the orders the first one has a head start of a
        # few milliseconds, so that each kind wins some races while the others arrive during
        # its decision.
        racers = [lambda: accept_over_http(i, order, a), lambda: accept_over_http(i, order, b),
                  lambda: revise_over_http(i, order),
                  lambda: asyncio.gather(accept_over_bus(order, 0), accept_over_bus(order, 1))]
        lead = i % len(racers)
        head_start = HEAD_START if i // 4 % 2 else 0.0
        if lead == len(racers) - 1:
            await racers[lead]()
            await asyncio.sleep(head_start)
            await asyncio.gather(*(start() for start in racers[:lead]))
            return

        async def follow(start: Any) -> None:
            await asyncio.sleep(head_start)
            await start()

        await asyncio.gather(racers[lead](), *(follow(s) for n, s in enumerate(racers) if n != lead))

    await asyncio.gather(*(one_order(i, order) for i, order in enumerate(race)))

    decisions = {"order.completed", "order.revision_requested"}
    bus_sent = {bus_id for o in race for bus_id in o.bus_ids}

    async def bus_commands_handled(*outcomes: str) -> float:
        return sum([await metric(session, p.base, "rescenter_consumed_total", plugin="core",
                                 type="command.order.accept", outcome=outcome)
                    for p in procs for outcome in outcomes])

    async def all_handled() -> bool:
        return await bus_commands_handled("ok", "rejected") >= len(bus_sent)

    await eventually(lambda: {m.subject for m in h.probe.messages
                              if m.type in decisions and m.subject in set(race_ids)} == set(race_ids),
                     what="a decision on every order of the race", timeout=20)
    await eventually(all_handled, what="every bus command handled by one process or the other", timeout=20)
    await h.probe.settle(0.5)

    # Exactly one racer won each order; which one is on the order's timeline.
    timelines = {o.id: (await admin.get(f"/orders/{o.id}/timeline", expect=200))["entries"] for o in race}
    bus_winners = set()
    outcomes: Counter[str] = Counter()
    for i, order in enumerate(race):
        entries = timelines[order.id]
        types = [e["type"] for e in entries]
        assert types[:3] == ["order.placed", "order.requirements_submitted", "order.delivered"], types
        assert len(types) == 4 and types[3] in decisions, (order.id, types)
        winning = entries[3]
        http_ok = [payload for status, payload in order.http_accepts if status == 200]
        refused = [(status, payload) for status, payload in order.http_accepts if status != 200]
        assert order.revision is not None
        for status, payload in refused + ([order.revision] if order.revision[0] != 200 else []):
            # With one key on both, the second may arrive while the first runs: 409, retry later.
            in_use = bool(order.shared_key) and str(payload.get("type", "")).endswith("/idempotency-key-in-use")
            assert status == 409 and (payload.get("rule") == "ORD-1" or in_use), (order.id, status, payload)
        if types[3] == "order.revision_requested":
            outcome = "revision"
            assert order.revision[0] == 200 and not http_ok, (order.id, order)
            assert winning["actor"] == {"id": buyer(i), "role": "buyer"}
        elif winning["actor"]["role"] == "service":
            outcome = "bus accept"
            assert not http_ok and order.revision[0] == 409, (order.id, order)
            bus_winners.add(order.bus_ids[["checkout-1", "checkout-2"].index(winning["actor"]["id"])])
        else:
            outcome = "http accept" + (" (same key on both)" if order.shared_key else "")
            assert winning["actor"] == {"id": buyer(i), "role": "buyer"}
            assert order.revision[0] == 409, (order.id, order)
            # Without a key the second click is refused; with one key the second gets the first's
            # answer again, or, while the first still runs, 409 "in use" (never a second change).
            assert len(http_ok) in ((1, 2) if order.shared_key else (1,)), (order.id, order.http_accepts)
            assert {(p["state"], p["version"]) for p in http_ok} == {("completed", 4)}
        outcomes[outcome] += 1
    print(f"race outcomes over {RACE} orders: {dict(outcomes)}")

    # Every other bus command was handled once, refused by ORD-1 and dead-lettered, once: each
    # death is on its dead letter's record, which the processes' keepers write (core.dead_letters).
    losers = bus_sent - bus_winners
    dead = await eventually(lambda: dead_letter_records(h, f"{h.settings.bus.queue_prefix}.core.dead", len(losers)),
                            what="the dead letters kept")
    dead_ids = Counter({d["message_id"]: sum(e["action"] == "dead" for e in d["history"]) for d in dead})
    assert all(n == 1 for n in dead_ids.values()), f"dead-lettered twice: {dead_ids}"
    assert set(dead_ids) == losers
    for record in dead:
        assert record["reason"] == "rejected", record
        assert record["error"].startswith("ORD-1: "), record
    assert await bus_commands_handled("ok") == len(bus_winners)
    assert await bus_commands_handled("ok", "rejected", "retry") == len(bus_sent)

    # How often a decision lost at the version guard (the other process wrote first) and was
    # taken again on the new state: the guarded writes sent minus those that changed an order.
    guarded = sum([await metric(session, p.base, "rescenter_store_commands_total", command="findAndModify",
                                collection="orders") for p in procs])
    changed = sum(len(entries) - 1 for entries in timelines.values()) + LATE + 2 * UNANSWERED
    if guarded:  # a figure to read, not asserted: how hard the two processes collided
        print(f"guarded writes on orders: {guarded:.0f}, of which lost to another writer: {guarded - changed:.0f}")

    # ------------------------------------------------------------ revised orders are delivered again
    # The test clock is frozen: a delivery at the same instant as the first one would get the
    # same auto-completion deadline id as the one the revision cancelled (see the report), so
    # the clock moves a minute first.
    revised = [o.id for o in race if timelines[o.id][3]["type"] == "order.revision_requested"]
    moved = await admin.post("/admin/clock/advance", {"by": "PT1M"}, expect=200)
    assert moved["fired"] == []
    await clocks_agree(moved["now"])
    for n, order_id in enumerate(revised):
        i = race_ids.index(order_id)
        await client(procs[n % 2], seller(i), "seller").post(f"/orders/{order_id}/deliveries",
                                                              {"message": f"v2 of {i}"}, expect=200)
    if revised:
        await h.probe.wait_for("order.delivered",
                               lambda m: m.subject in set(revised) and m.data["delivery_number"] == 2,
                               count=len(revised))

    # ------------------------------------------------------------ deadlines (ORD-2, ORD-4)
    # Both processes advance the shared clock past every due date and auto-completion at once,
    # while their scheduler loops run: each deadline is claimed by one of them only.
    auto_ids = set(unanswered_ids) | set(revised)
    target = base_time + timedelta(days=4)
    fired_before = {p.name: await metric(session, p.base, "rescenter_deadlines_fired_total") for p in procs}
    assert fired_before == {"a": 0, "b": 0}
    answers = await asyncio.gather(*(call(session, p.base, admin_token, "POST", "/admin/clock/advance",
                                          {"to": target.isoformat()}) for p in procs))
    for status, payload in answers:
        assert status == 200, payload
        assert datetime.fromisoformat(payload["now"]) == target
    fired_by_advance = [[f["id"] for f in payload["fired"]] for _, payload in answers]
    both = set(fired_by_advance[0]) & set(fired_by_advance[1])
    assert not both, f"deadlines fired by both processes: {sorted(both)}"
    assert all(len(ids) == len(set(ids)) for ids in fired_by_advance)

    with contextlib.suppress(TimeoutError):  # if something is missing, the checks below name it
        await h.probe.wait_for("order.late", lambda m: m.subject in set(late_ids), count=len(late_ids))
        await h.probe.wait_for("order.completed",
                               lambda m: m.subject in auto_ids and m.data["cause"] == "auto_completed",
                               count=len(auto_ids))
    await h.probe.settle(0.5)

    # Each deadline was claimed once and fired once, by one process or the other; the others
    # were cancelled by the change that made them pointless.
    expected_done = {o: "order.late" for o in late_ids} | {o: "order.auto_complete" for o in auto_ids}
    for order_id in all_ids:
        deadlines = (await admin.get(f"/orders/{order_id}/deadlines", expect=200))["deadlines"]
        done = [d for d in deadlines if d["state"] == "done"]
        assert all(d["state"] in ("done", "cancelled") for d in deadlines), (order_id, deadlines)
        assert [d["kind"] for d in done] == ([expected_done[order_id]] if order_id in expected_done else []), \
            (order_id, deadlines)
        assert all(d["attempts"] == 1 for d in done), (order_id, deadlines)

    # Distinct events by id: at-least-once delivery may repeat one, never with other content.
    by_id: dict[str, list[Envelope]] = defaultdict(list)
    for message in h.probe.messages:
        by_id[message.id].append(message)
    for event_id, copies in by_id.items():
        assert all(c.model_dump() == copies[0].model_dump() for c in copies), f"event {event_id} differs: {copies}"
    repeated = {event_id: len(copies) for event_id, copies in by_id.items() if len(copies) > 1}
    events = [copies[0] for copies in by_id.values()]

    def distinct(type_: str, **data: Any) -> Counter[str]:
        return Counter(m.subject for m in events
                       if m.type == type_ and all(m.data.get(k) == v for k, v in data.items()))

    assert distinct("order.late") == Counter(dict.fromkeys(late_ids, 1))
    assert distinct("order.completed", cause="auto_completed") == Counter(dict.fromkeys(auto_ids, 1))
    accepted = set(race_ids) - set(revised)
    assert distinct("order.completed", cause="accepted") == Counter(dict.fromkeys(accepted, 1))
    assert distinct("order.revision_requested") == Counter(dict.fromkeys(revised, 1))

    # The two processes' counts add up to one firing per deadline.
    fired_after = {p.name: await metric(session, p.base, "rescenter_deadlines_fired_total") for p in procs}
    late_fired = [await metric(session, p.base, "rescenter_deadlines_fired_total", owner="core", kind="order.late")
                  for p in procs]
    auto_fired = [await metric(session, p.base, "rescenter_deadlines_fired_total", owner="core",
                               kind="order.auto_complete") for p in procs]
    assert sum(late_fired) == len(late_ids), late_fired
    assert sum(auto_fired) == len(auto_ids), auto_fired
    assert sum(fired_after.values()) == len(late_ids) + len(auto_ids), fired_after
    print(f"deadlines fired: {fired_after} (by the advance calls: {[len(f) for f in fired_by_advance]}); "
          f"events repeated on the tap: {len(repeated)}")

    # ------------------------------------------------------------ every order, from both processes
    for n, order_id in enumerate(all_ids):
        views = [await client(p, "admin-1", "admin").get(f"/orders/{order_id}", expect=200) for p in procs]
        assert views[0] == views[1], (order_id, views)
        order = views[0]
        entries = (await client(procs[n % 2], "admin-1", "admin").get(f"/orders/{order_id}/timeline",
                                                                     expect=200))["entries"]
        types = [e["type"] for e in entries]
        assert [e["seq"] for e in entries] == list(range(len(entries))), (order_id, entries)
        assert order["version"] == len(entries), (order_id, order["version"], types)  # one write per change
        assert order["delivery_count"] == types.count("order.delivered"), (order_id, order, types)
        assert order["revision_count"] == types.count("order.revision_requested"), (order_id, order, types)
        # ORD-6: the tap saw exactly the events on the timeline, nothing lost, nothing extra.
        tapped = [m for m in events if m.subject == order_id and m.type in CORE_EVENT_TYPES]
        assert sorted(e["event_id"] for e in entries) == sorted(m.id for m in tapped), (order_id, types,
                                                                                         [m.type for m in tapped])
        assert Counter(types) == Counter(m.type for m in tapped)
        if order_id in late_ids:
            assert order["state"] == "in_progress" and order["late"] is True
            assert types == ["order.placed", "order.requirements_submitted", "order.late"]
        else:
            # Nothing lost: every delivered order reached its final state, once.
            assert order["state"] == "completed", (order_id, order["state"], types)
            assert types.count("order.completed") == 1 and types[-1] == "order.completed"
            assert order["completion_cause"] == ("accepted" if order_id in accepted else "auto_completed")
            assert "order.late" not in types
