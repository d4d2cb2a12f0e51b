"""Acknowledgements of a consumer group, coalesced into one frame per run of settled deliveries.

A consumer acknowledged each delivery with a frame of its own: three frames per command
(the core's and about two plugins'), each one a socket write here and a settlement the
broker appends to the quorum queue's log. `basic.ack` with `multiple` settles every
delivery up to a tag at once, but *every* outstanding one on the channel, so it is only
safe over deliveries that are all settled:

- a delivery is tracked from its arrival, on the channel it came on (tags are per channel;
  a channel reopened after a lost connection starts anew, and the broker hands back what
  the old one held);
- when handlers finish (`done`), one flush per turn of the event loop acks the run of
  settled deliveries at the front, oldest first, with a single frame;
- a delivery still in hand stops the run: it is never covered. One that is to be handed
  back or dead-lettered is settled on its own, at once (`settled`, after its frame went
  out), and the run goes on past it;
- deliveries done behind one still in hand are acked one by one after `STUCK` seconds, so
  a slow message (a retry's pause, a store outage) does not hold the prefetch window.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

log = structlog.get_logger("rescenter.bus")

#: how long a finished delivery may wait behind one still in hand before it is acked alone
STUCK = 0.05

_SETTLED = object()  # settled on its own: passed over, never acked again


@dataclass
class _Channel:
    tags: list[int] = field(default_factory=list)  # outstanding, oldest first
    state: dict[int, Any] = field(default_factory=dict)  # tag -> None (in hand), its message (done), _SETTLED


class CoalescedAcks:
    """One consumer group's deliveries, from arrival to acknowledgement (the module says how)."""

    def __init__(self) -> None:
        self._channels: dict[Any, _Channel] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        self._stuck_scheduled = False

    def arrived(self, message: AbstractIncomingMessage) -> None:
        channel = self._channel_of(message)
        if channel is None or message.delivery_tag is None:
            return
        tag = message.delivery_tag
        if not channel.tags or tag > channel.tags[-1]:
            channel.tags.append(tag)
        else:
            bisect.insort(channel.tags, tag)
        channel.state[tag] = None

    def done(self, message: AbstractIncomingMessage) -> None:
        """The delivery is handled: ack it, with the run it belongs to."""
        channel = self._channel_of(message)
        if channel is None or message.delivery_tag not in channel.state:
            # Its channel closed since: the ack fails (logged) and the broker hands it back.
            self._send(message.ack())
            return
        channel.state[message.delivery_tag] = message
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def settled(self, message: AbstractIncomingMessage) -> None:
        """The delivery was handed back, rejected or acked on its own: pass over it."""
        channel = self._channel_of(message)
        if channel is not None and message.delivery_tag in channel.state:
            channel.state[message.delivery_tag] = _SETTLED

    async def drain(self) -> None:
        """Ack every finished delivery now, and wait for the frames (before a consumer stops)."""
        self._flush()
        self._ack_alone()
        if self._sending:
            await asyncio.wait(set(self._sending))

    # ------------------------------------------------------------ internals

    def _channel_of(self, message: AbstractIncomingMessage) -> _Channel | None:
        try:
            underlying = message.channel
        except Exception:  # closed: what it held goes back to the queue
            return None
        channel = self._channels.get(underlying)
        if channel is None:
            for old in [c for c in self._channels if c.is_closed]:
                del self._channels[old]
            channel = self._channels[underlying] = _Channel()
        return channel

    def _flush(self) -> None:
        self._flush_scheduled = False
        stuck = False
        for channel in self._channels.values():
            last = None
            while channel.tags and channel.state[channel.tags[0]] is not None:
                entry = channel.state.pop(channel.tags.pop(0))
                if entry is not _SETTLED:
                    last = entry
            if last is not None:
                self._send(last.ack(multiple=True))
            stuck = stuck or any(channel.state[t] not in (None, _SETTLED) for t in channel.tags)
        if stuck and not self._stuck_scheduled:
            self._stuck_scheduled = True
            asyncio.get_running_loop().call_later(STUCK, self._ack_stuck)

    def _ack_stuck(self) -> None:
        self._flush()  # the run may have moved meanwhile (no new timer: one is running)
        self._ack_alone()
        self._stuck_scheduled = False

    def _ack_alone(self) -> None:
        """Ack on its own each finished delivery still behind one in hand."""
        for channel in self._channels.values():
            for tag in channel.tags:
                message = channel.state[tag]
                if message is not None and message is not _SETTLED:
                    channel.state[tag] = _SETTLED
                    self._send(message.ack())

    def _send(self, ack: Any) -> None:
        task = asyncio.ensure_future(quietly(ack))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


async def quietly(awaitable: Awaitable[Any]) -> None:
    """Ack/nack on a channel that died meanwhile: the broker redelivers; handlers are idempotent."""
    try:
        await awaitable
    except Exception as exc:
        log.warning("could not settle message; it will be redelivered", error=repr(exc))
