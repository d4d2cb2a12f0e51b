"""Every hook a plugin may implement.

Hooks are called with keyword arguments only, so a spec can grow without
breaking implementations that ask for fewer. pluggy is synchronous: a hook
returns a declaration, or an awaitable that the core awaits (no I/O inside the
hook call itself). `services` is the `core.services.Services` of the running
instance: store, bus, clock, scheduler, orders, settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from core.bus import Subscription
    from core.commands import Command
    from core.http.routes import Route
    from core.messages import MessageType, PlaceOrder
    from core.scheduler import DeadlineHandler
    from core.services import Services
    from core.vetoes import Veto
    from core.whatif import PolicyReplay

hookspec = pluggy.HookspecMarker("rescenter")
hookimpl = pluggy.HookimplMarker("rescenter")


@hookspec
def register_message_types() -> list[MessageType]:
    """Message types the plugin publishes or consumes, for the catalogue and AsyncAPI."""


@hookspec
def register_subscriptions(services: Services) -> list[Subscription]:
    """Message types (topic patterns) the plugin consumes, each with its handler."""


@hookspec
def register_routes(services: Services) -> list[Route]:
    """HTTP routes the plugin serves; refused with a problem while it is off."""


@hookspec
def register_deadline_handlers(services: Services) -> dict[str, DeadlineHandler]:
    """Handlers of the plugin's deadlines, by kind."""


@hookspec
def register_outbox_collections() -> list[str]:
    """Collections whose documents carry pending effects (`_outbox`) to sweep."""


@hookspec
def register_commands() -> list[Command]:
    """Command-line commands of the plugin, run as `rescenter <plugin> <command>`."""


@hookspec
def register_policy_replays() -> list[PolicyReplay]:
    """Policy keys the plugin can replay over the facts it keeps, for the what-if (reads only)."""


@hookspec
def startup(services: Services) -> Any:
    """Prepare the plugin's collections (indexes); may return an awaitable."""


@hookspec
def veto_order(services: Services, order: PlaceOrder) -> Veto | None:
    """Refuse a new order with a reason (ORD-5), or return None; may be awaitable."""


@hookspec
def order_not_placed(services: Services, order: PlaceOrder, reason: str) -> Any:
    """Another plugin refused the order: undo what `veto_order` reserved for it."""
