"""Transactional outbox without transactions.

A state change and what it causes (events to publish, deadlines to schedule or
cancel) are written in the same single-document update: the effects go into
the document's `_outbox` array, with `_outbox_due` set a lease ahead. Right
after the write the writer applies them in order (publish with confirms,
upsert deadlines) and removes them. If the process dies in between, the
document still holds them; the sweeper of any instance finds it by
`_outbox_due` and applies them. So no event is lost, and none is published for
a change that was not stored.

Effects are applied at least once, in document order; consumers are idempotent
on the event id and deadline upserts on the deadline id. Entries are stored as
JSON strings so that what we remove is byte-for-byte what we read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from pymongo import UpdateOne

from core.batching import Outcome
from core.bus import Bus
from core.locks import KeyedLocks
from core.messages import Envelope
from core.metrics import Metrics
from core.scheduler import Deadline, Scheduler
from core.settings import OutboxSettings
from core.store import Store

log = structlog.get_logger("rescenter.outbox")


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


def _real_now() -> datetime:
    return datetime.now(UTC)


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

    def register(self, collection: str) -> None:
        self.collections.add(collection)

    async def create_indexes(self) -> None:
        for name in self.collections:
            await self.store.collection(name).create_index("_outbox_due", sparse=True)

    def stage(self, update: dict[str, Any], effects: Iterable[Effect]) -> dict[str, Any]:
        """Add `effects` to an update so they are stored with the change."""
        entries = [effect.entry() for effect in effects]
        if not entries:
            return update
        update.setdefault("$push", {})["_outbox"] = {"$each": entries}
        update.setdefault("$set", {})["_outbox_due"] = _real_now() + self.settings.lease
        return update

    def append(self, doc: dict[str, Any], effects: Iterable[Effect]) -> dict[str, Any]:
        """Add `effects` to a whole document about to replace the stored one."""
        entries = [effect.entry() for effect in effects]
        if entries:
            doc["_outbox"] = [*doc.get("_outbox", []), *entries]
            doc["_outbox_due"] = _real_now() + self.settings.lease
        return doc

    def initial(self, effects: Iterable[Effect]) -> dict[str, Any]:
        """Fields for a document inserted together with its effects."""
        entries = [effect.entry() for effect in effects]
        fields: dict[str, Any] = {"_outbox": entries}
        if entries:
            fields["_outbox_due"] = _real_now() + self.settings.lease
        return fields

    async def flush(self, collection: str, doc: dict[str, Any]) -> None:
        """Apply the document's pending effects in order, then remove them."""
        entries = doc.get("_outbox") or []
        if not entries:
            return
        batcher = self.store.batcher(collection)
        async with self._locks.hold(f"{collection}/{doc['_id']}"):
            await self._apply_all(entries)
            # Cleared only if the outbox still holds exactly what we applied (a guarded
            # upsert: core.batching); it shares a round trip with other writers' clears.
            cleared = await batcher.write(UpdateOne(
                {"_id": doc["_id"], "_outbox": entries},
                {"$set": {"_outbox": []}, "$unset": {"_outbox_due": ""}},
                upsert=True,
            ))
            if cleared is Outcome.CONFLICT:
                # More was appended meanwhile (or another instance finished first):
                # remove ours; whoever appended, or the sweeper, applies the rest.
                await batcher.write(UpdateOne({"_id": doc["_id"]}, {"$pullAll": {"_outbox": entries}}))

    async def _apply_all(self, entries: list[dict[str, str]]) -> None:
        """Apply in document order. A run of deadline changes, each on a different
        deadline, goes to the store together (their order cannot matter)."""
        run: dict[str, dict[str, str]] = {}
        for entry in entries:
            if entry["kind"] in ("schedule", "cancel") and entry["id"] not in run:
                run[entry["id"]] = entry
                continue
            await asyncio.gather(*(self._apply(e) for e in run.values()))
            run = {}
            if entry["kind"] in ("schedule", "cancel"):
                run[entry["id"]] = entry
            else:
                await self._apply(entry)
        await asyncio.gather(*(self._apply(e) for e in run.values()))

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
        """Apply what writers left behind (crash, broker down). Returns documents handled."""
        handled = 0
        for name in sorted(self.collections):
            col = self.store.collection(name)
            now = _real_now()
            # Read the ids first, then claim each: no cursor stays open across the writes.
            stale_docs = await col.find({"_outbox_due": {"$lte": now}}, {"_id": 1}).limit(limit).to_list()
            for stale in stale_docs:
                claimed = await col.find_one_and_update(
                    {"_id": stale["_id"], "_outbox_due": {"$lte": now}},
                    {"$set": {"_outbox_due": now + self.settings.lease}},
                    return_document=True,
                )
                if claimed is None:
                    continue  # another instance took it
                if claimed.get("_outbox"):
                    await self.flush(name, claimed)
                    self.metrics.outbox_swept.inc()
                    log.info("swept pending effects", collection=name, doc_id=str(stale["_id"]),
                             effects=len(claimed["_outbox"]))
                else:
                    await col.update_one(
                        {"_id": stale["_id"], "_outbox": {"$size": 0}}, {"$unset": {"_outbox_due": ""}}
                    )
                handled += 1
        return handled

    async def run(self) -> None:
        interval = self.settings.sweep_interval.total_seconds()
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox sweep failed; will retry", error=repr(exc))
            await asyncio.sleep(interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox-sweeper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


__all__ = ["Effect", "Outbox"]
