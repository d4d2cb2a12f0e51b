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

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

#: how many message ids a document remembers to refuse a redelivery
APPLIED_KEEP = 200


class Store:
    def __init__(self, url: str, database: str) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=5000, appname="rescenter"
        )
        self.db: AsyncDatabase[dict[str, Any]] = self.client[database]

    def collection(self, name: str) -> AsyncCollection[dict[str, Any]]:
        return self.db[name]

    async def ping(self) -> None:
        await self.db.command("ping")

    async def close(self) -> None:
        await self.client.close()


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
