"""What the embedded store's durability costs: the same writes against one
server per durability mode, side by side in one run.

    python bench/store.py [--writes 2000] [--clients 8]

For each mode (`background`: the library's one-second commit, acknowledged
writes can be lost on a crash; `commit`: the default, every write committed to
the file before it is acknowledged; `fsync`: also forced to disk) it starts a
server of its own on a spare port with a fresh data file, then `--clients`
clients, each with its own connection pool, run in turn: inserts, guarded
updates by `_id` + `_version` (as the service writes), and reads by `_id`.
Prints operations per second and each mode's ratio to `background`.
Not a test: figures vary with the machine; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.logging import configure_logging  # noqa: E402
from core.store import Store, update_guarded  # noqa: E402
from tests.embedded import EmbeddedStore  # noqa: E402

MODES = ("background", "commit", "fsync")


async def measure(mode: str, writes: int, clients: int, folder: Path) -> dict[str, float]:
    server = EmbeddedStore(folder / f"{mode}.mv.db", durability=mode)
    await server.start()
    stores = [Store(server.url, "bench") for _ in range(clients)]
    try:
        for store in stores:
            await store.connect()
        per_client = writes // clients

        async def run(op: str) -> float:
            async def one(k: int, store: Store) -> None:
                docs = store.collection("docs")
                for i in range(per_client):
                    doc_id = f"{k}-{i}"
                    if op == "insert":
                        await docs.insert_one({"_id": doc_id, "_version": 0, "seller_id": f"s{i % 50}"})
                    elif op == "guarded update":
                        await update_guarded(docs, doc_id, {"$set": {"state": "x"}}, version=0)
                    else:
                        await docs.find_one({"_id": doc_id})

            started = time.perf_counter()
            await asyncio.gather(*(one(k, s) for k, s in enumerate(stores)))
            return per_client * clients / (time.perf_counter() - started)

        return {op: await run(op) for op in ("insert", "guarded update", "read by _id")}
    finally:
        for store in stores:
            await store.close()
        await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    configure_logging("WARNING", json=False)
    with tempfile.TemporaryDirectory(prefix="rescenter-bench-store-") as folder:
        results = {mode: await measure(mode, args.writes, args.clients, Path(folder)) for mode in MODES}
    ops = list(results["background"])
    print(f"{args.writes} operations of each kind, {args.clients} clients with their own pools")
    print(f"{'durability':<12}" + "".join(f"{op + ' /s':>20}" for op in ops))
    for mode, figures in results.items():
        cells = "".join(
            f"{figures[op]:>11,.0f} ({figures[op] / results['background'][op]:4.2f})" for op in ops
        )
        print(f"{mode:<12}{cells}")
    print("(in brackets: the ratio to background, the library's one-second commit)")


if __name__ == "__main__":
    asyncio.run(main())
