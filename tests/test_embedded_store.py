"""The embedded MongoDB-wire server keeps what it acknowledged.

Each test runs a server of its own (tests/embedded.py) on a spare port with a
data file in a temporary folder, and kills it. Skipped where the embedded
server is not installed (a run against MongoDB through `MONGODB_URL`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from core.store import Store, update_guarded
from tests.embedded import EmbeddedStore, launcher

pytestmark = pytest.mark.skipif(launcher() is None, reason="the embedded store is not installed")


async def _client(server: EmbeddedStore) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(server.url, serverSelectionTimeoutMS=10000)


async def _restarted(server: EmbeddedStore) -> AsyncMongoClient[dict[str, Any]]:
    """Stop the server gracefully (it commits and closes its file), start it on the same file."""
    assert await server.stop() in (0, 143)  # exits on SIGTERM after committing
    await server.start()
    return await _client(server)


@pytest.mark.parametrize("durability", ["commit", "fsync"])
async def test_every_acknowledged_write_survives_a_kill_9_of_the_server(tmp_path: Path, durability: str) -> None:
    server = EmbeddedStore(tmp_path / "store.mv.db", durability=durability)
    await server.start()
    try:
        store = Store(server.url, "durability")
        await store.connect()
        docs = store.collection("docs")
        acknowledged: set[str] = set()
        guarded = 0

        async def writer(k: int) -> None:
            nonlocal guarded
            for i in range(250):
                await docs.insert_one({"_id": f"{k}-{i}", "_version": 0, "n": 0})
                acknowledged.add(f"{k}-{i}")
                if i % 5 == 0 and await update_guarded(docs, f"{k}-{i}", {"$inc": {"n": 1}}, version=0):
                    guarded += 1

        # Eight writers flat out; the server is killed while they still write.
        writers = [asyncio.create_task(writer(k)) for k in range(8)]
        while len(acknowledged) < 1000:
            await asyncio.sleep(0.01)
        await server.kill()
        await asyncio.gather(*writers, return_exceptions=True)  # the rest fail: server gone
        await store.close()
        seen_before_kill = set(acknowledged)
        assert len(seen_before_kill) >= 1000

        await server.start()
        client = await _client(server)
        try:
            stored = {d["_id"]: d async for d in client.durability.docs.find({})}
        finally:
            await client.close()
        missing = seen_before_kill - stored.keys()
        assert not missing, f"{len(missing)} acknowledged inserts lost, e.g. {sorted(missing)[:5]}"
        assert sum(d["n"] for d in stored.values()) >= guarded
    finally:
        if server.process is not None:
            await server.kill()


async def test_a_graceful_stop_keeps_everything_and_the_file_reopens(tmp_path: Path) -> None:
    server = EmbeddedStore(tmp_path / "store.mv.db")
    await server.start()
    client = await _client(server)
    try:
        await client.db.docs.insert_many([{"_id": i, "v": i} for i in range(500)])
        await client.db.docs.update_many({"v": {"$gte": 250}}, {"$inc": {"v": 1000}})
        await client.db.docs.create_index("v")
    finally:
        await client.close()
    assert await server.stop() in (0, 143)  # exits on SIGTERM after committing

    await server.start()
    client = await _client(server)
    try:
        assert await client.db.docs.count_documents({}) == 500
        assert await client.db.docs.count_documents({"v": {"$gte": 1000}}) == 250
        names = [ix["name"] async for ix in await client.db.docs.list_indexes()]
        assert "v_1" in names
    finally:
        await client.close()
        await server.kill()


async def test_a_filter_naming_the_id_and_other_fields_matches_all_of_them(tmp_path: Path) -> None:
    """Guarded writes (`{_id, _version}`) go through the `_id` index and still
    check every field of the filter, also after the file is reopened."""
    server = EmbeddedStore(tmp_path / "store.mv.db")
    await server.start()
    try:
        client = await _client(server)
        try:
            docs = client.db.docs
            await docs.insert_many([{"_id": f"o{i}", "_version": 1, "state": "placed"} for i in range(50)])
            assert await docs.find_one({"_id": "o7", "_version": 2}) is None
            assert await docs.find_one({"_id": "o7", "_version": 1, "state": "placed"}) == {
                "_id": "o7", "_version": 1, "state": "placed"}
            lost = await docs.update_one({"_id": "o7", "_version": 0}, {"$set": {"state": "late"}})
            won = await docs.update_one({"_id": "o7", "_version": 1}, {"$set": {"state": "late"}, "$inc": {"_version": 1}})
            assert (lost.matched_count, won.modified_count) == (0, 1)
            assert await docs.count_documents({"state": "late"}) == 1
            found = await docs.find({"_id": {"$in": ["o1", "o2", "o7", "none"]}, "_version": 1}).to_list()
            assert sorted(d["_id"] for d in found) == ["o1", "o2"]
            gone = await docs.find_one_and_update({"_id": "o7", "state": "placed"}, {"$set": {"x": 1}})
            assert gone is None
            assert (await docs.delete_one({"_id": "o3", "_version": 9})).deleted_count == 0
            assert (await docs.delete_one({"_id": "o3", "_version": 1})).deleted_count == 1
            upserted = await docs.update_one({"_id": "o99", "_version": 0}, {"$set": {"state": "placed"}}, upsert=True)
            assert upserted.upserted_id == "o99"
        finally:
            await client.close()
        client = await _restarted(server)
        try:
            docs = client.db.docs
            assert await docs.find_one({"_id": "o7", "_version": 2}, {"state": 1}) == {"_id": "o7", "state": "late"}
            assert await docs.find_one({"_id": "o7", "_version": 1}) is None
            assert await docs.find_one({"_id": "o3", "_version": 1}) is None
            assert await docs.count_documents({}) == 50
        finally:
            await client.close()
    finally:
        if server.process is not None:
            await server.kill()


async def test_documents_updated_in_place_while_commits_run_keep_every_acknowledged_change(tmp_path: Path) -> None:
    """The server updates a stored document in place while commits write the
    pages that hold it: writes and commits must not overlap (no failed write,
    no half-written document after a restart)."""
    server = EmbeddedStore(tmp_path / "store.mv.db")
    writers, rounds, ids = 6, 150, [f"d{i}" for i in range(8)]
    await server.start()
    try:
        client = await _client(server)
        try:
            docs = client.db.docs
            await docs.insert_many([{"_id": i, "body": "x" * 2000} for i in ids])

            async def writer(w: int) -> None:
                for r in range(rounds):
                    target = ids[(w + r) % len(ids)]
                    await docs.update_one(
                        {"_id": target},
                        {"$set": {f"w{w}": r, f"w{w}_items": list(range(r % 40))}, "$unset": {f"w{w}_old": ""}},
                    )
                    await docs.update_one({"_id": target}, {"$set": {f"w{w}_old": r}})

            await asyncio.gather(*(writer(w) for w in range(writers)))
            expected = {d["_id"]: d async for d in docs.find()}
        finally:
            await client.close()
        client = await _restarted(server)
        try:
            assert {d["_id"]: d async for d in client.db.docs.find()} == expected
        finally:
            await client.close()
    finally:
        if server.process is not None:
            await server.kill()


async def test_queries_on_a_field_with_an_index_that_is_not_unique_find_exactly_the_matching_documents(
    tmp_path: Path,
) -> None:
    """The server narrows such a query through the index (kept in memory, rebuilt
    when the file is reopened), then checks the whole filter on each candidate."""
    server = EmbeddedStore(tmp_path / "store.mv.db")
    await server.start()
    try:
        client = await _client(server)
        docs = client.db.docs
        await docs.create_index([("due", 1)])
        await docs.create_index([("state", 1), ("due", 1)])
        stored = [
            {"_id": i, "due": i % 10, "state": ["pending", "fired", "cancelled"][i % 3]} for i in range(60)
        ] + [
            {"_id": 100, "due": 4.0, "state": "pending"},          # a double equal to an int
            {"_id": 101, "due": [3, 7], "state": "pending"},       # an array: each element counts
            {"_id": 102, "state": "pending"},                      # no value
            {"_id": 103, "due": None, "state": "pending"},
            {"_id": 104, "due": "7", "state": "pending"},          # another type
        ]
        await docs.insert_many(stored)

        async def ids(query: dict[str, Any]) -> list[int]:
            return sorted([d["_id"] async for d in docs.find(query)])

        async def check() -> None:
            assert await ids({"due": 4}) == sorted([i for i in range(60) if i % 10 == 4] + [100])
            assert await ids({"due": {"$in": [3, "7"]}}) == sorted([i for i in range(60) if i % 10 == 3] + [101, 104])
            assert await ids({"due": {"$lte": 1}}) == [i for i in range(60) if i % 10 <= 1]
            assert await ids({"due": {"$gt": 6, "$lt": 8}}) == sorted([i for i in range(60) if i % 10 == 7] + [101])
            assert await ids({"state": "pending", "due": {"$lte": 2}}) == [
                i for i in range(60) if i % 3 == 0 and i % 10 <= 2]
            assert await ids({"due": None}) == [102, 103]
            assert await ids({"due": {"$exists": False}}) == [102]

        await check()
        await docs.update_many({"due": 4}, {"$set": {"due": 40}})
        await docs.update_many({"due": 40}, {"$set": {"due": 4}})
        await docs.delete_one({"_id": 0})
        await docs.insert_one({"_id": 0, "due": 0, "state": "pending"})
        await check()
        moved = await docs.update_one({"_id": 13, "due": 3}, {"$set": {"due": 99}})
        assert moved.modified_count == 1
        assert 13 not in await ids({"due": 3}) and await ids({"due": {"$gte": 99}}) == [13]
        await docs.update_one({"_id": 13}, {"$set": {"due": 3}})
        await client.close()

        client = await _restarted(server)
        docs = client.db.docs
        await check()
        await client.close()
    finally:
        if server.process is not None:
            await server.kill()
