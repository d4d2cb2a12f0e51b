"""The metrics plugin's collections.

- `metrics_events`: the event log, every consumed event, `_id` = its message id:
  a redelivered message is a duplicate key, so it is kept once. It holds the
  type, the time the event happened, the seller, the order and only the fields
  the metrics read (facts.LoggedEvent), and is never pruned: the figures "as
  of" any instant and the rebuild are folded from it.
- `metrics_orders`: the live projection, one small document per order (`_id` =
  order id) with its facts (facts.py); each event is one upsert of one order,
  whatever the seller's history.
- `metrics_sellers`: the seller's read model, one document per seller and month
  (`_id` = `<seller>|<YYYY-MM>`) naming the orders with a fact in that month
  (facts.py). The live figures read the months of their window, then those
  orders, both by `_id`: a read costs the seller's recent orders, never a scan
  of every stored order (a store that only uses its `_id` index, as the
  embedded one, would otherwise read them all).
- `metrics_flags`: support's flag on a cancelled order (MET-2), one document per
  order (`_id` = order id), written with its event in the outbox.

Recording an event is three writes, sent together: insert into the log, `$set`
its facts on the order, `$max` the order's entry into the seller's months. A
crash between them loses nothing: the unacked message comes back, the log
insert is a duplicate, and the facts and entries are written again (writing
them twice changes nothing). `rebuild` repairs any order whose document missed
an event, and any entry missing from the seller's months.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo import ASCENDING, InsertOne, UpdateOne
from pymongo.errors import DuplicateKeyError

from core.batching import Outcome
from core.store import Store
from plugins.metrics.facts import (
    LoggedEvent,
    facts_of,
    facts_only,
    fold,
    fold_index,
    index_entries,
    months_between,
    seller_month_id,
)
from plugins.metrics.messages import read_facts, to_millisecond

log = structlog.get_logger("rescenter.metrics")

EVENTS = "metrics_events"
ORDERS = "metrics_orders"
FLAGS = "metrics_flags"
SELLERS = "metrics_sellers"


class MetricsRepository:
    def __init__(self, store: Store) -> None:
        self.events = store.collection(EVENTS)
        self.orders = store.collection(ORDERS)
        self.flags = store.collection(FLAGS)
        self.sellers = store.collection(SELLERS)
        # Every order event is recorded: handlers of concurrent events share round trips.
        self._events_batch = store.batcher(EVENTS)
        self._orders_batch = store.batcher(ORDERS)
        self._sellers_batch = store.batcher(SELLERS)

    async def create_indexes(self) -> None:
        await self.events.create_index([("seller_id", ASCENDING), ("time", ASCENDING)])
        await self.events.create_index([("seller_id", ASCENDING), ("order_id", ASCENDING)])
        await self.orders.create_index([("seller_id", ASCENDING), ("last_at", ASCENDING)])

    # ------------------------------------------------------------ recording

    async def record(self, event_id: str, type_: str, time: datetime, data: dict[str, Any]) -> None:
        """Keep a consumed event and apply its facts to the live figures; a redelivery
        changes nothing. Raises InvalidInput when the event lacks a field the metrics
        need (the bus dead-letters it, with the reason)."""
        # What the log keeps, and what the live facts are derived from: the same bytes a
        # rebuild folds again, so live and rebuilt facts cannot drift apart.
        kept = read_facts(type_, data).model_dump(mode="json", exclude_none=True)
        event = LoggedEvent(id=event_id, type=type_, time=to_millisecond(time), data=kept)
        facts = facts_of(event)
        # The log entry, the live facts and the seller's months, written side by side: if this
        # delivery dies between them, the redelivery writes them again, which changes nothing.
        writes = [self._events_batch.write(InsertOne({
            "_id": event.id, "type": event.type, "time": event.time,
            "seller_id": facts.seller_id, "order_id": facts.order_id, "data": event.data}))]
        if facts.assignments:
            writes.append(self._orders_batch.write(UpdateOne(
                {"_id": facts.order_id},
                {"$set": facts.assignments, "$max": {"last_at": facts.latest}, "$inc": {"_version": 1}},
                upsert=True,
            )))
        writes += [self._sellers_batch.write(UpdateOne({"_id": month_id}, _index_update(month_id, entries),
                                                       upsert=True))
                   for month_id, entries in index_entries(facts).items()]
        logged, *_ = await asyncio.gather(*writes)
        if logged is Outcome.CONFLICT:
            log.info("redelivered event: already in the log", event_id=event_id, event_type=type_)

    # ------------------------------------------------------------ reading

    async def live_orders(self, seller_id: str, at: datetime, window: timedelta) -> dict[str, dict[str, Any]]:
        """The seller's orders with a fact in the window ending at `at`: no other order can
        change the figures at `at` (rules.py). Two reads by `_id`: the seller's months that
        the window touches, then the orders they name with a fact after its start."""
        start = at - window
        month_ids = [seller_month_id(seller_id, month) for month in months_between(start, at)]
        wanted = {entry["order_id"]
                  async for month in self.sellers.find({"_id": {"$in": month_ids}}, {"orders": 1})
                  for entry in month.get("orders", {}).values() if entry["at"] > start}
        if not wanted:
            return {}
        docs = await self.orders.find({"_id": {"$in": sorted(wanted)}}).to_list()
        return {doc["_id"]: facts_only(doc) for doc in docs}

    async def logged_events(self, seller_id: str, *, until: datetime | None = None,
                            order_id: str | None = None) -> list[LoggedEvent]:
        query: dict[str, Any] = {"seller_id": seller_id}
        if until is not None:
            query["time"] = {"$lte": until}
        if order_id is not None:
            query["order_id"] = order_id
        docs = await self.events.find(query).sort([("time", ASCENDING), ("_id", ASCENDING)]).to_list()
        return [LoggedEvent(id=d["_id"], type=d["type"], time=d["time"], data=d["data"]) for d in docs]

    async def orders_as_of(self, seller_id: str, at: datetime) -> dict[str, dict[str, Any]]:
        """The seller's orders folded from the events kept up to `at`."""
        return fold(await self.logged_events(seller_id, until=at)).get(seller_id, {})

    async def sellers_known(self) -> list[str]:
        """Every seller with events in the log or live orders."""
        return sorted(set(await self.events.distinct("seller_id")) | set(await self.orders.distinct("seller_id")))

    # ------------------------------------------------------------ rebuilding

    async def rebuild(self, seller_id: str, *, write: bool) -> Rebuilt:
        """Fold the seller's orders from the event log and compare them with the live
        documents; with `write`, repair each order that differs.

        The live documents are read before the log, and an order is replaced only if its
        `_version` did not move: an event recorded meanwhile is either in the log we read,
        or it bumped the version and that order is folded again. A rebuild beside the
        running service never drops a live event."""
        live_docs = {d["_id"]: d for d in await self.orders.find({"seller_id": seller_id}).to_list()}
        events = await self.logged_events(seller_id)
        rebuilt = fold(events).get(seller_id, {})
        live = {order_id: facts_only(doc) for order_id, doc in live_docs.items()}
        result = Rebuilt(seller_id=seller_id, live=live, rebuilt=rebuilt,
                         index_missing=await self._index_missing(fold_index(events)))
        if not write:
            return result
        for order_id in result.differing():
            await self._repair(seller_id, order_id, live_docs.get(order_id), rebuilt.get(order_id))
            result.repaired.append(order_id)
        for month_id, entries in result.index_missing.items():
            # `$max`: an entry that an event raised meanwhile stays as it is.
            await self.sellers.update_one({"_id": month_id}, _index_update(month_id, entries), upsert=True)
            result.index_repaired += len(entries)
        if result.repaired or result.index_repaired:
            log.warning("live figures differed from the event log; repaired", seller_id=seller_id,
                        orders=result.repaired[:20], index_entries=result.index_repaired,
                        differences=result.differences()[:20])
        return result

    async def _index_missing(self, expected: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """The seller's month entries the events give that the read model lacks (or holds with
        an earlier time). Entries it holds beyond those only cost a read: they are left."""
        if not expected:
            return {}
        stored = {d["_id"]: d.get("orders", {}) async for d in self.sellers.find({"_id": {"$in": sorted(expected)}})}
        missing: dict[str, dict[str, Any]] = {}
        for month_id, entries in expected.items():
            for key, entry in entries.items():
                known = stored.get(month_id, {}).get(key)
                if known is None or known.get("at") is None or known["at"] < entry["at"]:
                    missing.setdefault(month_id, {})[key] = entry
        return missing

    async def _repair(self, seller_id: str, order_id: str, live: dict[str, Any] | None,
                      rebuilt: dict[str, Any] | None, attempts: int = 8) -> None:
        for _ in range(attempts):
            if live is None:
                if rebuilt is None:
                    return
                try:
                    await self.orders.insert_one({"_id": order_id, **rebuilt, "_version": 1})
                    return
                except DuplicateKeyError:
                    pass  # its event arrived meanwhile
            elif rebuilt is None:
                # Live facts that no kept event backs: only a hand-made change can do that.
                if (await self.orders.delete_one({"_id": order_id, "_version": live["_version"]})).deleted_count:
                    return
            else:
                update: dict[str, Any] = {"$set": rebuilt, "$inc": {"_version": 1}}
                if stale := [name for name in facts_only(live) if name not in rebuilt]:
                    update["$unset"] = dict.fromkeys(stale, "")
                if (await self.orders.update_one({"_id": order_id, "_version": live["_version"]},
                                                 update)).matched_count:
                    return
            # Changed meanwhile: read the order, then its events, and decide again.
            live = await self.orders.find_one({"_id": order_id})
            rebuilt = fold(await self.logged_events(seller_id, order_id=order_id)).get(seller_id, {}).get(order_id)
            if live is not None and rebuilt is not None and facts_only(live) == rebuilt:
                return
        raise RuntimeError(f"order {order_id!r} kept changing during the rebuild; run it again")


def _index_update(month_id: str, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Add entries ({order key: {order_id, at}}) to a seller's month; `$max` keeps the latest time."""
    seller_id, _, month = month_id.rpartition("|")
    return {
        "$set": {"seller_id": seller_id, "month": month,
                 **{f"orders.{key}.order_id": entry["order_id"] for key, entry in entries.items()}},
        "$max": {f"orders.{key}.at": entry["at"] for key, entry in entries.items()},
    }


@dataclass
class Rebuilt:
    seller_id: str
    #: order id -> facts
    live: dict[str, dict[str, Any]]
    rebuilt: dict[str, dict[str, Any]]
    repaired: list[str] = field(default_factory=list)
    #: seller month id -> order key -> {order_id, at}: what the read model lacks
    index_missing: dict[str, dict[str, Any]] = field(default_factory=dict)
    index_repaired: int = 0

    @property
    def same(self) -> bool:
        return self.live == self.rebuilt and not self.index_missing

    def differing(self) -> list[str]:
        return sorted(o for o in self.live.keys() | self.rebuilt.keys() if self.live.get(o) != self.rebuilt.get(o))

    def differences(self) -> list[str]:
        """Where the live facts and the ones folded from the events differ, path by path."""
        found: list[str] = []
        for order_id in self.differing():
            _diff(self.live.get(order_id), self.rebuilt.get(order_id), f"order {order_id}", found)
        for month_id, entries in sorted(self.index_missing.items()):
            for entry in entries.values():
                found.append(f"month {month_id}: order {entry['order_id']} missing (fact at {entry['at'].isoformat()})")
        return found


def _diff(live: Any, rebuilt: Any, path: str, found: list[str]) -> None:
    if isinstance(live, dict) and isinstance(rebuilt, dict):
        for name in sorted(live.keys() | rebuilt.keys()):
            _diff(live.get(name), rebuilt.get(name), f"{path}.{name}", found)
    elif live != rebuilt:
        found.append(f"{path}: live {live!r}, from events {rebuilt!r}")
