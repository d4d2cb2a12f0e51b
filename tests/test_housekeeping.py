"""Housekeeping: finished deadlines are deleted after `scheduler.retention` (real
time), a page at a time; a killed test instance stops answering HTTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from core.scheduler import CORE_OWNER, Deadline
from tests.harness import Harness
from tests.support import eventually

FAST_PRUNE = {"scheduler": {"retention": timedelta(seconds=1), "prune_interval": timedelta(seconds=0.2)}}


def _deadline(n: int, due_at: datetime, kind: str = "test.noop") -> Deadline:
    return Deadline(id=f"hk-{n}", owner=CORE_OWNER, kind=kind, subject=f"order-{n}", due_at=due_at)


async def test_finished_deadlines_are_deleted_after_the_retention_and_pending_ones_stay() -> None:
    async with Harness(**FAST_PRUNE) as h:
        # A deadline an older release finished (no `finished_at`): dated at start, then pruned too.
        client: AsyncMongoClient[Any] = AsyncMongoClient(h.settings.store.url)
        try:
            await client[h.settings.store.database]["deadlines"].insert_one(
                {"_id": "hk-legacy", "owner": CORE_OWNER, "kind": "test.noop", "subject": "order-0",
                 "due_at": datetime(2020, 1, 1, tzinfo=UTC), "state": "done", "attempts": 1})
        finally:
            await client.close()
        service = await h.start_instance()
        assert service.services is not None
        scheduler = service.services.scheduler
        fired: list[str] = []

        async def noop(deadline: Deadline) -> None:
            fired.append(deadline.id)

        scheduler.register(CORE_OWNER, "test.noop", noop)
        now = service.services.clock.now()
        await scheduler.schedule(_deadline(1, now))  # fires: done
        await scheduler.schedule(_deadline(2, now + timedelta(hours=1)))
        await scheduler.cancel("hk-2")  # cancelled
        await scheduler.schedule(_deadline(3, now, kind="test.unhandled"))  # no handler: failed
        await scheduler.schedule(_deadline(4, now + timedelta(days=3)))  # pending: stays
        await scheduler.collection.insert_one(  # an instance is firing it right now: stays
            {"_id": "hk-5", "owner": CORE_OWNER, "kind": "test.noop", "subject": "order-5", "due_at": now,
             "state": "claimed", "claimed_by": "elsewhere", "attempts": 1,
             "lease_until": datetime.now(UTC) + timedelta(minutes=5)})

        async def only_unfinished_left() -> bool:
            left = {d["_id"]: d["state"] async for d in scheduler.collection.find({})}
            return left == {"hk-4": "pending", "hk-5": "claimed"}

        # done (1), cancelled (2), failed (3) and the legacy one deleted about a second after they
        # finished; the pending and the claimed one stay.
        await eventually(only_unfinished_left, what="finished deadlines deleted after a retention of 1 s",
                         timeout=8)
        assert fired == ["hk-1"]


async def test_finished_deadlines_are_deleted_a_bounded_page_at_a_time() -> None:
    async with Harness() as h:  # retention 30 days, pruned every 10 min: nothing runs by itself here
        service = await h.start_instance()
        assert service.services is not None
        scheduler = service.services.scheduler
        now = service.services.clock.now()
        for n in range(5):
            await scheduler.schedule(_deadline(n, now + timedelta(hours=1)))
            await scheduler.cancel(f"hk-{n}")
        await scheduler.schedule(_deadline(9, now + timedelta(hours=1)))
        in_a_month = datetime.now(UTC) + timedelta(days=31)
        cancelled = [d async for d in scheduler.collection.find({"state": "cancelled"})]
        assert len(cancelled) == 5
        assert all(in_a_month - timedelta(days=31, minutes=1) <= d["finished_at"].replace(tzinfo=UTC) <= in_a_month
                   for d in cancelled)  # real time, whatever the test clock says

        assert await scheduler.prune(datetime.now(UTC) - timedelta(days=30)) == 0  # none old enough
        assert await scheduler.prune(in_a_month, page=2, pages=2) == 4  # one pass: two pages of two
        assert await scheduler.prune(in_a_month, page=2, pages=2) == 1
        assert await scheduler.prune(in_a_month, page=2, pages=2) == 0
        assert [d["_id"] async for d in scheduler.collection.find({})] == ["hk-9"]


async def test_a_killed_instance_no_longer_answers_http() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        url = f"http://127.0.0.1:{service.port}/healthz"
        async with aiohttp.ClientSession() as session:  # keeps its connection open between requests
            async with session.get(url) as response:
                assert response.status == 200
            await service.kill()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with asyncio.timeout(5):
                    async with session.get(url) as response:
                        await response.read()
        async with aiohttp.ClientSession() as fresh:
            with pytest.raises(aiohttp.ClientConnectorError):  # nothing listens on the port
                async with fresh.get(url) as response:
                    await response.read()
