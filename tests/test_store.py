"""The store's guarded single-document writes, on the real MongoDB-wire server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.settings import load_settings
from core.store import Store, matches, update_guarded

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("doc", "guards", "expected"),
    [
        ({"_version": 3}, {"_version": 3}, True),
        ({"_version": 3}, {"_version": 4}, False),
        ({}, {"_version": None}, True),  # a missing field equals null, as in MongoDB
        ({"_applied": ["m1", "m2"]}, {"_applied": {"$ne": "m3"}}, True),
        ({"_applied": ["m1", "m2"]}, {"_applied": {"$ne": "m2"}}, False),  # a redelivery
        ({"state": "pending"}, {"state": {"$in": ["pending", "claimed"]}}, True),
        ({"state": "done"}, {"state": {"$nin": ["pending", "claimed"]}}, True),
        ({"due": NOW}, {"due": {"$lte": NOW}}, True),
        ({"due": NOW}, {"due": {"$lt": NOW}}, False),
        ({}, {"due": {"$lte": NOW}}, False),  # a missing field is not "before"
        ({"due": "2026"}, {"due": {"$lte": NOW}}, False),  # no comparison across types
        ({"_outbox": []}, {"_outbox": {"$size": 0}}, True),
        ({"_outbox": [{"id": "e1"}]}, {"_outbox": [{"id": "e1"}]}, True),
        ({"_outbox": [{"id": "e1"}, {"id": "e2"}]}, {"_outbox": [{"id": "e1"}]}, False),
        ({"a": {"b": 2}}, {"a.b": 2, "a.c": {"$exists": False}}, True),
    ],
)
def test_guards_follow_mongodb_semantics(doc: dict[str, Any], guards: dict[str, Any], expected: bool) -> None:
    assert matches(doc, guards) is expected


def test_an_unknown_guard_operator_is_refused_rather_than_ignored() -> None:
    with pytest.raises(NotImplementedError, match=r"\$regex"):
        matches({"name": "x"}, {"name": {"$regex": "x"}})


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
