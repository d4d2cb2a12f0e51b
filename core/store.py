"""MongoDB access through PyMongo's native asyncio API (`AsyncMongoClient`).

Every state change is one atomic single-document update, guarded by the
document's `_version` and, when a message caused it, by the message id kept in
the document's `_applied` list (idempotent handlers): a single `update_one` or
`find_one_and_update` with the guard in its filter, which MongoDB (and the
embedded server used in development) applies atomically, whatever the number
of connections or processes. No multi-document transaction is needed: the
events and deadlines a change causes ride in the same document (`_outbox`, see
core.outbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from core.batching import Batcher

if TYPE_CHECKING:
    from core.metrics import Metrics

log = structlog.get_logger("rescenter.store")

#: how many message ids a document remembers to refuse a redelivery
APPLIED_KEEP = 200

Collection = AsyncCollection[dict[str, Any]]


def unreachable(exc: BaseException) -> bool:
    """The store did not answer (down, restarting, no primary elected yet): an outage, not
    the fault of whatever was being done."""
    return isinstance(exc, ConnectionFailure) or (
        exc.__cause__ is not None and exc.__cause__ is not exc and unreachable(exc.__cause__))


class Store:
    """A database handle over one client with its own connection pool.

    Write concern, read preference and pool size come from the URL
    (`?w=majority&readPreference=primary&maxPoolSize=...`), so that an
    operator sets them where MongoDB's documentation says, without a setting
    of ours in between.
    """

    def __init__(self, url: str, database: str, *, metrics: Metrics | None = None) -> None:
        self.url = url
        self.database = database
        self.metrics = metrics
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        self.db: AsyncDatabase[dict[str, Any]] | None = None
        self._batchers: dict[str, Batcher] = {}

    async def connect(self) -> None:
        listeners = [_CommandCounter(self.metrics)] if self.metrics is not None else []
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.url, tz_aware=True, serverSelectionTimeoutMS=5000, appname="rescenter",
            event_listeners=listeners,
        )
        try:
            info = await client.admin.command("buildInfo")
        except BaseException:
            await client.close()
            raise
        log.info("store connected", database=self.database, server_version=info.get("version"))
        self.client = client
        self.db = client[self.database]

    def collection(self, name: str) -> Collection:
        if self.db is None:
            raise RuntimeError("Store.connect() first")
        return self.db[name]

    def batcher(self, name: str) -> Batcher:
        """The collection's group commit (core.batching): concurrent single-document
        reads and writes share round trips."""
        if name not in self._batchers:
            self._batchers[name] = Batcher(self.collection(name))
        return self._batchers[name]

    async def ping(self) -> None:
        if self.db is None:
            raise RuntimeError("Store.connect() first")
        await self.db.command("ping")

    async def close(self) -> None:
        if self.client is None:
            return
        client, self.client, self.db = self.client, None, None
        self._batchers.clear()
        await client.close()


class _CommandCounter(CommandListener):
    """Counts every command sent to the store (each one is a round trip) in Prometheus:
    `rescenter_store_commands_total{command, collection}`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def started(self, event: CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        collection = target if isinstance(target, str) else ""
        self.metrics.store_commands.labels(event.command_name, collection).inc()

    def succeeded(self, event: CommandSucceededEvent) -> None:
        self.metrics.store_seconds.labels(event.command_name).observe(event.duration_micros / 1e6)

    def failed(self, event: CommandFailedEvent) -> None:
        self.metrics.store_seconds.labels(event.command_name).observe(event.duration_micros / 1e6)


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
    collection: Collection,
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
