"""The store's guarded single-document writes, on the real MongoDB-wire server.

These hold on MongoDB by design; they are here so that the embedded server
(or any other server `MONGODB_URL` names) is held to the same semantics.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.settings import load_settings
from core.store import Store, update_guarded

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store() -> Any:
    settings = load_settings()
    store = Store(settings.store.url, f"rescenter_test_store_{uuid.uuid4().hex[:8]}")
    await store.connect()
    yield store
    assert store.client is not None
    await store.client.drop_database(store.database)
    await store.close()


async def test_of_many_concurrent_writers_at_one_version_exactly_one_wins(store: Store) -> None:
    counters = store.collection("counters")
    await counters.insert_one({"_id": "c", "_version": 0, "n": 0})

    async def write(i: int) -> bool:
        done = await update_guarded(counters, "c", {"$inc": {"n": 1}, "$push": {"by": i}}, version=0)
        return done is not None

    won = await asyncio.gather(*(write(i) for i in range(40)))
    assert won.count(True) == 1
    doc = await counters.find_one({"_id": "c"})
    assert doc is not None and doc["n"] == 1 and doc["_version"] == 1 and len(doc["by"]) == 1


async def test_a_message_applied_once_is_refused_the_second_time(store: Store) -> None:
    docs = store.collection("docs")
    await docs.insert_one({"_id": "d", "n": 0})
    first = await update_guarded(docs, "d", {"$inc": {"n": 1}}, version=None, message_id="m-1")
    again = await update_guarded(docs, "d", {"$inc": {"n": 1}}, version=None, message_id="m-1")
    assert first is not None and first["n"] == 1
    assert again is None
    assert (await docs.find_one({"_id": "d"}) or {})["n"] == 1


async def test_concurrent_increments_under_a_guard_are_all_kept(store: Store) -> None:
    """Each writer re-reads and retries on a lost race: no increment is lost."""
    docs = store.collection("docs")
    await docs.insert_one({"_id": "d", "_version": 0, "n": 0})

    async def increment() -> None:
        while True:
            current = await docs.find_one({"_id": "d"})
            assert current is not None
            if await update_guarded(docs, "d", {"$inc": {"n": 1}}, version=current["_version"]):
                return

    await asyncio.gather(*(increment() for _ in range(30)))
    assert (await docs.find_one({"_id": "d"}) or {})["n"] == 30


async def test_a_guarded_update_one_reports_no_match_and_writes_nothing(store: Store) -> None:
    docs = store.collection("docs")
    await docs.insert_one({"_id": "d", "state": "cancelled", "due": NOW})
    result = await docs.update_one({"_id": "d", "state": "pending"}, {"$set": {"state": "claimed"}})
    assert result.matched_count == 0 and result.modified_count == 0
    result = await docs.update_one({"_id": "d", "due": {"$lte": NOW + timedelta(seconds=1)}},
                                   {"$set": {"seen": True}})
    assert result.matched_count == 1 and result.modified_count == 1
    assert (await docs.find_one({"_id": "d"})) == {"_id": "d", "state": "cancelled", "due": NOW, "seen": True}


async def test_guarded_increments_from_separate_clients_are_neither_lost_nor_doubled(store: Store) -> None:
    """Eight clients, each with its own connection pool (as separate processes
    have), race guarded read-modify-writes on one document: every win reported
    is stored, and nothing else is."""
    docs = store.collection("docs")
    await docs.insert_one({"_id": "d", "_version": 0, "n": 0, "by": []})
    clients = [Store(store.url, store.database) for _ in range(8)]
    for client in clients:
        await client.connect()

    async def writer(k: int, client: Store) -> int:
        col, won = client.collection("docs"), 0
        while won < 50:
            current = await col.find_one({"_id": "d"})
            assert current is not None
            if await update_guarded(col, "d", {"$inc": {"n": 1}, "$push": {"by": f"{k}-{won}"}},
                                    version=current["_version"]):
                won += 1
        return won

    try:
        wins = await asyncio.gather(*(writer(k, c) for k, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    doc = await docs.find_one({"_id": "d"})
    assert doc is not None
    assert sum(wins) == 400
    assert doc["n"] == 400 and doc["_version"] == 400 and len(set(doc["by"])) == 400


async def test_plain_increments_from_separate_clients_are_all_kept(store: Store) -> None:
    docs = store.collection("docs")
    await docs.insert_one({"_id": "d", "n": 0})
    clients = [Store(store.url, store.database) for _ in range(8)]
    for client in clients:
        await client.connect()

    async def writer(client: Store) -> None:
        for _ in range(100):
            await client.collection("docs").update_one({"_id": "d"}, {"$inc": {"n": 1}})

    try:
        await asyncio.gather(*(writer(c) for c in clients))
    finally:
        for client in clients:
            await client.close()
    assert (await docs.find_one({"_id": "d"}) or {})["n"] == 800
