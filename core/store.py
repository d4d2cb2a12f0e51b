"""MongoDB access through PyMongo's native asyncio API (`AsyncMongoClient`).

Every state change is one atomic single-document update, guarded by the
document's `_version` and, when a message caused it, by the message id kept in
the document's `_applied` list (idempotent handlers). FerretDB 1.x has no
multi-document transactions; none are needed: the events and deadlines a change
causes ride in the same document (`_outbox`, see core.outbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.results import UpdateResult

from core.locks import KeyedLocks

log = structlog.get_logger("rescenter.store")

#: how many message ids a document remembers to refuse a redelivery
APPLIED_KEEP = 200


class Store:
    """A database handle. `connect()` picks the client.

    FerretDB 1.x runs a conditional update as a query followed by a separate
    write, without isolation between concurrent requests (upstream issue
    FerretDB#3040): two connections can both "win" the same version guard, and
    concurrent `$inc`s are lost. A single connection processes one request at a
    time, so against FerretDB every Store of this process shares one client with
    one connection: each operation is then atomic, as on MongoDB. Across
    processes FerretDB 1.x cannot give that; run several instances on MongoDB
    (each instance then has its own pool).

    FerretDB's SQLite backend also reads a whole collection for any filter but
    a bare `{"_id": ...}` (no other pushdown), so a guarded update would cost a
    scan of every document. `collection()` therefore hands out a
    `GuardedCollection` that, on FerretDB, runs such writes as a read by `_id`,
    the guard checked here, and a write by `_id`, under a per-document lock of
    this process: the same outcome, two indexed round trips instead of a scan.
    """

    _shared: dict[str, tuple[AsyncMongoClient[dict[str, Any]], int]] = {}
    _document_locks = KeyedLocks()

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        self.db: AsyncDatabase[dict[str, Any]] | None = None
        self.serialized = False

    async def connect(self) -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.url, tz_aware=True, serverSelectionTimeoutMS=5000, appname="rescenter"
        )
        info = await client.admin.command("buildInfo")
        if "ferretdbVersion" in info:
            await client.close()
            shared, users = Store._shared.get(self.url, (None, 0))
            if shared is None:
                shared = AsyncMongoClient(
                    self.url, tz_aware=True, serverSelectionTimeoutMS=5000, appname="rescenter",
                    maxPoolSize=1,
                )
                log.warning("FerretDB detected: database operations of this process go through one "
                            "connection, the only way FerretDB 1.x keeps an update atomic",
                            ferretdb=info["ferretdbVersion"])
            Store._shared[self.url] = (shared, users + 1)
            client, self.serialized = shared, True
        self.client = client
        self.db = client[self.database]

    def collection(self, name: str) -> GuardedCollection:
        if self.db is None:
            raise RuntimeError("Store.connect() first")
        return GuardedCollection(self.db[name], self._document_locks if self.serialized else None)

    async def ping(self) -> None:
        if self.db is None:
            raise RuntimeError("Store.connect() first")
        await self.db.command("ping")

    async def close(self) -> None:
        if self.client is None:
            return
        client, self.client, self.db = self.client, None, None
        if self.serialized:
            shared, users = Store._shared[self.url]
            if users > 1:
                Store._shared[self.url] = (shared, users - 1)
                return
            del Store._shared[self.url]
        await client.close()


class GuardedCollection:
    """An `AsyncCollection` whose single-document writes stay indexed on FerretDB.

    On MongoDB (`locks` None) every call goes straight to PyMongo. On FerretDB,
    `update_one` and `find_one_and_update` with a filter of `_id` plus guards
    (`_version`, `_applied`, a state, ...) read the document by `_id`, check
    the guards with `matches`, and write by `_id`, holding the document's lock;
    every write by `_id` takes that lock, so no write of this process slips in
    between the check and the write.
    """

    def __init__(self, collection: AsyncCollection[dict[str, Any]], locks: KeyedLocks | None) -> None:
        self.raw = collection
        self._locks = locks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def _key(self, filter: Mapping[str, Any]) -> str | None:
        if self._locks is None or "_id" not in filter or isinstance(filter["_id"], Mapping):
            return None
        return f"{self.raw.full_name}/{filter['_id']!r}"

    async def _guards_hold(self, filter: Mapping[str, Any], *, upsert: bool) -> bool:
        """The document (read by `_id`) satisfies the filter's other fields; call under its lock."""
        guards = {k: v for k, v in filter.items() if k != "_id"}
        if not guards:
            return True
        if upsert:
            raise NotImplementedError("upsert with guards on FerretDB")
        current = await self.raw.find_one({"_id": filter["_id"]})
        return current is not None and matches(current, guards)

    async def update_one(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], *, upsert: bool = False
    ) -> UpdateResult:
        key = self._key(filter)
        if key is None or self._locks is None:
            return await self.raw.update_one(filter, update, upsert=upsert)
        async with self._locks.hold(key):
            if not await self._guards_hold(filter, upsert=upsert):
                return UpdateResult({"n": 0, "nModified": 0}, acknowledged=True)
            return await self.raw.update_one({"_id": filter["_id"]}, update, upsert=upsert)

    async def find_one_and_update(
        self,
        filter: Mapping[str, Any],
        update: Mapping[str, Any],
        *,
        return_document: bool = ReturnDocument.BEFORE,
        upsert: bool = False,
    ) -> dict[str, Any] | None:
        key = self._key(filter)
        if key is None or self._locks is None:
            return await self.raw.find_one_and_update(
                filter, update, return_document=return_document, upsert=upsert
            )
        async with self._locks.hold(key):
            if not await self._guards_hold(filter, upsert=upsert):
                return None
            return await self.raw.find_one_and_update(
                {"_id": filter["_id"]}, update, return_document=return_document, upsert=upsert
            )


_MISSING = object()


def _get(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _equal(value: Any, wanted: Any) -> bool:
    if value is _MISSING:
        return wanted is None
    if value == wanted:
        return True
    # an array field matches a scalar it contains, as in MongoDB
    return isinstance(value, list) and not isinstance(wanted, list) and wanted in value


def _compare(value: Any, op: str, bound: Any) -> bool:
    if value is _MISSING or value is None:
        return False
    if isinstance(value, datetime) != isinstance(bound, datetime):
        return False
    try:
        return {"$lt": value < bound, "$lte": value <= bound, "$gt": value > bound,
                "$gte": value >= bound}[op]
    except TypeError:
        return False


def matches(doc: Mapping[str, Any], guards: Mapping[str, Any]) -> bool:
    """Whether `doc` satisfies a filter, for the operators our writes use as guards.

    MongoDB semantics for equality (an array matches an element), `$ne`,
    `$in`, `$nin`, `$lt`/`$lte`/`$gt`/`$gte`, `$exists` and `$size`; any other
    operator raises, so a new kind of guard cannot be silently ignored.
    """
    for path, condition in guards.items():
        value = _get(doc, path)
        if isinstance(condition, Mapping) and condition and all(k.startswith("$") for k in condition):
            for op, operand in condition.items():
                if op == "$ne":
                    ok = not _equal(value, operand)
                elif op == "$in":
                    ok = any(_equal(value, item) for item in operand)
                elif op == "$nin":
                    ok = not any(_equal(value, item) for item in operand)
                elif op in ("$lt", "$lte", "$gt", "$gte"):
                    ok = _compare(value, op, operand)
                elif op == "$exists":
                    ok = (value is not _MISSING) == bool(operand)
                elif op == "$size":
                    ok = isinstance(value, list) and len(value) == operand
                else:
                    raise NotImplementedError(f"guard operator {op} is not supported")
                if not ok:
                    return False
        elif not _equal(value, condition):
            return False
    return True


def guarded_update(
    update: Mapping[str, Any], *, message_id: str | None = None
) -> dict[str, Any]:
    """Add the version bump and the applied-message mark to an update."""
    merged: dict[str, Any] = {op: dict(fields) for op, fields in update.items()}
    merged.setdefault("$inc", {})["_version"] = 1
    if message_id is not None:
        merged.setdefault("$push", {})["_applied"] = {"$each": [message_id], "$slice": -APPLIED_KEEP}
    return merged


def guard_filter(
    doc_id: Any, *, version: int | None = None, message_id: str | None = None
) -> dict[str, Any]:
    query: dict[str, Any] = {"_id": doc_id}
    if version is not None:
        query["_version"] = version
    if message_id is not None:
        query["_applied"] = {"$ne": message_id}
    return query


async def update_guarded(
    collection: GuardedCollection,
    doc_id: Any,
    update: Mapping[str, Any],
    *,
    version: int | None,
    message_id: str | None = None,
) -> dict[str, Any] | None:
    """Apply `update` if the document is still at `version` and has not seen
    `message_id`; return the new document, or None when a guard failed."""
    return await collection.find_one_and_update(
        guard_filter(doc_id, version=version, message_id=message_id),
        guarded_update(update, message_id=message_id),
        return_document=ReturnDocument.AFTER,
    )
