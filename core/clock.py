"""The service's clock: the only source of "now" for business rules.

`SystemClock` reads the wall clock. `TestClock` is frozen at an instant kept in
MongoDB, so every instance of the service shares it, and moves only when an
admin advances it (like Stripe's test clocks). The scheduler walks the
deadlines due in the skipped time in order (core.scheduler.Scheduler.advance).

Leases and claim expiry never use this clock: they are about processes, not
business time, and use the wall clock, `utcnow()`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol

from core.store import Collection


def utcnow() -> datetime:
    """Now, to the millisecond: what BSON keeps, so a time read back equals the one written."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Clock(Protocol):
    mode: str

    def now(self) -> datetime: ...


class SystemClock:
    mode = "system"

    def now(self) -> datetime:
        return utcnow()


class FixedClock:
    """A clock that tests move by hand, for unit tests without a database."""

    mode = "fixed"

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> None:
        self.at = at


class TestClock:
    """Frozen time shared by all instances through one MongoDB document."""

    mode = "test"
    __test__ = False  # not a pytest class
    DOC_ID = "test-clock"

    def __init__(self, collection: Collection, refresh_interval: float = 0.2) -> None:
        self._collection = collection
        self._at = utcnow()
        self._refresh_interval = refresh_interval
        self._task: asyncio.Task[None] | None = None

    def now(self) -> datetime:
        return self._at

    async def start(self) -> None:
        # The first instance fixes the starting instant; the others read it.
        await self._collection.update_one(
            {"_id": self.DOC_ID}, {"$setOnInsert": {"at": self._at}}, upsert=True
        )
        await self.refresh()
        self._task = asyncio.create_task(self._follow(), name="test-clock-follow")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh(self) -> datetime:
        doc = await self._collection.find_one({"_id": self.DOC_ID})
        if doc:
            self._at = doc["at"]
        return self._at

    async def set(self, at: datetime) -> None:
        """Move the shared clock; it never goes back."""
        if at < self._at:
            raise ValueError("the test clock only moves forward")
        # BSON keeps milliseconds; keep ours equal to what other instances read.
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        await self._collection.update_one({"_id": self.DOC_ID}, {"$max": {"at": at}}, upsert=True)
        await self.refresh()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.refresh()
            except Exception:  # the store is down: keep the last instant, try again
                continue
