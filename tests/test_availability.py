"""Availability (AVL-1 to AVL-5) over HTTP against real RabbitMQ and the
MongoDB-wire server: placements refused and accepted at the right moments, the
test clock moved across the end of away periods and across midnight in sellers'
zones far from UTC, a cap reached by concurrent placements, visibility, events,
restarts, and the plugin switched off."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from core.scheduler import Deadline
from core.service import Service
from tests.harness import ORDER, Client, Harness
from tests.support import eventually, problem

PROBE = {"extra": ["tests.probe_plugin"]}  # vetoes gig "vetoed-gig": another plugin's refusal (ORD-5)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared() -> AsyncIterator[tuple[Harness, Service]]:
    """One instance for the tests below: each uses its own sellers and buyers, and
    moves the shared test clock only forward, relative to where it is."""
    async with Harness(plugins=PROBE) as h:
        yield h, await h.start_instance()


class World:
    """One test's view of a running service: its own seller, clients and the clock."""

    def __init__(self, h: Harness, service: Service) -> None:
        self.h, self.service = h, service
        tag = uuid.uuid4().hex[:8]
        self.seller_id = f"seller-{tag}"
        self.seller = h.client(service, self.seller_id, "seller")
        self.admin = h.client(service, "admin-1", "admin")
        self.support = h.client(service, "support-1", "support")
        self.anonymous = h.client(service)
        self._tag = tag
        self._buyers = 0

    @property
    def path(self) -> str:
        return f"/availability/sellers/{self.seller_id}"

    def buyer(self) -> Client:
        self._buyers += 1
        return self.h.client(self.service, f"buyer-{self._tag}-{self._buyers}", "buyer")

    async def place(self, buyer: Client | None = None, *, gig_id: str = "gig-1") -> Any:
        buyer = buyer or self.buyer()
        self.last_buyer = buyer
        return await buyer.post("/orders", {**ORDER, "seller_id": self.seller_id, "gig_id": gig_id})

    async def accepted(self, **kwargs: Any) -> dict[str, Any]:
        order = await self.place(**kwargs)
        assert self.last_buyer.last_status == 201, order
        return order

    async def refused(self, plugin_rule: str, **kwargs: Any) -> dict[str, Any]:
        body = await self.place(**kwargs)
        return problem(self.last_buyer, body, 409, rule="ORD-5", plugin="availability", plugin_rule=plugin_rule)

    async def now(self) -> datetime:
        return datetime.fromisoformat((await self.admin.get("/admin/clock", expect=200))["now"])

    async def advance_to(self, at: datetime) -> list[dict[str, Any]]:
        moved = await self.admin.post("/admin/clock/advance", {"to": at.isoformat()}, expect=200)
        return moved["fired"]

    async def advance(self, by: timedelta) -> list[dict[str, Any]]:
        return await self.advance_to(await self.now() + by)

    async def delete(self, client: Client, path: str, **kw: Any) -> Any:
        return await client.request("DELETE", path, **kw)

    def events(self, type_: str) -> list[Any]:
        return self.h.probe.of_type(type_, f"seller:{self.seller_id}")

    async def wait_for(self, type_: str, count: int = 1) -> list[Any]:
        return await self.h.probe.wait_for(type_, lambda m: m.subject == f"seller:{self.seller_id}", count=count)

    def seller_events(self) -> list[str]:
        return [m.type for m in self.h.probe.messages if m.subject == f"seller:{self.seller_id}"]


@pytest.fixture
def world(shared: tuple[Harness, Service]) -> World:
    return World(*shared)


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# ---------------------------------------------------------------- AVL-1, AVL-2: away periods


async def test_AVL_1_away_period_refuses_new_orders_with_note_and_return_date_running_orders_untouched(
        world: World) -> None:
    running = await world.accepted()
    now = await world.now()
    until = now + timedelta(days=3)
    settings = await world.seller.put(f"{world.path}/away", {"until": at(until), "note": "On holiday"}, expect=200)
    assert settings["available"] is False
    assert settings["away"]["note"] == "On holiday" and datetime.fromisoformat(settings["away"]["until"]) == until

    refused = await world.refused("AVL-1")
    assert "On holiday" in refused["detail"] and until.strftime("%B %Y") in refused["detail"]
    assert refused["note"] == "On holiday" and datetime.fromisoformat(refused["away_until"]) == until

    # The order already running goes on as before.
    running_buyer = world.h.client(world.service, running["buyer_id"], "buyer")
    started = await running_buyer.post(f"/orders/{running['id']}/requirements", {"requirements": "x"}, expect=200)
    assert started["state"] == "in_progress"

    [event] = await world.wait_for("availability.away_started")
    assert event.data["period"]["note"] == "On holiday" and event.data["rule"] == "AVL-1"
    assert datetime.fromisoformat(event.data["period"]["until"]) == until
    assert event.data["actor"] == {"id": world.seller_id, "role": "seller"}


async def test_AVL_2_away_period_switches_itself_off_at_until(world: World) -> None:
    until = await world.now() + timedelta(days=2)
    await world.seller.put(f"{world.path}/away", {"until": at(until), "note": "Conference"}, expect=200)

    await world.advance_to(until - timedelta(seconds=1))
    await world.refused("AVL-1")
    public = await world.anonymous.get(world.path, expect=200)
    assert public["available"] is False

    fired = await world.advance(timedelta(seconds=1))
    assert {"kind": "availability.away_end", "owner": "availability"} in [
        {"kind": f["kind"], "owner": f["owner"]} for f in fired]
    await world.accepted()
    public = await world.anonymous.get(world.path, expect=200)
    assert public == {"seller_id": world.seller_id, "available": True, "away": None}

    [ended] = await world.wait_for("availability.away_ended")
    assert ended.data["cause"] == "elapsed" and ended.data["rule"] == "AVL-2" and ended.data["started"] is True
    assert datetime.fromisoformat(ended.data["ended_at"]) == until
    assert ended.data["actor"]["role"] == "system"


async def test_AVL_1_a_period_set_for_later_refuses_orders_from_its_start_only(world: World) -> None:
    now = await world.now()
    starts_at, until = now + timedelta(days=1), now + timedelta(days=2)
    settings = await world.seller.put(f"{world.path}/away",
                                      {"starts_at": at(starts_at), "until": at(until), "note": "Moving house"},
                                      expect=200)
    assert settings["available"] is True and settings["away"]["note"] == "Moving house"  # announced ahead
    await world.wait_for("availability.away_scheduled")

    await world.advance_to(starts_at - timedelta(seconds=1))
    await world.accepted()
    await world.advance_to(starts_at)
    await world.refused("AVL-1")
    await world.wait_for("availability.away_started")
    await world.advance_to(until - timedelta(seconds=1))
    await world.refused("AVL-1")
    await world.advance_to(until)
    await world.accepted()
    await world.wait_for("availability.away_ended")
    assert world.seller_events() == [
        "availability.away_scheduled", "availability.away_started", "availability.away_ended"]


async def test_AVL_2_seller_ends_the_period_sooner_and_its_end_does_not_fire_again(world: World) -> None:
    until = await world.now() + timedelta(days=5)
    await world.seller.put(f"{world.path}/away", {"until": at(until), "note": "Sick"}, expect=200)
    await world.refused("AVL-1")

    await world.advance(timedelta(hours=1))
    settings = await world.delete(world.seller, f"{world.path}/away", expect=200)
    assert settings["available"] is True and settings["away"] is None
    await world.accepted()
    [ended] = await world.wait_for("availability.away_ended")
    assert ended.data["cause"] == "ended_by_seller" and ended.data["actor"]["id"] == world.seller_id
    deadlines = await world.admin.get(f"/orders/seller:{world.seller_id}/deadlines", expect=200)
    assert [(d["kind"], d["state"]) for d in deadlines["deadlines"]] == [("availability.away_end", "cancelled")]

    # Ending it again changes nothing; its return date passing publishes nothing more.
    await world.delete(world.seller, f"{world.path}/away", expect=200)
    await world.advance_to(until + timedelta(seconds=1))
    await world.h.probe.settle(0.3)
    assert world.seller_events() == ["availability.away_started", "availability.away_ended"]


async def test_AVL_2_a_period_ended_at_the_instant_it_began_says_it_started(world: World) -> None:
    """`started` tells a consumer whether the period ever refused orders: one that began when it
    was set did, even when the seller ends it before the clock moves."""
    until = await world.now() + timedelta(days=2)
    await world.seller.put(f"{world.path}/away", {"until": at(until), "note": "Back soon"}, expect=200)
    await world.refused("AVL-1")
    await world.delete(world.seller, f"{world.path}/away", expect=200)
    [ended] = await world.wait_for("availability.away_ended")
    assert ended.data["cause"] == "ended_by_seller" and ended.data["started"] is True
    assert ended.data["ended_at"] == ended.data["period"]["starts_at"]


async def test_AVL_1_a_new_period_replaces_the_current_one_and_a_repeated_request_changes_nothing(
        world: World) -> None:
    now = await world.now()
    body = {"until": at(now + timedelta(days=1)), "note": "Away"}
    await world.seller.put(f"{world.path}/away", body, expect=200)
    longer = {"until": at(now + timedelta(days=4)), "note": "Away longer"}
    await world.seller.put(f"{world.path}/away", longer, expect=200)
    await world.seller.put(f"{world.path}/away", longer, expect=200)  # a retry: the same period

    await world.wait_for("availability.away_started", count=2)
    await world.h.probe.settle(0.3)
    assert world.seller_events() == [
        "availability.away_started", "availability.away_ended", "availability.away_started"]
    replaced = world.events("availability.away_ended")[0].data
    # It began when it was set: replaced at that very instant, it still took effect.
    assert replaced["cause"] == "replaced" and replaced["started"] is True

    # The first period's end is cancelled: at its until the seller is still away.
    await world.advance_to(now + timedelta(days=1))
    refused = await world.refused("AVL-1")
    assert refused["note"] == "Away longer"


@pytest.mark.parametrize(("body", "words"), [
    ({"until": "PAST", "note": "late"}, "end after it starts"),
    ({"starts_at": "+2D", "until": "+1D", "note": "backwards"}, "end after it starts"),
    ({"until": "+1D", "note": "   "}, "note"),
    ({"until": "+1D", "note": "x" * 301}, "note"),
    ({"until": "+1D"}, "note"),
    ({"until": "2030-01-01T00:00:00", "note": "no offset"}, "until"),
    ({"until": "+1D", "note": "ok", "cap": 3}, "cap"),
])
async def test_AVL_1_a_bad_period_is_refused_clearly_and_changes_nothing(
        world: World, body: dict[str, Any], words: str) -> None:
    now = await world.now()
    moments = {"PAST": now - timedelta(seconds=1), "+1D": now + timedelta(days=1), "+2D": now + timedelta(days=2)}
    body = {k: at(moments[v]) if isinstance(v, str) and v in moments else v for k, v in body.items()}
    answer = await world.seller.put(f"{world.path}/away", body)
    refused = problem(world.seller, answer, 422)
    assert words in refused["detail"]
    if "end after" in words:
        assert refused["rule"] == "AVL-1"
    assert (await world.anonymous.get(world.path, expect=200))["available"] is True
    await world.accepted()
    assert world.seller_events() == []


# ---------------------------------------------------------------- AVL-3: the rest of the day, in the seller's zone


def next_local(now: datetime, zone: ZoneInfo, wall: time) -> datetime:
    """The next instant after `now` when the wall clock in `zone` shows `wall`."""
    local = now.astimezone(zone)
    day = local.date() if local.time() < wall else local.date() + timedelta(days=1)
    return datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)


def local_midnight_after(moment: datetime, zone: ZoneInfo) -> datetime:
    day = moment.astimezone(zone).date() + timedelta(days=1)
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


@pytest.mark.parametrize(("zone_name", "set_at"), [
    ("Pacific/Kiritimati", time(9, 0)),   # UTC+14: the local day ends at 10:00 UTC
    ("Pacific/Pago_Pago", time(20, 0)),   # UTC-11: the local day ends at 11:00 UTC the next UTC day
])
async def test_AVL_3_rest_of_the_day_ends_at_midnight_in_the_sellers_zone(
        world: World, zone_name: str, set_at: time) -> None:
    zone = ZoneInfo(zone_name)
    start = next_local(await world.now(), zone, set_at)
    await world.advance_to(start)
    settings = await world.seller.put(f"{world.path}/away/rest-of-day",
                                      {"time_zone": zone_name, "note": "Finishing current orders"}, expect=200)
    midnight = local_midnight_after(start, zone)
    assert datetime.fromisoformat(settings["away"]["until"]) == midnight
    assert settings["away"]["kind"] == "rest_of_day" and settings["away"]["time_zone"] == zone_name

    refused = await world.refused("AVL-3")
    assert "Finishing current orders" in refused["detail"]
    # Midnight in UTC is not the end of the seller's day.
    utc_midnight = datetime.combine(start.date() + timedelta(days=1), time(0), tzinfo=UTC)
    if start < utc_midnight < midnight:
        await world.advance_to(utc_midnight)
        await world.refused("AVL-3")
    await world.advance_to(midnight - timedelta(seconds=1))
    assert (midnight - timedelta(seconds=1)).astimezone(zone).time() == time(23, 59, 59)
    await world.refused("AVL-3")
    await world.advance_to(midnight)
    await world.accepted()
    [ended] = await world.wait_for("availability.away_ended")
    assert ended.data["cause"] == "elapsed" and ended.data["period"]["time_zone"] == zone_name


def next_day_of_length(now: datetime, zone: ZoneInfo, hours: int) -> datetime:
    """The start (local midnight, in UTC) of the next local day lasting `hours` (a DST change)."""
    day = now.astimezone(zone).date() + timedelta(days=1)
    for _ in range(800):
        start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
        if end - start == timedelta(hours=hours):
            return start
        day += timedelta(days=1)
    raise AssertionError(f"no {hours}-hour day in {zone.key} within two years")


@pytest.mark.parametrize("day_hours", [25, 23])
async def test_AVL_3_rest_of_the_day_on_a_DST_change_day_in_Auckland(world: World, day_hours: int) -> None:
    """Pacific/Auckland is UTC+13 in summer: the day its clocks go back lasts 25 hours,
    the day they go forward 23; "rest of the day" ends at that day's real midnight."""
    zone = ZoneInfo("Pacific/Auckland")
    day_start = next_day_of_length(await world.now(), zone, day_hours)
    set_at = day_start + timedelta(minutes=30)  # 00:30, before the 02:00/03:00 change
    await world.advance_to(set_at)
    settings = await world.seller.put(f"{world.path}/away/rest-of-day",
                                      {"time_zone": "Pacific/Auckland", "note": "Daylight saving"}, expect=200)
    until = datetime.fromisoformat(settings["away"]["until"])
    assert until - set_at == timedelta(hours=day_hours, minutes=-30)
    assert until.astimezone(zone).time() == time(0, 0)

    await world.advance_to(until - timedelta(seconds=1))
    await world.refused("AVL-3")
    await world.advance_to(until)
    await world.accepted()


async def test_AVL_3_rest_of_the_day_until_a_local_time_later_today(world: World) -> None:
    zone = ZoneInfo("Asia/Kolkata")  # UTC+05:30: a half-hour offset
    start = next_local(await world.now(), zone, time(14, 0))
    await world.advance_to(start)
    earlier = await world.seller.put(f"{world.path}/away/rest-of-day",
                                     {"time_zone": "Asia/Kolkata", "note": "n", "until": "13:59"})
    assert "later the same day" in problem(world.seller, earlier, 422, rule="AVL-3")["detail"]

    settings = await world.seller.put(f"{world.path}/away/rest-of-day",
                                      {"time_zone": "Asia/Kolkata", "note": "Back at half past six", "until": "18:30"},
                                      expect=200)
    until = datetime.fromisoformat(settings["away"]["until"])
    assert until == datetime.combine(start.astimezone(zone).date(), time(18, 30), tzinfo=zone)
    await world.advance_to(until - timedelta(seconds=1))
    await world.refused("AVL-3")
    await world.advance_to(until)
    await world.accepted()


@pytest.mark.parametrize(("body", "words"), [
    ({"time_zone": "Mars/Olympus_Mons", "note": "n"}, "unknown time zone"),
    ({"time_zone": "localtime", "note": "n"}, "unknown time zone"),
    ({"time_zone": "../../etc/passwd", "note": "n"}, "unknown time zone"),
    ({"time_zone": "UTC+3", "note": "n"}, "unknown time zone"),
    ({"time_zone": "Europe/Paris", "note": "n", "until": "18:30+02:00"}, "wall time"),
    ({"time_zone": "Europe/Paris", "note": "n", "until": "25:00"}, "until"),
])
async def test_AVL_3_a_bad_zone_or_time_is_refused_clearly_and_changes_nothing(
        world: World, body: dict[str, Any], words: str) -> None:
    answer = await world.seller.put(f"{world.path}/away/rest-of-day", body)
    assert words in problem(world.seller, answer, 422)["detail"]
    if "zone" in words:
        assert answer["rule"] == "AVL-3"
    await world.accepted()
    assert world.seller_events() == []


# ---------------------------------------------------------------- AVL-4: the cap on active orders


async def test_AVL_4_concurrent_placements_let_exactly_the_cap_through(world: World) -> None:
    settings = await world.seller.put(f"{world.path}/order-cap", {"max_active_orders": 3}, expect=200)
    assert settings["max_active_orders"] == 3 and settings["active_orders"] == 0
    buyers = [world.buyer() for _ in range(12)]
    payload = {**ORDER, "seller_id": world.seller_id}

    async def place(buyer: Client) -> tuple[int, Any]:
        body = await buyer.post("/orders", payload)
        return buyer.last_status, body

    # Open a keep-alive connection per buyer first, so the placements reach the service together,
    # and make reading the seller's orders slow, so that they all overlap inside the veto.
    await asyncio.gather(*(b.get("/healthz", expect=200) for b in buyers))
    orders = world.service.services.orders
    read_orders = orders.active_orders

    async def slow_active_orders(*args: Any, **kwargs: Any) -> Any:
        found = await read_orders(*args, **kwargs)
        await asyncio.sleep(0.02)
        return found

    orders.active_orders = slow_active_orders  # type: ignore[method-assign]
    try:
        answers = await asyncio.gather(*(place(b) for b in buyers))
    finally:
        orders.active_orders = read_orders  # type: ignore[method-assign]
    placed = [body for status, body in answers if status == 201]
    refused = [body for status, body in answers if status != 201]
    assert len(placed) == 3, answers
    assert all(r["status"] == 409 and r["plugin_rule"] == "AVL-4" for r in refused), refused
    # The buyer is told the queue is full, not how long it is.
    assert all("3" not in r["detail"] and "max_active_orders" not in r for r in refused)
    assert (await world.seller.get(f"{world.path}/settings", expect=200))["active_orders"] == 3

    # An order that ends frees its slot: exactly one more gets through.
    await world.support.post(f"/orders/{placed[0]['id']}/cancellation", {"reason": "buyer asked"}, expect=200)
    answers = await asyncio.gather(*(place(b) for b in buyers[:4]))
    assert sorted(status for status, _ in answers) == [201, 409, 409, 409]
    [event] = await world.wait_for("availability.cap_changed")
    assert event.data["max_active_orders"] == 3 and "previous" not in event.data  # null: left out


async def test_AVL_4_a_cap_below_the_running_orders_leaves_them_alone_and_refuses_new_ones(world: World) -> None:
    orders = [await world.accepted() for _ in range(3)]
    settings = await world.seller.put(f"{world.path}/order-cap", {"max_active_orders": 1}, expect=200)
    assert settings["active_orders"] == 3
    await world.refused("AVL-4")
    for order in orders:  # untouched
        assert (await world.support.get(f"/orders/{order['id']}", expect=200))["state"] == "awaiting_requirements"

    await world.support.post(f"/orders/{orders[0]['id']}/cancellation", {"reason": "r"}, expect=200)
    await world.support.post(f"/orders/{orders[1]['id']}/cancellation", {"reason": "r"}, expect=200)
    await world.refused("AVL-4")  # one running, the cap is one
    await world.support.post(f"/orders/{orders[2]['id']}/cancellation", {"reason": "r"}, expect=200)
    await world.accepted()
    await world.refused("AVL-4")

    # Removed, the cap refuses nothing.
    settings = await world.seller.put(f"{world.path}/order-cap", {"max_active_orders": None}, expect=200)
    assert settings["max_active_orders"] is None
    await world.accepted()
    changes = await world.wait_for("availability.cap_changed", count=2)
    assert [(e.data.get("previous"), e.data.get("max_active_orders")) for e in changes] == [(None, 1), (1, None)]


async def test_AVL_4_a_slot_reserved_for_an_order_another_plugin_refused_is_released(world: World) -> None:
    await world.seller.put(f"{world.path}/order-cap", {"max_active_orders": 1}, expect=200)
    body = await world.place(gig_id="vetoed-gig")  # the probe plugin refuses it after this one reserved
    problem(world.last_buyer, body, 409, plugin="probe")
    doc = await world.service.services.store.collection("availability_sellers").find_one({"_id": world.seller_id})
    assert doc["reservations"] == {}
    await world.accepted()  # the slot was free
    await world.refused("AVL-4")


async def test_AVL_4_a_placement_that_died_after_its_reservation_stops_holding_a_slot(world: World) -> None:
    """A process can die between the vetoes and the insert of the order: its reservation
    must not hold a slot for ever (it stops counting after its lease)."""
    await world.seller.put(f"{world.path}/order-cap", {"max_active_orders": 1}, expect=200)
    documents = world.service.services.store.collection("availability_sellers")
    lost = datetime.now(UTC) - timedelta(seconds=30)
    await documents.update_one({"_id": world.seller_id}, {"$set": {"reservations.lost-order": {"at": lost}}})
    await world.refused("AVL-4")  # 30 s old: still in flight as far as anyone knows
    await documents.update_one({"_id": world.seller_id},
                               {"$set": {"reservations.lost-order.at": lost - timedelta(seconds=31)}})
    await world.accepted()
    doc = await documents.find_one({"_id": world.seller_id})
    assert "lost-order" not in doc["reservations"]


@pytest.mark.parametrize("cap", [0, -1, 10_001, "3", 2.5])
async def test_AVL_4_a_bad_cap_is_refused_and_changes_nothing(world: World, cap: Any) -> None:
    answer = await world.seller.put(f"{world.path}/order-cap", {"max_active_orders": cap})
    assert "max_active_orders" in problem(world.seller, answer, 422)["detail"]
    answer = await world.seller.put(f"{world.path}/order-cap", {})
    problem(world.seller, answer, 422)
    settings = await world.seller.get(f"{world.path}/settings", expect=200)
    assert settings["max_active_orders"] is None


# ---------------------------------------------------------------- AVL-5: paused gigs


async def test_AVL_5_a_paused_gig_refuses_orders_until_it_is_resumed(world: World) -> None:
    gig = "/paused-gigs/logo-design"
    settings = await world.seller.put(f"{world.path}{gig}", expect=200)
    assert [p["gig_id"] for p in settings["paused_gigs"]] == ["logo-design"]
    await world.seller.put(f"{world.path}{gig}", expect=200)  # paused already: nothing changes

    refused = await world.refused("AVL-5", gig_id="logo-design")
    assert "paused" in refused["detail"] and refused["gig_id"] == "logo-design"
    await world.accepted(gig_id="web-design")  # the seller's other gigs take orders

    settings = await world.delete(world.seller, f"{world.path}{gig}", expect=200)
    assert settings["paused_gigs"] == []
    await world.delete(world.seller, f"{world.path}{gig}", expect=200)  # resumed already
    await world.accepted(gig_id="logo-design")

    await world.wait_for("availability.gig_resumed")
    await world.h.probe.settle(0.3)
    assert world.seller_events() == ["availability.gig_paused", "availability.gig_resumed"]
    assert [e.data["gig_id"] for e in world.events("availability.gig_paused")] == ["logo-design"]


# ---------------------------------------------------------------- who sees and changes what


async def test_AVL_1_anyone_sees_availability_only_the_seller_and_support_see_cap_and_paused_gigs(
        world: World) -> None:
    until = await world.now() + timedelta(days=1)
    await world.seller.put(f"{world.path}/away", {"until": at(until), "note": "Back tomorrow"}, expect=200)
    await world.seller.put(f"{world.path}/order-cap", {"max_active_orders": 5}, expect=200)
    await world.seller.put(f"{world.path}/paused-gigs/secret-gig", expect=200)

    for client in (world.anonymous, world.buyer(), world.h.client(world.service, "seller-other", "seller")):
        public = await client.get(world.path, expect=200)
        assert public == {"seller_id": world.seller_id, "available": False,
                          "away": {"starts_at": public["away"]["starts_at"], "until": at(until),
                                   "note": "Back tomorrow"}}
    for client in (world.seller, world.support):
        private = await client.get(f"{world.path}/settings", expect=200)
        assert private["max_active_orders"] == 5 and private["paused_gigs"][0]["gig_id"] == "secret-gig"

    other_seller = world.h.client(world.service, "seller-other", "seller")
    problem(other_seller, await other_seller.get(f"{world.path}/settings"), 403)
    buyer = world.buyer()
    problem(buyer, await buyer.get(f"{world.path}/settings"), 403)
    problem(world.anonymous, await world.anonymous.get(f"{world.path}/settings"), 401)

    # Nobody but the seller and support changes them.
    for path, body in ((f"{world.path}/away", {"until": at(until), "note": "hijack"}),
                       (f"{world.path}/order-cap", {"max_active_orders": 1}),
                       (f"{world.path}/paused-gigs/gig-1", None)):
        problem(other_seller, await other_seller.put(path, body), 403)
        problem(buyer, await buyer.put(path, body), 403)
    problem(other_seller, await world.delete(other_seller, f"{world.path}/away"), 403)
    changed = await world.support.put(f"{world.path}/order-cap", {"max_active_orders": 6}, expect=200)
    assert changed["max_active_orders"] == 6
    event = (await world.wait_for("availability.cap_changed", count=2))[-1]
    assert event.data["actor"] == {"id": "support-1", "role": "support"}


# ---------------------------------------------------------------- redelivery, crash, restart, switch


async def test_AVL_2_an_end_deadline_firing_twice_ends_the_period_once(world: World) -> None:
    until = await world.now() + timedelta(hours=3)
    settings = await world.seller.put(f"{world.path}/away", {"until": at(until), "note": "n"}, expect=200)
    await world.advance_to(until)
    await world.wait_for("availability.away_ended")
    scheduler = world.service.services.scheduler
    fired_again = Deadline(id=f"availability/{world.seller_id}/{settings['away']['period_id']}/end",
                           owner="availability", kind="availability.away_end", subject=f"seller:{world.seller_id}",
                           due_at=until, payload={"seller_id": world.seller_id,
                                                  "period_id": settings["away"]["period_id"]})
    await scheduler.handlers[("availability", "availability.away_end")](fired_again)
    await world.h.probe.settle(0.3)
    assert world.seller_events() == ["availability.away_started", "availability.away_ended"]


async def test_AVL_1_an_event_whose_publish_failed_is_published_by_the_outbox_sweeper(world: World) -> None:
    bus = world.service.services.bus
    real_publish = bus.publish
    failures: list[str] = []

    async def broker_gone(envelope: Any, **kwargs: Any) -> None:
        if envelope.type.startswith("availability.") and not failures:
            failures.append(envelope.type)
            raise ConnectionResetError("the broker went away")
        await real_publish(envelope, **kwargs)

    bus.publish = broker_gone  # type: ignore[method-assign]
    try:
        until = await world.now() + timedelta(days=1)
        await world.seller.put(f"{world.path}/away", {"until": at(until), "note": "n"}, expect=200)
        assert failures == ["availability.away_started"]
        await world.wait_for("availability.away_started")  # the sweeper's second try
    finally:
        bus.publish = real_publish  # type: ignore[method-assign]
    await world.refused("AVL-1")


async def test_AVL_1_AVL_4_AVL_5_state_survives_a_restart() -> None:
    async with Harness() as h:
        first = await h.start_instance()
        w = World(h, first)
        until = await w.now() + timedelta(days=2)
        await w.seller.put(f"{w.path}/away", {"until": at(until), "note": "Trip"}, expect=200)
        await w.seller.put(f"{w.path}/order-cap", {"max_active_orders": 1}, expect=200)
        await w.seller.put(f"{w.path}/paused-gigs/gig-2", expect=200)
        await first.stop()

        second = await h.start_instance()
        w.service = second
        w.seller = h.client(second, w.seller_id, "seller")
        w.admin = h.client(second, "admin-1", "admin")
        settings = await w.seller.get(f"{w.path}/settings", expect=200)
        assert settings["away"]["note"] == "Trip" and settings["max_active_orders"] == 1
        assert [p["gig_id"] for p in settings["paused_gigs"]] == ["gig-2"]
        await w.refused("AVL-1")
        await w.advance_to(until)  # the end deadline survived too: the new instance fires it
        await w.wait_for("availability.away_ended")
        await w.refused("AVL-5", gig_id="gig-2")
        await w.accepted()
        await w.refused("AVL-4")


async def test_AVL_ORD_5_switched_off_availability_lets_orders_through_and_counts_them_when_back() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        w = World(h, service)
        until = await w.now() + timedelta(days=2)
        await w.seller.put(f"{w.path}/away", {"until": at(until), "note": "n"}, expect=200)
        await w.seller.put(f"{w.path}/order-cap", {"max_active_orders": 2}, expect=200)
        await w.refused("AVL-1")

        await w.admin.put("/admin/plugins/availability", {"enabled": False}, expect=200)
        for _ in range(3):  # away and over the cap: nothing refuses them
            await w.accepted()
        problem(w.seller, await w.seller.get(f"{w.path}/settings"), 503, plugin="availability")

        await w.admin.put("/admin/plugins/availability", {"enabled": True}, expect=200)
        await w.refused("AVL-1")
        await w.delete(w.seller, f"{w.path}/away", expect=200)
        # The three placed while it was off count against the cap of two.
        refused = await w.refused("AVL-4")
        assert refused["plugin"] == "availability"
        assert (await w.seller.get(f"{w.path}/settings", expect=200))["active_orders"] == 3
        await eventually(lambda: w.events("availability.away_ended"), what="away_ended")
