"""What the framework hands to plugins and handlers (Nameko-style dependencies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.bus import Bus
    from core.clock import Clock
    from core.dead_letters import DeadLetters
    from core.messages import Actor, Catalogue
    from core.metrics import Metrics
    from core.orders import OrderService
    from core.outbox import Outbox
    from core.scheduler import Scheduler
    from core.settings import Settings
    from core.store import Store


class Plugins(Protocol):
    """What routes and handlers use of the plugin registry (core.plugins.PluginRegistry),
    declared here so that these declarations depend on no implementation."""

    enabled: set[str]

    def describe(self) -> list[dict[str, Any]]: ...

    async def switch(self, name: str, on: bool, actor: Actor, outbox: Outbox, clock: Clock) -> bool: ...

    async def stop(self) -> None: ...


@dataclass
class Services:
    settings: Settings
    clock: Clock
    store: Store
    bus: Bus
    outbox: Outbox
    scheduler: Scheduler
    orders: OrderService
    plugins: Plugins
    catalogue: Catalogue
    metrics: Metrics
    instance: str
    #: dead letters of every queue: kept, listed, replayed, discarded (set once the queues are declared)
    dead_letters: DeadLetters | None = None
