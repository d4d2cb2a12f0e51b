"""Dead letters you can inspect, replay and discard.

A message that fails lands in `<prefix>.<group>.dead` (core.bus), sent there by the
service with its reason in headers, or by the broker (`x-death`). A RabbitMQ queue
is no random-access store: reading one message in the middle means taking and
putting back every message before it, and a quorum queue counts every put-back as
a delivery (RabbitMQ 4 drops a message after 20 by default). So the dead-letter
queue is only the transport, and the store keeps the record:

- the *keeper* (one consumer per dead-letter queue, on every instance, whether the
  plugin is on or off) writes each dead letter into the `dead_letters` collection,
  body and headers included, then acks it. A crash between the two redelivers it,
  and the write is keyed (queue, message id) and guarded by the death's time and
  replay count, so it is kept once;
- listing, paging, counting read that collection;
- a replay claims the record (`dead` -> `replaying`, one winner), publishes the
  body to the plugin's own queue (the default exchange, not the topic exchange:
  the other plugins already handled it) with publisher confirms, then marks it
  `replayed`. A crash before the publish leaves it `replaying`, listed, and
  replayable again: at-least-once. Handlers dedupe on the CloudEvents id only for
  changes they *applied* (`_applied` is written with the change), so a replay of a
  message whose first attempt failed is handled, and one that had in fact been
  applied is a no-op;
- a replayed message that fails again comes back through the dead-letter queue
  with `x-rescenter-replays`, and its record is `dead` again with that count;
- a discard marks the named records `discarded` (kept, with who, when and why).

Every replay and discard is appended to the record's `history` and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue
from pydantic import Field
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from core.bus import REPLAYED_FOR
from core.clock import utcnow
from core.errors import InvalidInput, NotFound, Unavailable
from core.http.responses import ActorView, View
from core.messages import Actor

if TYPE_CHECKING:
    from core.bus import Bus
    from core.metrics import Metrics
    from core.store import Store

log = structlog.get_logger("rescenter.dead_letters")

COLLECTION = "dead_letters"
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_IDS = 1000
#: records an operator still has to decide about (listed, counted, replayable, discardable)
OPEN = ("dead", "replaying")
REPLAYS = "x-rescenter-replays"
#: headers of a dead letter that describe its death, not the message: not sent again on a replay
_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count", "x-rescenter-")

State = Literal["dead", "replaying", "replayed", "discarded"]


# ---------------------------------------------------------------- models (also the HTTP answers)


class DeadLetterQueue(View):
    queue: str = Field(description="The dead-letter queue, `<prefix>.<plugin>.dead`.")
    plugin: str = Field(description="The consumer group whose queue it serves: `core` or a plugin name.")
    count: int = Field(ge=0, description="Dead letters waiting for a decision (dead, or a replay in progress).")
    oldest: datetime | None = Field(description="First death time of the oldest of them; null when none.")
    by_reason: dict[str, int] = Field(description="The same count by reason (`invalid`, `unauthorized`, "
                                                  "`rejected`, `delivery_limit`, ... see the AsyncAPI document).")


class DeadLetterSummary(View):
    queues: list[DeadLetterQueue]


class HistoryEntry(View):
    action: Literal["dead", "replay", "discard"]
    at: datetime
    actor: ActorView | None = None
    reason: str | None = None
    replays: int | None = None


class DeadLetter(View):
    id: str = Field(description="The message's id (its CloudEvents id); names it in replay and discard.")
    type: str | None = Field(description="The envelope's type (AMQP `type`, else the routing key).")
    subject: str | None = Field(description="The envelope's subject (the order id), when the body has one.")
    reason: str
    error: str
    first_dead_at: datetime = Field(description="When it was dead-lettered the first time.")
    dead_at: datetime = Field(description="When it was dead-lettered the last time.")
    replays: int = Field(ge=0, description="How many times it was replayed.")
    state: State
    sender: str | None = Field(description="The broker user that sent it (AMQP `user_id`).")
    body: Any = Field(description="The message body: JSON when it parses, else the text as it came.")
    history: list[HistoryEntry]


class DeadLetterPage(View):
    queue: str
    messages: list[DeadLetter]
    next_after: str | None = Field(
        description="Pass it as `after` for the next page; null when this page is the last.")


class Skipped(View):
    id: str
    why: str


class ReplayResult(View):
    queue: str
    replayed: list[str] = Field(description="Ids published again to the plugin's queue.")
    skipped: list[Skipped] = Field(description="Ids named that were not replayed, and why.")


class DiscardResult(View):
    queue: str
    discarded: list[str]
    skipped: list[Skipped]


# ---------------------------------------------------------------- the service


class DeadLetters:
    """Dead letters of every queue the bus declared: kept in the store, listed, replayed,
    discarded. The HTTP routes, the CLI and the console call these methods."""

    def __init__(self, bus: Bus, store: Store, metrics: Metrics | None = None) -> None:
        self.bus = bus
        self.store = store
        self.metrics = metrics
        self.collection = store.collection(COLLECTION)
        self._channel: AbstractRobustChannel | None = None
        self._queues: list[AbstractRobustQueue] = []  # strong references, for recovery
        self._tags: list[tuple[AbstractRobustQueue, str]] = []
        self._inflight: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ queues

    def queues(self) -> dict[str, tuple[str, str]]:
        """Dead-letter queue -> (plugin, the plugin's queue), for every group the bus declared."""
        return {self.bus.dead_queue_name(name): (name, self.bus.queue_name(name)) for name in self.bus.groups}

    def _known(self, queue: str) -> tuple[str, str]:
        known = self.queues()
        if queue not in known:
            raise NotFound(f"no dead-letter queue named {queue!r}", queues=sorted(known))
        return known[queue]

    # ------------------------------------------------------------ the keeper

    async def start(self) -> None:
        """Consume every dead-letter queue into the store (the keeper)."""
        await self.create_indexes()
        assert self.bus.connection is not None
        self._channel = await self.bus.connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=32)
        for dead_queue in self.queues():
            queue = await self._channel.get_queue(dead_queue)
            self._queues.append(queue)
            tag = await queue.consume(self._on_dead_letter)
            self._tags.append((queue, tag))

    async def stop(self) -> None:
        if self.bus.connection is not None and not self.bus.connection.is_closed:
            for queue, tag in self._tags:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await queue.cancel(tag)
        self._tags.clear()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=5)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):  # a connection waiting for the broker would wait forever
                    await self._channel.close()

    async def collect(self) -> int:
        """Keep what waits in the dead-letter queues now, without a consumer (the CLI, when no
        instance runs); returns how many were taken."""
        assert self.bus.connection is not None
        channel = await self.bus.connection.channel()
        taken = 0
        try:
            for dead_queue in self.queues():
                try:
                    queue = await channel.get_queue(dead_queue)
                except aio_pika.exceptions.ChannelClosed:  # not declared yet: nothing there
                    channel = await self.bus.connection.channel()
                    continue
                while (message := await queue.get(no_ack=False, fail=False)) is not None:
                    await self.keep(message)
                    await message.ack()
                    taken += 1
        finally:
            await channel.close()
        return taken

    async def create_indexes(self) -> None:
        await self.collection.create_index([("queue", 1), ("state", 1), ("first_dead_at", 1)])

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            await self.keep(message)
        except Exception:
            log.exception("could not keep a dead letter; it stays in its queue", queue=message.routing_key)
            await asyncio.sleep(1)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        finally:
            self._inflight.discard(task)
        with contextlib.suppress(Exception):  # not acked: redelivered, and kept once (guards below)
            await message.ack()

    async def keep(self, message: AbstractIncomingMessage) -> None:
        """Write one dead letter's record: new, or dead again after a replay."""
        headers = dict(message.headers or {})
        deaths = headers.get("x-death") or []
        first_death = deaths[-1] if isinstance(deaths, list) and deaths else {}
        ours = "x-rescenter-reason" in headers and message.user_id == self.bus.own_user
        if ours:  # core.bus dead-lettered it, with the reason
            reason = _text(headers.get("x-rescenter-reason"))
            error = _text(headers.get("x-rescenter-error"))
            source = _text(headers.get("x-rescenter-queue"))
            sender = _text(headers.get("x-rescenter-user-id")) or None
            dead_at = _time(headers.get("x-rescenter-dead-at"))
        else:  # the broker did (delivery limit reached, rejected): the message as it was sent
            reason = _text(headers.get("x-first-death-reason") or first_death.get("reason") or "broker")
            reason = reason.replace("-", "_")
            error = f"dead-lettered by the broker ({reason})"
            source = _text(headers.get("x-first-death-queue") or first_death.get("queue") or "")
            sender = message.user_id
            dead_at = _time(first_death.get("time"))
        if sender == self.bus.own_user and REPLAYED_FOR in headers:
            sender = _text(headers[REPLAYED_FOR]) or None  # a replay: the original sender
        source = source or message.routing_key or ""  # the dead exchange routes by the source queue
        dead_queue = f"{source}.dead"
        replays = _int(headers.get(REPLAYS))
        message_key = message.message_id or "sha256-" + hashlib.sha256(message.body).hexdigest()[:32]
        envelope = _json(message.body)
        death_key = f"{dead_at.isoformat()}|{replays}"
        record = {
            "queue": dead_queue,
            "plugin": self.queues().get(dead_queue, (_plugin_of(dead_queue),))[0],
            "source_queue": source,
            "message_id": message_key,
            "type": message.type or (envelope.get("type") if isinstance(envelope, dict) else None)
            or _text(headers.get("x-rescenter-routing-key")) or None,
            "subject": envelope.get("subject") if isinstance(envelope, dict) else None,
            "reason": reason,
            "error": error,
            "dead_at": dead_at,
            "death": death_key,
            "replays": replays,
            "state": "dead",
            "sender": sender,
            "content_type": message.content_type,
            "body": message.body,
            "headers": {k: _plain(v) for k, v in headers.items()},  # as it died; a replay sends fewer
        }
        try:
            # A copy of a death already kept, or of one older than the last replay, changes nothing.
            await self.collection.update_one(
                {"_id": _record_id(dead_queue, message_key), "replays": {"$lte": replays},
                 "death": {"$ne": death_key}},
                {"$set": record, "$setOnInsert": {"first_dead_at": dead_at},
                 "$unset": {"replay_token": ""},
                 "$push": {"history": {"action": "dead", "at": dead_at, "reason": reason, "replays": replays}}},
                upsert=True,
            )
        except DuplicateKeyError:
            log.info("dead letter already kept", queue=dead_queue, message_id=message_key)
            return
        log.info("dead letter kept", queue=dead_queue, message_id=message_key, reason=reason, replays=replays)

    # ------------------------------------------------------------ reading

    async def summary(self) -> DeadLetterSummary:
        """Per dead-letter queue: how many wait, the oldest first death, how many by reason."""
        counts: dict[str, dict[str, int]] = {queue: {} for queue in self.queues()}
        oldest: dict[str, datetime] = {}
        cursor = await self.collection.aggregate([
            {"$match": {"state": {"$in": list(OPEN)}}},
            {"$group": {"_id": {"queue": "$queue", "reason": "$reason"}, "count": {"$sum": 1},
                        "oldest": {"$min": "$first_dead_at"}}},
        ])
        async for row in cursor:
            queue, reason = row["_id"]["queue"], row["_id"]["reason"]
            counts.setdefault(queue, {})[reason] = row["count"]
            if queue not in oldest or row["oldest"] < oldest[queue]:
                oldest[queue] = row["oldest"]
        known = self.queues()
        return DeadLetterSummary(queues=[
            DeadLetterQueue(queue=queue, plugin=known.get(queue, (_plugin_of(queue),))[0],
                            count=sum(by_reason.values()), oldest=oldest.get(queue),
                            by_reason=dict(sorted(by_reason.items())))
            for queue, by_reason in sorted(counts.items())
        ])

    async def page(self, queue: str, limit: int = DEFAULT_LIMIT, after: str | None = None) -> DeadLetterPage:
        """The queue's open dead letters, oldest first death first, `limit` (1 to MAX_LIMIT) at a
        time; `after` is the `next_after` of the previous page (the id of its last message)."""
        self._known(queue)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
        query: dict[str, Any] = {"queue": queue, "state": {"$in": list(OPEN)}}
        if after is not None:
            last = await self.collection.find_one({"_id": _record_id(queue, after)}, {"first_dead_at": 1})
            if last is None:
                raise InvalidInput(f"after: no dead letter {after!r} in {queue}", field="after")
            query["$or"] = [{"first_dead_at": {"$gt": last["first_dead_at"]}},
                            {"first_dead_at": last["first_dead_at"], "_id": {"$gt": last["_id"]}}]
        docs = await self.collection.find(query).sort([("first_dead_at", 1), ("_id", 1)]).limit(limit + 1) \
            .to_list(limit + 1)
        more = len(docs) > limit
        docs = docs[:limit]
        return DeadLetterPage(queue=queue, messages=[_view(d) for d in docs],
                              next_after=docs[-1]["message_id"] if more else None)

    async def get(self, queue: str, id: str) -> DeadLetter:
        """One dead letter, whatever its state (replayed and discarded ones too)."""
        self._known(queue)
        doc = await self.collection.find_one({"_id": _record_id(queue, id)})
        if doc is None:
            raise NotFound(f"no dead letter {id!r} in {queue}")
        return _view(doc)

    # ------------------------------------------------------------ deciding

    async def replay(self, queue: str, ids: list[str] | None, actor: Actor) -> ReplayResult:
        """Publish the named dead letters (None: every open one) again to the plugin's queue, once
        each: a second replay of the same id finds it `replayed` and skips it."""
        _plugin, source = self._known(queue)
        ids = _checked_ids(ids, required=False)
        if ids is None:
            ids = [d["message_id"] async for d in self.collection.find(
                {"queue": queue, "state": {"$in": list(OPEN)}}, {"message_id": 1}).sort("first_dead_at", 1)]
        replayed: list[str] = []
        skipped: list[Skipped] = []
        for id in ids:
            why = await self._replay_one(queue, source, id, actor)
            if why is None:
                replayed.append(id)
            else:
                skipped.append(Skipped(id=id, why=why))
        return ReplayResult(queue=queue, replayed=replayed, skipped=skipped)

    async def _replay_one(self, queue: str, source: str, id: str, actor: Actor) -> str | None:
        token = uuid.uuid4().hex
        at = utcnow()
        claimed = await self.collection.find_one_and_update(
            {"_id": _record_id(queue, id), "state": {"$in": list(OPEN)}},
            {"$set": {"state": "replaying", "replay_token": token}, "$inc": {"replays": 1},
             "$push": {"history": {"action": "replay", "at": at, "actor": _actor(actor)}}},
            return_document=ReturnDocument.AFTER,
        )
        if claimed is None:
            return await self._why_not(queue, id)
        headers = {k: v for k, v in claimed.get("headers", {}).items() if not k.startswith(_DEATH_HEADERS)}
        headers[REPLAYS] = claimed["replays"]
        headers[REPLAYED_FOR] = claimed.get("sender") or ""
        try:
            await self.bus.send_to_queue(
                source, bytes(claimed["body"]), message_id=claimed["message_id"], type=claimed.get("type"),
                content_type=claimed.get("content_type"), headers=headers)
        except Exception as exc:
            # Not published: back as it was, so that the next death's count still matches.
            await self.collection.update_one(
                {"_id": claimed["_id"], "replay_token": token},
                {"$set": {"state": "dead"}, "$inc": {"replays": -1}, "$pop": {"history": 1},
                 "$unset": {"replay_token": ""}})
            log.warning("replay failed", queue=queue, message_id=id, error=repr(exc))
            raise Unavailable(f"could not replay {id}: {exc}") from exc
        # Guarded by the token: a replay that already failed again and is `dead` stays so.
        await self.collection.update_one(
            {"_id": claimed["_id"], "replay_token": token, "state": "replaying"},
            {"$set": {"state": "replayed"}, "$unset": {"replay_token": ""}})
        log.info("dead letter replayed", queue=queue, message_id=id, to=source, replays=claimed["replays"],
                 actor=actor.id, actor_role=actor.role)
        return None

    async def discard(self, queue: str, ids: list[str], reason: str, actor: Actor) -> DiscardResult:
        """Mark the named open dead letters discarded, with why: they leave the listing, their
        record stays."""
        self._known(queue)
        checked = _checked_ids(ids, required=True)
        assert checked is not None
        reason = reason.strip()
        if not reason or len(reason) > 2000:
            raise InvalidInput("a discard needs a reason (1 to 2000 characters)", field="reason")
        discarded: list[str] = []
        skipped: list[Skipped] = []
        for id in checked:
            done = await self.collection.find_one_and_update(
                {"_id": _record_id(queue, id), "state": {"$in": list(OPEN)}},
                {"$set": {"state": "discarded"}, "$unset": {"replay_token": ""},
                 "$push": {"history": {"action": "discard", "at": utcnow(), "actor": _actor(actor),
                                       "reason": reason}}},
            )
            if done is None:
                skipped.append(Skipped(id=id, why=await self._why_not(queue, id)))
                continue
            discarded.append(id)
            log.info("dead letter discarded", queue=queue, message_id=id, reason=reason, actor=actor.id,
                     actor_role=actor.role)
        return DiscardResult(queue=queue, discarded=discarded, skipped=skipped)

    async def _why_not(self, queue: str, id: str) -> str:
        doc = await self.collection.find_one({"_id": _record_id(queue, id)}, {"state": 1})
        if doc is None:
            return "no such dead letter in this queue"
        return f"it is {doc['state']}"

    # ------------------------------------------------------------ gauges

    async def refresh_gauges(self) -> None:
        """Queue depths (every group's queue and dead-letter queue) and open dead letters by reason."""
        if self.metrics is None:
            return
        depths = await self.bus.queue_depths([q for dead, (_, source) in self.queues().items()
                                              for q in (source, dead)])
        for queue, depth in depths.items():
            self.metrics.queue_messages.labels(queue).set(depth)
        summary = await self.summary()
        self.metrics.dead_letters.clear()
        for row in summary.queues:
            self.metrics.dead_letters.labels(row.queue, "all").set(row.count)
            for reason, count in row.by_reason.items():
                self.metrics.dead_letters.labels(row.queue, reason).set(count)


# ---------------------------------------------------------------- helpers


def _record_id(queue: str, message_id: str) -> str:
    return f"{queue}|{message_id}"


def _plugin_of(queue: str) -> str:
    return queue.removesuffix(".dead").rsplit(".", 1)[-1]


def _checked_ids(ids: list[str] | None, *, required: bool) -> list[str] | None:
    if ids is None:
        if required:
            raise InvalidInput("name the ids to discard", field="ids")
        return None
    if not ids and required:
        raise InvalidInput("name at least one id", field="ids")
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"at most {MAX_IDS} ids at a time", field="ids")
    if any(not id or len(id) > 200 for id in ids):
        raise InvalidInput("an id is 1 to 200 characters", field="ids")
    return list(dict.fromkeys(ids))  # once each, in the order named


def _actor(actor: Actor) -> dict[str, str]:
    return {"id": actor.id, "role": actor.role}


def _view(doc: dict[str, Any]) -> DeadLetter:
    body = _json(bytes(doc.get("body") or b""))
    return DeadLetter(
        id=doc["message_id"], type=doc.get("type"), subject=doc.get("subject"), reason=doc["reason"],
        error=doc["error"], first_dead_at=doc["first_dead_at"], dead_at=doc["dead_at"],
        replays=doc.get("replays", 0), state=doc["state"], sender=doc.get("sender"), body=body,
        history=[HistoryEntry(**h) for h in doc.get("history", [])],
    )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _time(value: Any) -> datetime:
    """A death time: RFC 3339 (our header), a datetime (the broker's x-death), an epoch number (our
    header before it was a string), else now; to the millisecond, as the store keeps it."""
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, str | bytes):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(_text(value))
    elif isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, UTC)
    if moment is None or moment.tzinfo is None:
        moment = datetime.fromtimestamp(time.time(), UTC)
    return moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)


def _plain(value: Any) -> Any:
    """A header value the store keeps as it is (AMQP tables may hold bytes and datetimes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool | datetime) or value is None:
        return value
    return str(value)


__all__ = ["DeadLetter", "DeadLetterPage", "DeadLetterQueue", "DeadLetterSummary", "DeadLetters",
           "DiscardResult", "HistoryEntry", "ReplayResult", "Skipped"]
