"""MongoDB access through PyMongo's native asyncio API (`AsyncMongoClient`).

Every state change is one atomic single-document update, guarded by the
document's `_version` and, when a message caused it, by the message id kept in
the document's `_applied` list (idempotent handlers). FerretDB 1.x has no
multi-document transactions; none are needed: the events and deadlines a change
causes ride in the same document (`_outbox`, see core.outbox).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

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
    """

    _shared: dict[str, tuple[AsyncMongoClient[dict[str, Any]], int]] = {}

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

    def collection(self, name: str) -> AsyncCollection[dict[str, Any]]:
        if self.db is None:
            raise RuntimeError("Store.connect() first")
        return self.db[name]

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
    collection: AsyncCollection[dict[str, Any]],
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
