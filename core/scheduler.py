"""Durable deadlines in MongoDB.

A deadline (`deadlines` collection) is claimed atomically by one instance
(pending -> claimed, with a lease in real time), handed to its owner's handler,
then marked done. An instance that dies while holding one lets its lease run
out and another instance fires it again; handlers are idempotent on the
deadline id (they pass it as the message id of their write), so its effect
happens exactly once. Deadlines of a disabled plugin wait until it is back.

Business time comes from the service clock. With the test clock, `advance`
walks the deadlines due in the skipped time one instant at a time, in order,
including those that firing creates inside the window.

A finished deadline (done, cancelled, failed) keeps `finished_at`, in real
time; each instance deletes those older than `scheduler.retention` every
`scheduler.prune_interval`, a page of ids at a time, so the collection holds
what is pending plus the recent past.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict
from pymongo import ASCENDING, UpdateOne

from core.clock import Clock, TestClock, utcnow
from core.metrics import Metrics
from core.settings import SchedulerSettings
from core.store import Store

log = structlog.get_logger("rescenter.scheduler")

CORE_OWNER = "core"
MAX_ATTEMPTS = 5
CLAIM_BATCH = 20  # candidates tried per pass when other instances take the first ones
FINISHED = ("done", "cancelled", "failed")
PRUNE_PAGE = 500  # finished deadlines deleted per round trip
PRUNE_PAGES = 20  # pages per pass at most: a backlog is spread over passes


class Deadline(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    owner: str  # "core" or a plugin name
    kind: str  # what the owner's handler is registered under
    subject: str  # the order id
    due_at: AwareDatetime
    payload: dict[str, Any] = {}


DeadlineHandler = Callable[[Deadline], Awaitable[None]]


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: SchedulerSettings,
        metrics: Metrics,
        instance: str,
        active_owners: Callable[[], set[str]],
    ) -> None:
        self.collection = store.collection("deadlines")
        self.batcher = store.batcher("deadlines")
        self.clock = clock
        self.settings = settings
        self.metrics = metrics
        self.instance = instance
        self.active_owners = active_owners
        self.handlers: dict[tuple[str, str], DeadlineHandler] = {}
        self._task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._advancing = asyncio.Lock()
        #: the earliest pending due instant this instance knows of (None: none known)
        self._next_due: datetime | None = None

    def register(self, owner: str, kind: str, handler: DeadlineHandler) -> None:
        self.handlers[(owner, kind)] = handler

    async def create_indexes(self) -> None:
        await self.collection.create_index([("state", ASCENDING), ("due_at", ASCENDING)])
        await self.collection.create_index([("subject", ASCENDING)])
        await self.collection.create_index([("finished_at", ASCENDING)], sparse=True)

    async def schedule(self, deadline: Deadline) -> None:
        """Idempotent: a deadline id is scheduled once; a fired one is not revived."""
        await self.batcher.write(UpdateOne(
            {"_id": deadline.id},
            {
                "$setOnInsert": {
                    "owner": deadline.owner,
                    "kind": deadline.kind,
                    "subject": deadline.subject,
                    "due_at": deadline.due_at,
                    "payload": deadline.payload,
                    "state": "pending",
                    "attempts": 0,
                    "created_at": self.clock.now(),
                }
            },
            upsert=True,
        ))
        if self._next_due is None or deadline.due_at < self._next_due:
            self._next_due = deadline.due_at
        self._wake.set()

    async def cancel(self, deadline_id: str) -> None:
        """A pending deadline will not fire; one already fired or cancelled stays as it is.

        One not scheduled yet is recorded as cancelled, so that its schedule, should it come
        later, finds it and does not revive it: a change's effects may be applied after the
        next change's (the first writer's flush failed, the outbox sweeper applies it later),
        and an auto-completion scheduled after the acceptance cancelled it would fire (ORD-4).
        A guarded upsert: refused as a duplicate `_id` when the deadline exists and is not
        pending, which leaves it as it is."""
        await self.batcher.write(UpdateOne(
            {"_id": deadline_id, "state": "pending"},
            {"$set": {"state": "cancelled", "cancelled_at": self.clock.now(), "finished_at": utcnow()}},
            upsert=True,
        ))

    async def get(self, deadline_id: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"_id": deadline_id})

    async def for_subject(self, subject: str) -> list[dict[str, Any]]:
        cursor = self.collection.find({"subject": subject}).sort("due_at", ASCENDING)
        return [doc async for doc in cursor]

    # ------------------------------------------------------------ firing

    async def claim_next(self, now: datetime) -> Deadline | None:
        """Claim the earliest due deadline (or one whose claimer died), if any.

        One query, earliest first; it also tells when the next deadline falls
        due, so the loop reads the collection again only then (or at its scan
        interval), not at every poll.
        """
        owners = sorted(self.active_owners())
        real_now = utcnow()
        query = {
            "owner": {"$in": owners},
            "$or": [{"state": "pending"}, {"state": "claimed", "lease_until": {"$lte": real_now}}],
        }
        candidates = await self.collection.find(query).sort("due_at", ASCENDING).limit(CLAIM_BATCH).to_list()
        self._next_due = None
        for doc in candidates:
            if doc["state"] == "pending" and doc["due_at"] > now:
                self._next_due = doc["due_at"]  # sorted: every later candidate is later still
                break
            if await self._claim(doc, now, real_now):
                return _deadline(doc)
        return None

    async def _claim(self, doc: dict[str, Any], now: datetime, real_now: datetime) -> bool:
        """Take attempt n+1 of a deadline, unless another instance already has.

        One conditional update whose filter is the claim's own condition (pending
        and due, or claimed with its lease run out) and the attempt count read:
        of several instances reading the same candidate exactly one matches, and
        a deadline cancelled or fired meanwhile does not match at all, whatever
        state the read returned. (The embedded store reads without a snapshot:
        it matched a pending deadline and returned it cancelled, and a filter
        built from that state fired an auto-completion days early.)
        """
        attempt = doc.get("attempts", 0) + 1
        claimable = ({"state": "claimed", "lease_until": {"$lte": real_now}} if doc["state"] == "claimed"
                     else {"state": "pending", "due_at": {"$lte": now}})
        guard: dict[str, Any] = {"_id": doc["_id"], "attempts": doc.get("attempts", 0), **claimable}
        taken = await self.collection.update_one(
            guard,
            {"$set": {"state": "claimed", "claimed_by": self.instance, "attempts": attempt,
                      "lease_until": real_now + self.settings.lease}},
        )
        return taken.modified_count == 1

    async def fire(self, deadline: Deadline) -> None:
        handler = self.handlers.get((deadline.owner, deadline.kind))
        bound = structlog.contextvars.bound_contextvars(
            deadline_id=deadline.id, order_id=deadline.subject, plugin=deadline.owner
        )
        with bound:
            if handler is None:
                log.error("no handler for deadline", kind=deadline.kind)
                await self._finish(deadline, "failed", error="no handler")
                return
            try:
                await handler(deadline)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                doc = await self.collection.find_one({"_id": deadline.id}, {"attempts": 1})
                attempts = (doc or {}).get("attempts", MAX_ATTEMPTS)
                log.exception("deadline handler failed", attempts=attempts)
                if attempts >= MAX_ATTEMPTS:
                    await self._finish(deadline, "failed", error=repr(exc))
                else:  # retried once the lease runs out
                    await self.collection.update_one(
                        {"_id": deadline.id, "claimed_by": self.instance},
                        {"$set": {"lease_until": utcnow() + timedelta(seconds=1) * attempts}},
                    )
                return
            await self._finish(deadline, "done")
            self.metrics.deadlines_fired.labels(deadline.owner, deadline.kind).inc()
            log.info("deadline fired", kind=deadline.kind, due_at=deadline.due_at.isoformat())

    async def _finish(self, deadline: Deadline, state: str, **fields: Any) -> None:
        await self.collection.update_one(
            {"_id": deadline.id, "claimed_by": self.instance},
            {"$set": {"state": state, "fired_at": self.clock.now(), "finished_at": utcnow(), **fields}},
        )

    async def fire_due(self) -> int:
        """Fire every deadline due now, earliest first. Returns how many fired."""
        fired = 0
        while (deadline := await self.claim_next(self.clock.now())) is not None:
            await self.fire(deadline)
            fired += 1
        return fired

    async def run(self) -> None:
        poll = self.settings.poll_interval.total_seconds()
        scan = self.settings.scan_interval.total_seconds()
        loop = asyncio.get_running_loop()
        last_scan = -scan
        while True:
            try:
                known_due = self._next_due is not None and self._next_due <= self.clock.now()
                if not self._advancing.locked() and (known_due or loop.time() - last_scan >= scan):
                    last_scan = loop.time()
                    await self.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduler pass failed; will retry", error=repr(exc))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=poll)
            except TimeoutError:
                pass

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="scheduler")
        self._prune_task = asyncio.create_task(self._prune_forever(), name="scheduler-prune")

    async def stop(self) -> None:
        tasks = [task for task in (self._task, self._prune_task) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ housekeeping

    async def prune(self, finished_before: datetime, *, page: int = PRUNE_PAGE, pages: int = PRUNE_PAGES) -> int:
        """Delete deadlines finished before `finished_before` (real time), `page` ids per
        round trip and at most `pages` pages; returns how many were deleted."""
        deleted = 0
        for _ in range(pages):
            old = {"finished_at": {"$lte": finished_before}}
            ids = [doc["_id"] for doc in await self.collection.find(old, {"_id": 1})
                   .sort("finished_at", ASCENDING).limit(page).to_list()]
            if not ids:
                break
            result = await self.collection.delete_many({"_id": {"$in": ids}, **old})
            deleted += result.deleted_count
            if len(ids) < page:
                break
        return deleted

    async def _prune_forever(self) -> None:
        try:  # deadlines finished before `finished_at` existed are dated now: pruned a retention from here
            await self.collection.update_many({"state": {"$in": list(FINISHED)}, "finished_at": {"$exists": False}},
                                              {"$set": {"finished_at": utcnow()}})
        except Exception as exc:
            log.warning("could not date the finished deadlines of an older release", error=repr(exc))
        while True:
            await asyncio.sleep(self.settings.prune_interval.total_seconds())
            try:
                pruned = await self.prune(utcnow() - self.settings.retention)
                if pruned:
                    log.info("finished deadlines deleted", count=pruned,
                             retention=self.settings.retention.total_seconds())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not delete finished deadlines; will retry", error=repr(exc))

    # ------------------------------------------------------------ test clock

    async def advance(self, to: datetime) -> list[dict[str, Any]]:
        """Move the test clock to `to`, firing what falls due on the way, in order."""
        clock = self.clock
        if not isinstance(clock, TestClock):
            raise RuntimeError("the clock can only be moved in test clock mode")
        fired: list[dict[str, Any]] = []
        async with self._advancing:
            while True:
                owners = sorted(self.active_owners())
                next_doc = await self.collection.find_one(
                    {"state": "pending", "due_at": {"$lte": to}, "owner": {"$in": owners}},
                    sort=[("due_at", ASCENDING)],
                )
                if next_doc is None:
                    break
                if next_doc["due_at"] > clock.now():
                    await clock.set(next_doc["due_at"])
                while (deadline := await self.claim_next(clock.now())) is not None:
                    await self.fire(deadline)
                    fired.append({"id": deadline.id, "kind": deadline.kind, "owner": deadline.owner,
                                  "due_at": deadline.due_at.isoformat()})
            await clock.set(max(to, clock.now()))
        return fired


def _deadline(doc: dict[str, Any]) -> Deadline:
    return Deadline(
        id=doc["_id"], owner=doc["owner"], kind=doc["kind"], subject=doc["subject"],
        due_at=doc["due_at"], payload=doc.get("payload") or {},
    )
