"""The bus alone: the service's AMQP traffic per command, without its store or its rules.

    python bench/fanout.py --exchange E --prefix P --queues '{"core": ["command.order.#"], ...}'

bench/throughput.py starts this as a process of its own, in place of the service, with the
queues and bindings the running service documents in its AsyncAPI document (`x-bindings`
of each queue channel). It declares the same quorum queues (same prefetch, same delivery
limit) bound to an exchange of its own, and consumes them as the service does:

- the `core` queue: for each command of the bench's lifecycle, publish the event the
  service would publish (mandatory, waiting for the broker's confirm), then ack;
- every other queue (the plugins'): ack;

acks coalesced as the service sends them (core.acks).

Given one group named `process`, bound to every pattern of every group, it measures the
other topology: one queue per service process, the process handing each event to its
plugins itself (commands published as events, everything else acked).

So the same load as the service's (the same commands, the same events delivered to the same
queues and to the bench's tap) measures what the broker and aio-pika alone allow on this
machine: the ceiling of the service with a free store and free rules. It prints `ready` when
it consumes, and deletes its queues on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.acks import CoalescedAcks  # noqa: E402

EVENT_OF_COMMAND = {
    "command.order.place": "order.placed",
    "command.order.submit_requirements": "order.requirements_submitted",
    "command.order.deliver": "order.delivered",
    "command.order.accept": "order.completed",
}


async def serve(url: str, exchange_name: str, prefix: str, queues: dict[str, list[str]], prefetch: int,
                delivery_limit: int) -> None:
    connection = await aio_pika.connect_robust(url)
    async with connection:
        publish_channel = await connection.channel(publisher_confirms=True)
        exchange = await publish_channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        declared: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        for group, patterns in queues.items():
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.declare_queue(
                f"{prefix}.{group}", durable=True,
                arguments={"x-queue-type": "quorum", "x-delivery-limit": delivery_limit})
            for pattern in patterns:
                await queue.bind(exchange_name, routing_key=pattern)
            handle = on_command(exchange) if group in ("core", "process") else on_event
            declared.append((queue, await queue.consume(acknowledging(handle, CoalescedAcks()))))
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for queue, tag in declared:
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()


def acknowledging(handle: Any, acks: CoalescedAcks) -> Any:
    """Acks as the service sends them (core.acks: one frame per run of finished deliveries)."""
    async def consume(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        acks.arrived(message)
        await handle(message)
        acks.done(message)
    return consume


def on_command(exchange: aio_pika.abc.AbstractExchange) -> Any:
    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = EVENT_OF_COMMAND.get(message.routing_key or "")
        if event is not None:
            body = json.loads(message.body)
            body["type"] = event
            await exchange.publish(
                aio_pika.Message(json.dumps(body).encode(), message_id=message.message_id,
                                 content_type="application/json",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=event, mandatory=True)
    return handle


async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    pass  # a plugin's handler, free: only the ack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--queues", required=True, help="JSON: consumer group -> its topic patterns")
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--delivery-limit", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(serve(args.url, args.exchange, args.prefix, json.loads(args.queues), args.prefetch,
                      args.delivery_limit))


if __name__ == "__main__":
    main()
