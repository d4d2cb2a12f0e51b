"""RabbitMQ through aio-pika.

Topology, all durable:
- `<exchange>` (topic): every message, routing key = its `type`. Its alternate
  exchange `<exchange>.unrouted` keeps what no queue is bound to, so an event
  nobody subscribes to yet is kept rather than dropped; a message even that
  cannot take is returned by the broker and `publish` raises `Unroutable`.
- `<prefix>.<group>`: one quorum queue per plugin (and one for the core), bound
  only to the types that group subscribes to; `x-delivery-limit` caps
  redeliveries; instances of the service compete on it.
- `<prefix>.dead` (direct) -> `<prefix>.<group>.dead`: dead letters, each with
  the reason in headers (`x-rescenter-reason`, `x-rescenter-error`), whether we
  sent it there (invalid message, unauthorized sender, permanent error, retries
  exhausted) or the broker did (`x-first-death-reason: delivery-limit`).

Messages other services send to rescenter (the catalogue's "consume" types: commands and
facts) are authorized by the AMQP `user_id` property, which RabbitMQ checks against the
publishing connection's user: `bus.authorization` says which broker user may send which
types and act for which roles (`Senders`). Refused ones are dead-lettered as `unauthorized`.
Everything rescenter publishes carries its own broker user in `user_id`.

On a cluster (`bus.urls`), the connection moves to the next member whenever it is lost or
refused (`ClusterConnection`); quorum queues keep their messages on the surviving members,
robust channels declare again what they declared and consumers come back by themselves.

One robust connection per process; one channel for publishing with confirms;
one channel per consumer group with its own prefetch. Strong references to
every declared queue are kept so that recovery after a reconnect restores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    AbstractRobustQueue,
)
from aio_pika.exceptions import ChannelPreconditionFailed, DeliveryError
from yarl import URL

from core.acks import CoalescedAcks, quietly
from core.clock import utcnow
from core.errors import RescenterError, Unavailable
from core.locks import KeyedLocks
from core.messages import REQUEST_ID, Actor, Catalogue, Envelope, MessageData, Queue, Topology, topic_match
from core.metrics import Metrics
from core.settings import BusAuthorization, BusSettings
from core.store import unreachable

log = structlog.get_logger("rescenter.bus")

#: on a message rescenter replayed from a dead-letter queue: the broker user that sent the original
REPLAYED_FOR = "x-rescenter-replayed-for"

Handler = Callable[[Envelope, MessageData], Awaitable[None]]


class Unroutable(Unavailable):
    """The broker returned a message that no queue could take."""


class ClusterConnection(aio_pika.RobustConnection):
    """A robust connection to the members of a RabbitMQ cluster, one at a time.

    aio-pika's robust connection reconnects to the one URL it was given. Each of its attempts
    starts by dropping the transport (`self.transport = None`) and then connects to `self.url`:
    at that moment this class moves `self.url` to the next member, so that an attempt after a
    lost connection or a refused one goes to another node, round the list."""

    def __init__(self, url: Any, *, members: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._next = 0
        self._members = tuple(members) or (str(url),)

    @property  # type: ignore[override]
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        self.__dict__["_transport"] = value
        members = self.__dict__.get("_members")
        if value is None and members and not self.__dict__.get("_close_called"):
            self.url = URL(members[self._next % len(members)])
            self._next += 1

    @property
    def member(self) -> str:
        """The address in use (or being tried), without its password."""
        return str(self)


@dataclass(frozen=True)
class Subscription:
    """A plugin's declaration: these types (topic patterns) go to this handler."""

    types: tuple[str, ...]
    handler: Handler

    def matches(self, type_: str) -> bool:
        return any(topic_match(pattern, type_) for pattern in self.types)


def broker_user(url: str) -> str | None:
    """The user an AMQP URL connects as (guest when it names none, as the client does), or
    None when a certificate names it (`auth=external`): then the URL cannot tell."""
    parts = urlsplit(url)
    if "auth=external" in parts.query.lower():
        return None
    return unquote(parts.username or "") or "guest"


@dataclass(frozen=True)
class Senders:
    """Which broker user may send which message types to rescenter, acting for which roles
    (`bus.authorization`). The user is the message's AMQP `user_id`: RabbitMQ refuses one
    that is not the publishing connection's own user, so a client holding some broker
    credentials can no longer act as support or as any buyer by writing `data.actor`."""

    settings: BusAuthorization
    own_user: str | None  # rescenter's own broker user: its resolution center sends the core commands

    def refusal(self, user_id: str | None, type_: str, data: MessageData) -> str | None:
        """Why this message may not be applied, or None when it may."""
        if not user_id:
            if not self.settings.require_user_id:
                return None  # development default: as before the map existed
            return (f"{type_} has no user_id property: publish it with user_id set to the broker "
                    "user you connect as")
        if user_id == self.own_user:
            return None
        sender = self.settings.users.get(user_id)
        if sender is None:
            return f"broker user {user_id!r} is not in bus.authorization.users"
        if not any(topic_match(pattern, type_) for pattern in sender.types):
            return f"broker user {user_id!r} may not send {type_}"
        actor = getattr(data, "actor", None)
        if isinstance(actor, Actor) and actor.role not in sender.roles:
            return f"broker user {user_id!r} may not act for the role {actor.role!r} ({type_})"
        return None


@dataclass
class ConsumerGroup:
    name: str
    subscriptions: list[Subscription]
    channel: AbstractRobustChannel | None = None
    queue: AbstractRobustQueue | None = None
    consumer_tag: str | None = None
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    acks: CoalescedAcks = field(default_factory=CoalescedAcks)

    def handler_for(self, type_: str) -> Handler | None:
        for subscription in self.subscriptions:
            if subscription.matches(type_):
                return subscription.handler
        return None

    @property
    def bindings(self) -> list[str]:
        return sorted({t for s in self.subscriptions for t in s.types})


class Bus:
    def __init__(self, settings: BusSettings, catalogue: Catalogue, metrics: Metrics) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.metrics = metrics
        self.connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._dead_exchange: AbstractRobustExchange | None = None
        self._declared: list[Any] = []  # strong references, for recovery
        self.groups: dict[str, ConsumerGroup] = {}
        self._locks = KeyedLocks()
        self.own_user = settings.authorization.service_user or broker_user(settings.url)
        self.senders = Senders(settings.authorization, self.own_user)

    # ------------------------------------------------------------ topology

    @property
    def exchange_name(self) -> str:
        return self.settings.exchange

    def queue_name(self, group: str) -> str:
        return f"{self.settings.queue_prefix}.{group}"

    def dead_queue_name(self, group: str) -> str:
        return f"{self.queue_name(group)}.dead"

    @property
    def dead_exchange_name(self) -> str:
        return f"{self.settings.queue_prefix}.dead"

    @property
    def unrouted_name(self) -> str:
        return f"{self.settings.exchange}.unrouted"

    async def connect(self) -> None:
        addresses = self.settings.addresses
        if len(addresses) == 1:
            self.connection = await aio_pika.connect_robust(
                addresses[0], client_properties={"connection_name": "rescenter"}, reconnect_interval=1,
            )
        else:
            # Not fail-fast: a member that is down at start is skipped for the next one.
            connection = ClusterConnection(
                URL(addresses[0]), members=addresses, fail_fast=False,
                client_properties={"connection_name": "rescenter"}, reconnect_interval=1,
            )
            try:
                async with asyncio.timeout(10 * len(addresses)):
                    await connection.connect()
            except TimeoutError:
                await connection.close()
                raise Unavailable(f"no member of the cluster answers: {', '.join(addresses)}") from None
            self.connection = connection
        self._publish_channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        unrouted_exchange = await self._publish_channel.declare_exchange(
            self.unrouted_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        unrouted = await self._publish_channel.declare_queue(
            self.unrouted_name, durable=True, arguments=await self._unrouted_arguments()
        )
        await unrouted.bind(unrouted_exchange)
        self._exchange = await self._publish_channel.declare_exchange(
            self.exchange_name,
            aio_pika.ExchangeType.TOPIC,
            durable=True,
            arguments={"alternate-exchange": self.unrouted_name},
        )
        self._dead_exchange = await self._publish_channel.declare_exchange(
            self.dead_exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
        )
        self._declared += [unrouted_exchange, unrouted, self._exchange, self._dead_exchange]

    async def _unrouted_arguments(self) -> dict[str, Any]:
        """A quorum queue, replicated like the others, so that an event nobody subscribes to
        survives the loss of a node. Releases before this one declared it as a classic queue,
        which the broker will not turn into another type: that one is used as it is, with a
        warning (delete it once to have it declared anew)."""
        assert self.connection is not None
        arguments: dict[str, Any] = {"x-max-length": self.settings.unrouted_max_length, "x-overflow": "drop-head"}
        trial = await self.connection.channel()  # a refused declaration closes its channel
        try:
            await trial.declare_queue(self.unrouted_name, durable=True,
                                      arguments={**arguments, "x-queue-type": "quorum"})
            return {**arguments, "x-queue-type": "quorum"}
        except ChannelPreconditionFailed as exc:
            log.warning("the unrouted queue is a classic queue from an older release: not replicated; "
                        "delete it to have it declared as a quorum queue", queue=self.unrouted_name,
                        error=str(exc))
            return arguments
        finally:
            with contextlib.suppress(Exception):
                await trial.close()

    @property
    def connected(self) -> bool:
        return bool(self.connection and not self.connection.is_closed and self._publish_channel
                    and not self._publish_channel.is_closed)

    async def declare_group(self, name: str, subscriptions: list[Subscription]) -> ConsumerGroup:
        """Declare the group's queue, its dead-letter queue and its bindings."""
        assert self.connection and self._exchange and self._dead_exchange
        group = ConsumerGroup(name, subscriptions)
        group.channel = await self.connection.channel(publisher_confirms=False)
        await group.channel.set_qos(prefetch_count=self.settings.prefetch)
        queue_name = self.queue_name(name)
        dead = await group.channel.declare_queue(
            self.dead_queue_name(name), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(self.dead_exchange_name, routing_key=queue_name)
        group.queue = await group.channel.declare_queue(
            queue_name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self.settings.delivery_limit,
                "x-dead-letter-exchange": self.dead_exchange_name,
                "x-dead-letter-routing-key": queue_name,
            },
        )
        for pattern in group.bindings:
            await group.queue.bind(self.exchange_name, routing_key=pattern)
        self._declared += [dead, group.queue]
        self.groups[name] = group
        return group

    # ------------------------------------------------------------ publishing

    async def publish(self, envelope: Envelope, *, timeout: float = 10.0) -> None:
        """Publish and wait for the broker's confirm; raise if it was not taken."""
        if self._exchange is None:
            raise Unavailable("the bus is not connected")
        message = aio_pika.Message(
            envelope.body(),
            content_type="application/cloudevents+json",
            message_id=envelope.id,
            type=envelope.type,
            user_id=self.own_user,  # the broker checks it; our own commands are authorized by it
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await _publish_confirmed(self._exchange, message, envelope.type, what=envelope.type, timeout=timeout)
        self.metrics.published.labels(envelope.type).inc()

    async def send_to_queue(self, queue: str, body: bytes, *, message_id: str | None, type: str | None,
                            content_type: str | None, headers: dict[str, Any], timeout: float = 10.0) -> None:
        """Publish straight to one queue (the default exchange), confirmed: a dead letter's replay,
        which only the plugin that failed it should see again."""
        if self._publish_channel is None:
            raise Unavailable("the bus is not connected")
        message = aio_pika.Message(
            body, headers=headers, content_type=content_type, message_id=message_id, type=type,
            user_id=self.own_user, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await _publish_confirmed(self._publish_channel.default_exchange, message, queue,
                                 what=f"a message to {queue}", timeout=timeout)

    async def queue_depths(self, queues: Iterable[str]) -> dict[str, int]:
        """Messages ready in each queue (a passive declare each; a missing queue is left out)."""
        if self.connection is None or self.connection.is_closed:
            raise Unavailable("the bus is not connected")
        depths: dict[str, int] = {}
        channel = await self.connection.channel()
        try:
            for name in queues:
                try:
                    declared = await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelClosed:  # no such queue: the channel is gone
                    await channel.close()
                    channel = await self.connection.channel()
                    continue
                depths[name] = declared.declaration_result.message_count or 0
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return depths

    def sender(self, message: AbstractIncomingMessage) -> str | None:
        """The broker user a message comes from: its `user_id`, which the broker checked; for a
        dead letter rescenter replayed (core.dead_letters), the user that sent the original."""
        headers = message.headers or {}
        if message.user_id and message.user_id == self.own_user and REPLAYED_FOR in headers:
            original = headers[REPLAYED_FOR]
            original = original.decode() if isinstance(original, bytes) else str(original)
            return original or None
        return message.user_id

    async def _dead_letter(
        self, group: ConsumerGroup, message: AbstractIncomingMessage, reason: str, error: str
    ) -> None:
        assert self._dead_exchange
        headers = dict(message.headers or {})
        headers.update(
            {
                "x-rescenter-reason": reason,
                "x-rescenter-error": error[:2000],
                "x-rescenter-queue": self.queue_name(group.name),
                "x-rescenter-routing-key": message.routing_key or "",
                # A string: an AMQP table sends a float as 32 bits, which rounds today's epoch to minutes.
                "x-rescenter-dead-at": utcnow().isoformat(timespec="milliseconds"),
            }
        )
        # The dead letter is ours to publish: the sender is kept as a header, always set by us
        # (a header the sender wrote is not taken for it), and core.dead_letters trusts it
        # because the dead letter's own user_id is rescenter's.
        headers["x-rescenter-user-id"] = message.user_id or ""
        dead = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            type=message.type,
            user_id=self.own_user,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        async with asyncio.timeout(10):
            await self._dead_exchange.publish(
                dead, routing_key=self.queue_name(group.name), mandatory=True
            )
        self.metrics.dead_lettered.labels(group.name, reason).inc()

    # ------------------------------------------------------------ consuming

    async def start_consuming(self, name: str) -> None:
        group = self.groups[name]
        if group.consumer_tag is not None or group.queue is None or not group.bindings:
            return

        async def on_message(message: AbstractIncomingMessage) -> None:
            group.acks.arrived(message)
            task = asyncio.current_task()
            assert task is not None
            group.inflight.add(task)
            try:
                await self._handle(group, message)
            finally:
                group.inflight.discard(task)

        group.consumer_tag = await group.queue.consume(on_message)
        log.info("consumer started", plugin=name, queue=group.queue.name)

    async def stop_consuming(self, name: str, *, grace: float | None = None) -> None:
        """Cancel the group's consumer, then wait for its in-flight messages."""
        group = self.groups.get(name)
        if group is None or group.consumer_tag is None or group.queue is None:
            return
        tag, group.consumer_tag = group.consumer_tag, None
        # A robust connection that is closed, or waiting for the broker, would make the cancel
        # wait forever; the broker drops the consumer with the connection anyway.
        if self.connection is not None and not self.connection.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await group.queue.cancel(tag)
        await self._drain(group, grace)
        await group.acks.drain()
        log.info("consumer stopped", plugin=name)

    async def _drain(self, group: ConsumerGroup, grace: float | None) -> None:
        grace = self.settings.shutdown_grace.total_seconds() if grace is None else grace
        if group.inflight:
            done, pending = await asyncio.wait(set(group.inflight), timeout=grace)
            if pending:
                log.warning("shutdown grace ran out; unacked messages go back to the queue",
                            plugin=group.name, pending=len(pending))

    async def _handle(self, group: ConsumerGroup, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        try:
            envelope, data = self.catalogue.parse(message.body)
        except RescenterError as exc:
            structlog.contextvars.bind_contextvars(
                message_id=message.message_id, type=message.type or message.routing_key,
                plugin=group.name,
            )
            log.warning("invalid message dead-lettered", error=exc.detail)
            await self._settle_dead(group, message, "invalid", exc.detail)
            return
        structlog.contextvars.bind_contextvars(
            message_id=envelope.id, type=envelope.type, order_id=envelope.subject, plugin=group.name,
            request_id=envelope.requestid,
        )
        REQUEST_ID.set(envelope.requestid)  # what the handler publishes carries the same request id
        if message.exchange == self.exchange_name and message.routing_key != envelope.type:
            # The broker routed it by its key: acting on another type would bypass the bindings (and the
            # senders' permissions, which are per type). A replay comes straight to the queue instead.
            log.warning("routing key and type differ; dead-lettered", routing_key=message.routing_key)
            await self._settle_dead(group, message, "unhandled", f"the routing key {message.routing_key!r} "
                                    f"does not match the envelope's type {envelope.type!r}")
            return
        if self.catalogue.types[envelope.type].direction == "consume":
            sender = self.sender(message)
            refusal = self.senders.refusal(sender, envelope.type, data)
            if refusal is not None:
                log.warning("unauthorized message dead-lettered", error=refusal, user_id=sender)
                await self._settle_dead(group, message, "unauthorized", refusal)
                return
        handler = group.handler_for(envelope.type)
        if handler is None:
            await self._settle_dead(group, message, "unhandled", f"no handler for {envelope.type}")
            return
        outcome = "ok"
        try:
            await self._apply(group, handler, envelope, data)
        except RescenterError as exc:
            if exc.permanent:
                outcome = "rejected"
                log.warning("message refused by a rule; dead-lettered", error=exc.detail, rule=exc.rule)
                await self._settle_dead(group, message, "rejected", _describe(exc))
            else:
                outcome = "retry"
                await self._retry(group, message, exc)
        except Exception as exc:  # a bug or an outage: retry up to the delivery limit
            outcome = "retry"
            log.exception("handler failed")
            await self._retry(group, message, exc)
        else:
            group.acks.done(message)
        finally:
            self.metrics.consumed.labels(group.name, envelope.type, outcome).inc()
            self.metrics.handler_seconds.labels(group.name).observe(time.perf_counter() - started)

    async def _apply(self, group: ConsumerGroup, handler: Handler, envelope: Envelope, data: MessageData) -> None:
        """Run the handler; while the store is unreachable, run it again in place. An outage is
        not the message's fault: handing it back would count a delivery each time (the queue's
        `x-delivery-limit`), and a store down for some seconds would dead-letter whatever was
        in flight. The message stays unacknowledged meanwhile (the prefetch bounds how many),
        so a consumer that is stopped, or a process that dies, hands it back as usual."""
        pause = 0.25
        while True:
            try:
                async with self._locks.hold(envelope.subject):
                    await handler(envelope, data)
                return
            except Exception as exc:
                if not unreachable(exc) or group.consumer_tag is None:
                    raise
                self.metrics.store_outage_retries.labels(group.name).inc()
                log.warning("store unreachable; the message waits for it", error=repr(exc), pause=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _retry(self, group: ConsumerGroup, message: AbstractIncomingMessage, exc: BaseException) -> None:
        deliveries = int((message.headers or {}).get("x-delivery-count", 0) or 0) + 1
        if deliveries >= self.settings.delivery_limit:
            log.error("delivery limit reached; dead-lettered", deliveries=deliveries)
            await self._settle_dead(group, message, "delivery_limit", _describe(exc))
            return
        await asyncio.sleep(self.settings.retry_delay.total_seconds() * deliveries)
        await quietly(message.nack(requeue=True))
        group.acks.settled(message)

    async def _settle_dead(
        self, group: ConsumerGroup, message: AbstractIncomingMessage, reason: str, error: str
    ) -> None:
        try:
            await self._dead_letter(group, message, reason, error)
        except Exception:
            # Could not keep it with its reason: let the broker dead-letter it (reason "rejected").
            log.exception("dead-letter publish failed; rejecting to the broker's dead-letter queue")
            await quietly(message.reject(requeue=False))
            group.acks.settled(message)
            return
        group.acks.done(message)

    # ------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        for name in list(self.groups):
            await self.stop_consuming(name)
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RescenterError):
        return f"{exc.rule + ': ' if exc.rule else ''}{exc.detail}"
    return f"{type(exc).__name__}: {exc}"


def topology(settings: BusSettings, bindings: Mapping[str, Iterable[str]]) -> Topology:
    """The queues `Bus.declare_group` declares for these groups (group -> its topic patterns),
    named as it names them, connected or not: what the AsyncAPI document lists."""
    names = Bus(settings, Catalogue(), None)  # type: ignore[arg-type]  # naming only
    return Topology(
        exchange=names.exchange_name,
        unrouted=names.unrouted_name,
        dead_exchange=names.dead_exchange_name,
        delivery_limit=settings.delivery_limit,
        queues=tuple(Queue(group=group, name=names.queue_name(group), bindings=tuple(sorted(set(patterns))),
                           dead_letter_queue=names.dead_queue_name(group))
                     for group, patterns in sorted(bindings.items(), key=lambda item: (item[0] != "core", item[0]))),
    )


async def delete_topology(settings: BusSettings, groups: Iterable[str]) -> None:
    """Delete what `Bus.connect` and `Bus.declare_group` declared for these groups
    (tests and benchmarks that make a topology of their own clean up with it)."""
    names = Bus(settings, Catalogue(), None)  # type: ignore[arg-type]  # naming only
    queues = [q for g in groups for q in (names.queue_name(g), names.dead_queue_name(g))]
    queues.append(names.unrouted_name)
    exchanges = [names.exchange_name, names.unrouted_name, names.dead_exchange_name]
    connection = await aio_pika.connect(settings.url)
    async with connection:
        for kind, name in [("queue", q) for q in queues] + [("exchange", e) for e in exchanges]:
            channel = await connection.channel()  # a failed delete closes its channel
            with contextlib.suppress(Exception):
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)


async def _publish_confirmed(exchange: Any, message: aio_pika.Message, routing_key: str, *, what: str,
                             timeout: float) -> None:
    """Publish (mandatory) and wait for the broker's confirm; any failure as ours: Unroutable if
    the broker returned the message, Unavailable if it did not take it."""
    try:
        async with asyncio.timeout(timeout):
            await exchange.publish(message, routing_key=routing_key, mandatory=True)
    except DeliveryError as exc:
        if exc.frame is not None and hasattr(exc.frame, "reply_text"):
            raise Unroutable(f"{what} was returned: {exc.frame.reply_text}") from exc
        raise Unavailable(f"{what} was not confirmed by the broker") from exc
    except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        raise Unavailable(f"cannot publish {what}: {exc!r}") from exc
    except asyncio.CancelledError as exc:
        if _task_cancelling():
            raise
        # The channel closed under the publish (its node went away): the confirm's future was
        # cancelled, not this task. Not taken: the caller keeps the message for later.
        raise Unavailable(f"the publish of {what} was cut off: the channel closed") from exc


def _task_cancelling() -> bool:
    """Within `except CancelledError`: whether this task is being cancelled (a shutdown), or
    only a future it awaited was (aiormq cancels the pending confirms of a channel that closes)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


__all__ = ["Bus", "ClusterConnection", "Senders", "Subscription", "Unroutable", "broker_user", "delete_topology", "topology"]
