"""What the framework hands to plugins and handlers (Nameko-style dependencies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.bus import Bus
    from core.clock import Clock
    from core.messages import Catalogue
    from core.metrics import Metrics
    from core.orders import OrderService
    from core.outbox import Outbox
    from core.plugins import PluginRegistry
    from core.scheduler import Scheduler
    from core.settings import Settings
    from core.store import Store


@dataclass
class Services:
    settings: Settings
    clock: Clock
    store: Store
    bus: Bus
    outbox: Outbox
    scheduler: Scheduler
    orders: OrderService
    plugins: PluginRegistry
    catalogue: Catalogue
    metrics: Metrics
    instance: str
