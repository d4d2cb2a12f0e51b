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
