"""Transactional outbox without transactions.

A state change and what it causes (events to publish, deadlines to schedule or
cancel) are written in the same single-document update: the effects go into
the document's `_outbox` array, with `_outbox_due` set a lease ahead. Right
after the write the writer applies them in order (publish with confirms,
upsert deadlines) and removes them. If the process dies in between, the
document still holds them; the sweeper of any instance finds it by
`_outbox_due` and applies them. So no event is lost, and none is published for
a change that was not stored.

Effects are applied at least once, deadline changes before events, each kind in
document order; consumers are idempotent on the event id and deadline upserts
on the deadline id. Entries are stored as JSON strings so that what we remove is
byte-for-byte what we read.

Without a fault each effect is applied once, even with several instances on one
document. Each entry names the write that staged it (`writer`, a token) and
when that writer's lease ends (`until`, real time). A writer applies its own
entries and those whose lease ran out (their writer died); entries a live
writer staged before it are that writer's to publish, so it waits until they
are cleared, and its own go out after them, in document order. A writer that
replaces the whole document adds `guard(doc)` to its filter: otherwise it could
write back entries that another instance published and cleared after the read.
The sweeper takes only documents whose every lease ran out.

Finding what a dead writer left needs a query on `_outbox_due`: an index lookup on
MongoDB (and on the embedded store, whose indexes are kept in memory), but a scan
of every outbox collection on a store that ignores secondary indexes, so the
sweeper does not run it every few seconds. Each
instance's run keeps a record in `outbox_instances` (`alive_until`, renewed every
`sweep_interval`) and remembers the documents whose flush failed (broker down):
every `sweep_interval` it retries those by `_id` and looks for records of runs
that stopped renewing. A full sweep runs at start-up, once a dead run's last
leases have ended (one instance claims the record), and every
`full_sweep_interval` as a safety net. A clean stop removes the record, unless
flushes it could not do remain: then the record runs out and another instance
(or the next start) sweeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from pymongo import UpdateOne

from core.batching import Outcome
from core.bus import Bus
from core.clock import utcnow
from core.locks import KeyedLocks
from core.messages import Envelope
from core.metrics import Metrics
from core.scheduler import Deadline, Scheduler
from core.settings import OutboxSettings
from core.store import Store

log = structlog.get_logger("rescenter.outbox")

#: one record per running instance (per process run): how long it is known to be alive
INSTANCES = "outbox_instances"
#: a run is alive until this many sweep intervals after its last renewal
ALIVE_INTERVALS = 3


@dataclass(frozen=True)
class Effect:
    kind: Literal["publish", "schedule", "cancel"]
    id: str
    body: str

    @classmethod
    def publish(cls, envelope: Envelope) -> Effect:
        return cls("publish", envelope.id, envelope.model_dump_json(exclude_none=True))

    @classmethod
    def schedule(cls, deadline: Deadline) -> Effect:
        return cls("schedule", deadline.id, deadline.model_dump_json())

    @classmethod
    def cancel(cls, deadline_id: str) -> Effect:
        return cls("cancel", deadline_id, json.dumps({"id": deadline_id}))

    def entry(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "body": self.body}


#: the write this task staged last: its flush knows its own entries by this token (a write
#: that staged nothing owns none, and leaves every live writer's entries to that writer)
_last_write: ContextVar[str | None] = ContextVar("rescenter_outbox_last_write", default=None)

#: how often a writer looks whether the entries an earlier live writer staged are cleared
#: (doubling from the first to the last)
WAIT_STEPS = (0.005, 0.05)


def _lease_end(entry: dict[str, str]) -> datetime:
    """When the writer of an entry stops being trusted to apply it (entries written before
    writers were named have no lease: anyone may apply them)."""
    until = entry.get("until")
    return datetime.fromisoformat(until) if until else datetime.min.replace(tzinfo=UTC)


class Outbox:
    def __init__(
        self, store: Store, bus: Bus, scheduler: Scheduler, settings: OutboxSettings, metrics: Metrics
    ) -> None:
        self.store = store
        self.bus = bus
        self.scheduler = scheduler
        self.settings = settings
        self.metrics = metrics
        self.collections: set[str] = set()
        self._locks = KeyedLocks()
        self._task: asyncio.Task[None] | None = None
        self.instance = ""
        #: this run's record in INSTANCES
        self.run_id = uuid.uuid4().hex
        #: documents whose flush failed here, retried by `_id` until they are clear
        self._deferred: set[tuple[str, Any]] = set()
        self._next_full_sweep: datetime | None = None  # real time; None: at the next round

    def register(self, collection: str) -> None:
        self.collections.add(collection)

    async def create_indexes(self) -> None:
        for name in self.collections:
            await self.store.collection(name).create_index("_outbox_due", sparse=True)

    def _entries(self, effects: Iterable[Effect]) -> tuple[list[dict[str, str]], datetime]:
        """The entries of one write, each naming that write and the end of its lease."""
        due = utcnow() + self.settings.lease
        writer = uuid.uuid4().hex[:16]
        entries = [{**effect.entry(), "writer": writer, "until": due.isoformat()} for effect in effects]
        _last_write.set(writer if entries else None)
        return entries, due

    def stage(self, update: dict[str, Any], effects: Iterable[Effect]) -> dict[str, Any]:
        """Add `effects` to an update so they are stored with the change."""
        entries, due = self._entries(effects)
        if not entries:
            return update
        update.setdefault("$push", {})["_outbox"] = {"$each": entries}
        update.setdefault("$set", {})["_outbox_due"] = due
        return update

    def append(self, doc: dict[str, Any], effects: Iterable[Effect]) -> dict[str, Any]:
        """Add `effects` to a whole document about to replace the stored one (write it with
        `guard(doc)` in the filter)."""
        entries, due = self._entries(effects)
        if entries:
            doc["_outbox"] = [*doc.get("_outbox", []), *entries]
            doc["_outbox_due"] = due
        return doc

    def initial(self, effects: Iterable[Effect]) -> dict[str, Any]:
        """Fields for a document inserted together with its effects."""
        entries, due = self._entries(effects)
        fields: dict[str, Any] = {"_outbox": entries}
        if entries:
            fields["_outbox_due"] = due
        return fields

    @staticmethod
    def guard(read: dict[str, Any]) -> dict[str, Any]:
        """A filter that holds while the stored outbox is still the one in `read`.

        A writer that replaces the whole document (built from `read`) adds it to its
        guard: if another instance published and cleared its entries after the read,
        the replacement would store them again and they would be published twice."""
        return {"_outbox": read["_outbox"]} if "_outbox" in read else {"_outbox": {"$exists": False}}

    async def flush(self, collection: str, doc: dict[str, Any]) -> None:
        """Apply the pending effects of `doc` (as its writer just wrote it) in order, then
        remove them. Those an earlier writer staged and still holds are left to it."""
        entries = doc.get("_outbox") or []
        if not entries:
            return
        try:
            entries = await self._after_earlier_writers(collection, doc["_id"], entries, _last_write.get())
            if not entries:
                return
            async with self._locks.hold(f"{collection}/{doc['_id']}"):
                await self._apply_and_clear(collection, doc["_id"], entries)
        except BaseException:
            # Stored but not (all) applied, whatever stopped it (an error, or a cancellation
            # when the consumer's channel closed): this instance retries it once its lease ends.
            self._deferred.add((collection, doc["_id"]))
            raise

    async def _after_earlier_writers(self, collection: str, doc_id: Any, entries: list[dict[str, str]],
                                     mine: str | None) -> list[dict[str, str]]:
        """Wait until the entries that other live writers staged before ours (`mine`: the
        token of this task's write) are cleared: they publish them, and ours must follow.
        Return what is left for us to apply: ours, and theirs if their lease ran out first
        (they died)."""
        delay = WAIT_STEPS[0]
        while any(e.get("writer") != mine and _lease_end(e) > utcnow() for e in entries):
            stored = await self.store.batcher(collection).find_by_id(doc_id, {"_outbox": 1})
            present = (stored or {}).get("_outbox") or []
            entries = [e for e in entries if e in present]
            if any(e.get("writer") != mine and _lease_end(e) > utcnow() for e in entries):
                await asyncio.sleep(delay)
                delay = min(delay * 2, WAIT_STEPS[1])
        return entries

    async def _apply_and_clear(self, collection: str, doc_id: Any, entries: list[dict[str, str]]) -> None:
        batcher = self.store.batcher(collection)
        await self._apply_all(entries)
        # Cleared only if the outbox still holds exactly what we applied (a guarded
        # upsert: core.batching); it shares a round trip with other writers' clears.
        cleared = await batcher.write(UpdateOne(
            {"_id": doc_id, "_outbox": entries},
            {"$set": {"_outbox": []}, "$unset": {"_outbox_due": ""}},
            upsert=True,
        ))
        if cleared is Outcome.CONFLICT:
            # More was appended meanwhile (or another instance finished first):
            # remove ours; whoever appended, or the sweeper, applies the rest.
            await batcher.write(UpdateOne({"_id": doc_id}, {"$pullAll": {"_outbox": entries}}))

    async def _apply_all(self, entries: list[dict[str, str]]) -> None:
        """The deadline changes first, then the events, each kind in document order: whoever
        acts on an event finds the deadlines already as the change left them (a buyer who
        accepts on `order.delivered` cancels an auto-completion that is already scheduled;
        a clock moved on `order.delivery_extended` finds the late deadline moved). A run of
        deadline changes, each on a different deadline, goes to the store together."""
        run: dict[str, dict[str, str]] = {}
        for entry in entries:
            if entry["kind"] not in ("schedule", "cancel"):
                continue
            if entry["id"] in run:  # the same deadline again: after the first change
                await asyncio.gather(*(self._apply(e) for e in run.values()))
                run = {}
            run[entry["id"]] = entry
        await asyncio.gather(*(self._apply(e) for e in run.values()))
        for entry in entries:
            if entry["kind"] not in ("schedule", "cancel"):
                await self._apply(entry)

    async def _apply(self, entry: dict[str, str]) -> None:
        if entry["kind"] == "publish":
            await self.bus.publish(Envelope.model_validate_json(entry["body"]))
        elif entry["kind"] == "schedule":
            await self.scheduler.schedule(Deadline.model_validate_json(entry["body"]))
        elif entry["kind"] == "cancel":
            await self.scheduler.cancel(entry["id"])
        else:  # written by a newer version of the service: keep it for that version
            raise ValueError(f"unknown outbox entry kind {entry['kind']!r}")

    async def sweep_once(self, limit: int = 100) -> int:
        """Apply what writers left behind (crash, broker down), in every registered
        collection: a full sweep. Returns documents handled."""
        handled = 0
        for name in sorted(self.collections):
            now = utcnow()
            # Read the ids first, then claim each: no cursor stays open across the writes.
            stale = await self.store.collection(name).find(
                {"_outbox_due": {"$lte": now}}, {"_id": 1}).limit(limit).to_list()
            for doc in stale:
                await self._sweep_doc(name, doc["_id"], now)
                handled += 1
        return handled

    async def _sweep_doc(self, name: str, doc_id: Any, now: datetime) -> bool:
        """Claim one document whose leases all ended and apply what it holds. False if it
        is not due (a writer's lease still runs) or another instance took it."""
        col = self.store.collection(name)
        # Claimed under this process's lock on the document: a writer of ours still
        # flushing it (past its lease) finishes first, and we read what it left.
        async with self._locks.hold(f"{name}/{doc_id}"):
            claimed = await col.find_one_and_update(
                {"_id": doc_id, "_outbox_due": {"$lte": now}},
                {"$set": {"_outbox_due": now + self.settings.lease}},
                return_document=True,
            )
            if claimed is None:
                return False  # another instance took it, a writer cleared it, or not due yet
            if claimed.get("_outbox"):
                await self._apply_and_clear(name, doc_id, claimed["_outbox"])
                self.metrics.outbox_swept.inc()
                log.info("swept pending effects", collection=name, doc_id=str(doc_id),
                         effects=len(claimed["_outbox"]))
            else:
                await col.update_one({"_id": doc_id, "_outbox": {"$size": 0}}, {"$unset": {"_outbox_due": ""}})
            return True

    async def retry_deferred(self) -> None:
        """Apply again what this instance stored but could not flush, by `_id`."""
        for name, doc_id in sorted(self._deferred, key=repr):
            doc = await self.store.batcher(name).find_by_id(doc_id, {"_outbox": 1, "_outbox_due": 1})
            if not (doc or {}).get("_outbox"):
                self._deferred.discard((name, doc_id))  # cleared (by us, a later writer or a sweep)
                continue
            if await self._sweep_doc(name, doc_id, utcnow()):
                self._deferred.discard((name, doc_id))

    async def _renew(self) -> None:
        alive = ALIVE_INTERVALS * self.settings.sweep_interval
        await self.store.collection(INSTANCES).update_one(
            {"_id": self.run_id},
            {"$set": {"instance": self.instance, "alive_until": utcnow() + alive}},
            upsert=True,
        )

    async def _bury_dead_runs(self) -> bool:
        """Claim the records of runs that stopped renewing once their last leases ended
        (of several instances, one claims each). True if there was any."""
        col = self.store.collection(INSTANCES)
        buried = False
        for dead in await col.find({"alive_until": {"$lte": utcnow() - self.settings.lease}}).to_list():
            if (await col.delete_one({"_id": dead["_id"], "alive_until": dead["alive_until"]})).deleted_count:
                log.warning("an instance stopped without a clean stop; sweeping what it left",
                            dead_instance=dead.get("instance"), alive_until=dead["alive_until"].isoformat())
                buried = True
        return buried

    async def round(self) -> None:
        """One round of the sweeper: renew, retry our deferred flushes, sweep fully if
        a run died or the safety-net interval passed."""
        await self._renew()
        await self.retry_deferred()
        now = utcnow()
        if await self._bury_dead_runs() or self._next_full_sweep is None or now >= self._next_full_sweep:
            self._next_full_sweep = now + self.settings.full_sweep_interval
            self.metrics.outbox_full_sweeps.inc()
            while await self.sweep_once() > 0:
                pass  # more than one page was due

    async def run(self) -> None:
        interval = self.settings.sweep_interval.total_seconds()
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox sweep failed; will retry", error=repr(exc))
            await asyncio.sleep(interval)

    def start(self, instance: str = "") -> None:
        self.instance = instance
        self._task = asyncio.create_task(self.run(), name="outbox-sweeper")

    async def stop(self, *, retire: bool = True) -> None:
        """Stop sweeping. `retire`: a clean stop removes this run's record, so that no one
        sweeps after it, unless flushes it could not do remain (they are left to the
        instance that finds the record run out). `retire=False` is a crash (tests)."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            if retire and not self._deferred:
                with contextlib.suppress(Exception):
                    await self.store.collection(INSTANCES).delete_one({"_id": self.run_id})


__all__ = ["Effect", "Outbox"]
