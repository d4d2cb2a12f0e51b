"""Group commit on the client (core.batching), on the real MongoDB-wire server:
concurrent callers share round trips, and each still gets its own outcome."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from pymongo import InsertOne, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from core.batching import Outcome
from core.metrics import Metrics
from core.settings import load_settings
from core.store import Store


@pytest.fixture
async def store() -> Any:
    settings = load_settings()
    store = Store(settings.store.url, f"rescenter_test_batch_{uuid.uuid4().hex[:8]}", metrics=Metrics())
    await store.connect()
    yield store
    assert store.client is not None
    await store.client.drop_database(store.database)
    await store.close()


def sent(store: Store, command: str, collection: str) -> float:
    assert store.metrics is not None
    return store.metrics.store_commands.labels(command, collection)._value.get()


async def test_concurrent_reads_by_id_share_one_round_trip_and_each_gets_its_document(store: Store) -> None:
    await store.collection("docs").insert_many([{"_id": f"d{i}", "n": i} for i in range(30)])
    batcher = store.batcher("docs")
    before = sent(store, "find", "docs")
    wanted = [f"d{i}" for i in range(0, 40, 2)]  # d30.. do not exist
    found = await asyncio.gather(*(batcher.find_by_id(doc_id) for doc_id in wanted))
    assert [doc["n"] if doc else None for doc in found] == [i if i < 30 else None for i in range(0, 40, 2)]
    assert sent(store, "find", "docs") - before == 1


async def test_two_callers_of_one_id_get_copies_they_may_change_alone(store: Store) -> None:
    await store.collection("docs").insert_one({"_id": "d", "tags": []})
    a, b = await asyncio.gather(store.batcher("docs").find_by_id("d"), store.batcher("docs").find_by_id("d"))
    assert a is not None and b is not None
    a["tags"].append("mine")
    assert b["tags"] == []


async def test_concurrent_writes_share_one_round_trip_and_each_keeps_its_own_outcome(store: Store) -> None:
    docs = store.collection("docs")
    await docs.insert_many([{"_id": "v1", "_version": 1}, {"_id": "v2", "_version": 2}, {"_id": "taken"},
                            {"_id": "text", "n": "not a number"}])
    batcher = store.batcher("docs")
    before = sent(store, "update", "docs") + sent(store, "insert", "docs")
    outcomes = await asyncio.gather(
        # guard holds: applied
        batcher.write(ReplaceOne({"_id": "v1", "_version": 1}, {"_version": 2, "by": "a"}, upsert=True)),
        # guard fails (the document moved on): a conflict, and the document is left alone
        batcher.write(ReplaceOne({"_id": "v2", "_version": 1}, {"_version": 2, "by": "b"}, upsert=True)),
        # an insert of an _id that exists: a conflict
        batcher.write(InsertOne({"_id": "taken"})),
        batcher.write(InsertOne({"_id": "new"})),
        # an error of its own (not a duplicate key): raised to its caller only
        batcher.write(UpdateOne({"_id": "text"}, {"$inc": {"n": 1}})),
        return_exceptions=True,
    )
    assert outcomes[:4] == [Outcome.APPLIED, Outcome.CONFLICT, Outcome.CONFLICT, Outcome.APPLIED]
    assert isinstance(outcomes[4], BulkWriteError)
    stored = {d["_id"]: d async for d in docs.find({})}
    assert stored["v1"] == {"_id": "v1", "_version": 2, "by": "a"}
    assert stored["v2"] == {"_id": "v2", "_version": 2}
    assert "new" in stored and stored["text"]["n"] == "not a number"
    # All five went together: inserts and updates in one bulk write are sent as one
    # command per kind, in order of kind, never one per operation.
    assert sent(store, "update", "docs") + sent(store, "insert", "docs") - before <= 3


async def test_of_many_writers_racing_one_version_exactly_one_applies(store: Store) -> None:
    docs = store.collection("docs")
    await docs.insert_one({"_id": "d", "_version": 0})
    outcomes = await asyncio.gather(*(
        store.batcher("docs").write(ReplaceOne({"_id": "d", "_version": 0}, {"_version": 1, "by": i}, upsert=True))
        for i in range(25)))
    assert Counter(outcomes) == {Outcome.APPLIED: 1, Outcome.CONFLICT: 24}
    assert (await docs.count_documents({})) == 1


async def test_when_the_store_fails_every_caller_of_the_batch_hears_it(store: Store) -> None:
    batcher = store.batcher("docs")

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PyMongoError("the store is gone")

    batcher.collection.bulk_write = refuse  # type: ignore[method-assign]
    results = await asyncio.gather(*(batcher.write(InsertOne({"_id": i})) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, PyMongoError) for r in results)


async def test_a_cancelled_caller_leaves_the_others_their_outcome(store: Store) -> None:
    batcher = store.batcher("docs")
    first = asyncio.create_task(batcher.write(InsertOne({"_id": "a"})))
    second = asyncio.create_task(batcher.write(InsertOne({"_id": "b"})))
    await asyncio.sleep(0)
    first.cancel()
    assert await second is Outcome.APPLIED
    assert (await store.collection("docs").find_one({"_id": "b"})) is not None
