"""Group commit on the client side: single-document operations that concurrent
tasks send to one collection travel together, one round trip for many.

Handlers stay written one message at a time (`await batcher.write(op)`,
`await batcher.find_by_id(doc_id)`); while a round trip is in flight, what
other tasks ask for waits, then leaves together as one `bulk_write` (unordered)
or one `find` with `$in`. When the store is idle an operation leaves at once,
alone: batching adds no latency, it only takes what load offers.

Each operation keeps its own outcome. A bulk write reports per-operation
errors only, so a guarded write that must say whether it applied is written as
an *upsert whose filter holds the guard*: when the guard holds the document is
updated; when it fails, the server tries to insert a document with the same
`_id` and refuses it as a duplicate key, reported for that operation alone
(`Outcome.CONFLICT`). MongoDB and the embedded store both behave so. Use it
only on documents that exist (or whose creation by the upsert is wanted).
"""

from __future__ import annotations

import asyncio
import copy
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

log = structlog.get_logger("rescenter.batching")

WriteOp = InsertOne[Any] | UpdateOne | ReplaceOne[Any] | DeleteOne
DUPLICATE_KEY = 11000
#: operations per round trip at most; the driver splits larger batches anyway
MAX_BATCH = 1000


class Outcome(enum.Enum):
    APPLIED = "applied"
    #: refused as a duplicate `_id`: an insert of a document that exists, or a guarded
    #: upsert whose guard did not hold
    CONFLICT = "conflict"


@dataclass
class _Reads:
    projection: Mapping[str, Any] | None
    waiting: dict[Any, list[asyncio.Future[dict[str, Any] | None]]] = field(default_factory=dict)


class Batcher:
    """One collection's pending reads by `_id` and writes, sent a batch at a time."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self._writes: list[tuple[WriteOp, asyncio.Future[Outcome]]] = []
        self._reads: dict[str, _Reads] = {}
        self._writing: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ writes

    async def write(self, op: WriteOp) -> Outcome:
        """Send `op` with whatever else is pending; its own outcome (other errors raise)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._writes.append((op, future))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_loop(), name=f"batch-write-{self.collection.name}")
        return await future

    async def _write_loop(self) -> None:
        try:
            while self._writes:
                await asyncio.sleep(0)  # let tasks that are ready now add theirs
                batch, self._writes = self._writes[:MAX_BATCH], self._writes[MAX_BATCH:]
                await self._send(batch)
        finally:
            self._writing = None

    async def _send(self, batch: list[tuple[WriteOp, asyncio.Future[Outcome]]]) -> None:
        errors: dict[int, dict[str, Any]] = {}
        try:
            await self.collection.bulk_write([op for op, _ in batch], ordered=False)
        except BulkWriteError as exc:
            errors = {error["index"]: error for error in exc.details.get("writeErrors", [])}
            if exc.details.get("writeConcernErrors"):
                _fail_all(batch, exc)
                return
        except Exception as exc:  # the store is down, a timeout: nobody knows what was written
            _fail_all(batch, exc)
            return
        for index, (_op, future) in enumerate(batch):
            if future.done():
                continue
            error = errors.get(index)
            if error is None:
                future.set_result(Outcome.APPLIED)
            elif error.get("code") == DUPLICATE_KEY:
                future.set_result(Outcome.CONFLICT)
            else:
                future.set_exception(BulkWriteError({"writeErrors": [error], "nInserted": 0}))

    # ------------------------------------------------------------ reads

    async def find_by_id(self, doc_id: Any, projection: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The document with this `_id` (or None), read with whatever else is pending."""
        key = repr(sorted(projection.items())) if projection else ""
        reads = self._reads.setdefault(key, _Reads(projection))
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        reads.waiting.setdefault(doc_id, []).append(future)
        if self._reading is None:
            self._reading = asyncio.create_task(self._read_loop(), name=f"batch-read-{self.collection.name}")
        return await future

    async def _read_loop(self) -> None:
        try:
            while self._reads:
                await asyncio.sleep(0)
                key, reads = next(iter(self._reads.items()))
                ids = list(reads.waiting)[:MAX_BATCH]
                waiting = {doc_id: reads.waiting.pop(doc_id) for doc_id in ids}
                if not reads.waiting:
                    del self._reads[key]
                try:
                    found = {doc["_id"]: doc async for doc in self.collection.find(
                        {"_id": {"$in": ids}}, reads.projection)}
                except Exception as exc:
                    for futures in waiting.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for doc_id, futures in waiting.items():
                    for future in futures:
                        if not future.done():
                            # each caller gets its own copy: they may change what they read
                            doc = found.get(doc_id)
                            future.set_result(copy.deepcopy(doc) if len(futures) > 1 else doc)
        finally:
            self._reading = None


def _fail_all(batch: list[tuple[WriteOp, asyncio.Future[Outcome]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


__all__ = ["Batcher", "Outcome", "WriteOp"]
