"""Run real instances of the service against the real RabbitMQ and MongoDB-wire
server, each test in its own database, exchange and queues.

    async with Harness() as h:
        a = await h.start_instance()
        buyer = h.client(a, "buyer-1", "buyer")
        order = await buyer.post("/orders", {...})
        event = await h.probe.wait_for("order.placed")
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import aio_pika
import aiohttp

from core.bus import delete_topology
from core.http.auth import issue_token
from core.messages import Envelope, MessageData, make_envelope
from core.service import Service
from core.settings import Settings, load_settings
from tests.contract import Contract


def isolated_settings(tag: str, **sections: dict[str, Any]) -> Settings:
    """Settings isolated under `tag`, with the test clock and fast loops."""
    base = load_settings()
    updates: dict[str, Any] = {
        "service": {"environment": "test"},
        "http": {"port": 0},
        "store": {"database": f"rescenter_test_{tag}"},
        "bus": {"exchange": f"test.{tag}.events", "queue_prefix": f"test.{tag}",
                "retry_delay": timedelta(seconds=0.05), "shutdown_grace": timedelta(seconds=5)},
        "clock": {"mode": "test"},
        "scheduler": {"poll_interval": timedelta(seconds=0.2), "scan_interval": timedelta(seconds=0.5),
                      "lease": timedelta(seconds=3)},
        "outbox": {"sweep_interval": timedelta(seconds=0.2), "lease": timedelta(seconds=1)},
        "plugins": {"poll_interval": timedelta(seconds=0.3)},
    }
    for name, values in sections.items():
        updates.setdefault(name, {}).update(values)
    data = base.model_dump()
    for name, values in updates.items():
        data[name].update(values)
    return Settings.model_validate(data)


class Probe:
    """An independent consumer bound to the exchange, as another service would be."""

    def __init__(self, url: str, exchange: str, patterns: tuple[str, ...] = ("#",)) -> None:
        self.url = url
        self.exchange = exchange
        self.patterns = patterns
        self.messages: list[Envelope] = []
        self._arrived = asyncio.Condition()
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.queue: Any = None

    async def start(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)
        channel = await self.connection.channel()
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True,
            arguments={"alternate-exchange": f"{self.exchange}.unrouted"},
        )
        self.queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for pattern in self.patterns:
            await self.queue.bind(exchange, routing_key=pattern)
        await self.queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            envelope = Envelope.model_validate_json(message.body)
        except Exception:
            return
        async with self._arrived:
            self.messages.append(envelope)
            self._arrived.notify_all()

    def of_type(self, type_: str, subject: str | None = None) -> list[Envelope]:
        return [m for m in self.messages if m.type == type_ and (subject is None or m.subject == subject)]

    async def wait_for(
        self,
        type_: str,
        where: Callable[[Envelope], bool] = lambda m: True,
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[Envelope]:
        def found() -> list[Envelope]:
            return [m for m in self.messages if m.type == type_ and where(m)]

        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(found()) >= count)
        return found()

    async def settle(self, quiet: float = 0.5) -> None:
        """Wait until no message arrived for `quiet` seconds."""
        seen = -1
        while seen != len(self.messages):
            seen = len(self.messages)
            await asyncio.sleep(quiet)

    async def close(self) -> None:
        if self.connection:
            await self.connection.close()


class Client:
    """An HTTP client acting as one user with some roles. Every answer it receives is
    checked against the OpenAPI document the instance serves (tests/contract.py)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.session = session
        self.base = base
        self.token = token
        self._contract: Contract | None = None

    async def contract(self) -> Contract:
        if self._contract is None:
            async with self.session.get(self.base + "/openapi.json") as response:
                assert response.status == 200, f"GET /openapi.json: {response.status}"
                self._contract = Contract.of(await response.json())
        return self._contract

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    async def request(self, method: str, path: str, body: Any = None, *, expect: int | None = None,
                      headers: dict[str, str] | None = None, raw: bytes | None = None) -> Any:
        kwargs: dict[str, Any] = {"headers": self._headers(headers)}
        if raw is not None:
            kwargs["data"] = raw
            kwargs["headers"].setdefault("Content-Type", "application/json")
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + path, **kwargs) as response:
            raw_answer = await response.read()
            text = raw_answer.decode(response.charset or "utf-8")
            payload = json.loads(text) if text and "json" in (response.content_type or "") else text
            (await self.contract()).check(method, str(response.url), response.status, response.content_type,
                                          raw_answer, kwargs["headers"])
            if expect is not None:
                assert response.status == expect, f"{method} {path}: {response.status} {payload}"
            self.last_status = response.status
            self.last_headers = response.headers
            self.last_content_type = response.content_type
            return payload

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.request("PUT", path, body, **kw)


class Harness:
    def __init__(self, **sections: dict[str, Any]) -> None:
        self.tag = uuid.uuid4().hex[:10]
        self.settings = isolated_settings(self.tag, **sections)
        self.instances: list[Service] = []
        self.probe = Probe(self.settings.bus.url, self.settings.bus.exchange)
        self.session: aiohttp.ClientSession | None = None
        self._publisher: aio_pika.abc.AbstractRobustConnection | None = None

    async def __aenter__(self) -> Harness:
        await self.probe.start()
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for service in reversed(self.instances):
            try:
                await service.stop()
            except Exception:
                pass
        await self.probe.close()
        if self.session:
            await self.session.close()
        await self._cleanup()

    async def start_instance(self, **sections: dict[str, Any]) -> Service:
        settings = self.settings
        if sections:
            data = settings.model_dump()
            for name, values in sections.items():
                data[name].update(values)
            settings = Settings.model_validate(data)
        service = Service(settings)
        await service.start()
        self.instances.append(service)
        return service

    def token(self, sub: str, *roles: str, **claims: Any) -> str:
        return issue_token(self.settings.auth, sub, list(roles), **claims)

    def client(self, service: Service, sub: str | None = None, *roles: str) -> Client:
        assert self.session is not None
        token = self.token(sub, *roles) if sub else None
        return Client(self.session, f"http://127.0.0.1:{service.port}", token)

    async def publish(self, type_: str, data: MessageData | dict[str, Any], *, subject: str | None = None,
                      id: str | None = None, raw: bytes | None = None, routing_key: str | None = None) -> Envelope | None:
        """Publish as another marketplace service would."""
        if self._publisher is None:
            self._publisher = await aio_pika.connect_robust(self.settings.bus.url)
        channel = await self._publisher.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(self.settings.bus.exchange)
        envelope = None
        if raw is None:
            if isinstance(data, MessageData):
                from core.clock import utcnow

                envelope = make_envelope(type_, data, subject=subject, time=utcnow(), id=id, source="tests")
            else:
                from core.clock import utcnow

                envelope = Envelope(id=id or uuid.uuid4().hex, source="tests", type=type_, time=utcnow(),
                                    subject=subject, data=data)
            raw = envelope.body()
        await exchange.publish(aio_pika.Message(raw, message_id=envelope.id if envelope else None,
                                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                               routing_key=routing_key or type_)
        await channel.close()
        return envelope

    async def dead_letters(self, group: str, *, count: int = 1, timeout: float = 10.0) -> list[Any]:
        """The group's dead letters as the service kept them (core.dead_letters: the keeper takes
        them from the dead-letter queue into the store), once `count` are there: each with the
        `headers` and `message_id` it died with."""
        from types import SimpleNamespace

        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[Any] = AsyncMongoClient(self.settings.store.url, tz_aware=True)
        queue = f"{self.settings.bus.queue_prefix}.{group}.dead"
        try:
            collection = client[self.settings.store.database]["dead_letters"]
            async with asyncio.timeout(timeout):
                while len(docs := await collection.find({"queue": queue, "state": "dead"}).to_list(None)) < count:
                    await asyncio.sleep(0.1)
        finally:
            await client.close()
        return [SimpleNamespace(headers=d["headers"], message_id=d["message_id"], body=bytes(d["body"]))
                for d in docs]

    async def _cleanup(self) -> None:
        if self._publisher:
            await self._publisher.close()
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[Any] = AsyncMongoClient(self.settings.store.url)
        await client.drop_database(self.settings.store.database)
        await client.close()
        names = {"core", "disputes", "reviews", "availability", "blocking", "metrics", "probe"}
        for service in self.instances:
            if service.services:
                names |= set(service.services.bus.groups)
        await delete_topology(self.settings.bus, names)


ORDER = {"seller_id": "seller-1", "gig_id": "gig-1", "price": {"amount": "120.00", "currency": "EUR"},
         "delivery_days": 3}

__all__ = ["Harness", "Probe", "Client", "ORDER"]
