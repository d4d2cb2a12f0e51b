"""A plugin whose declarations raise, for the tests that one plugin's bug stops neither the
others nor the command line (tests/test_plugin_isolation.py). Its subscriptions declare
fine; its routes and its commands raise."""

from __future__ import annotations

from typing import Any

from core.bus import Subscription
from core.commands import Command
from core.hookspecs import hookimpl
from core.http.routes import Route

NAME = "raising"


@hookimpl
def register_subscriptions(services: Any) -> list[Subscription]:
    async def record(envelope: Any, data: Any) -> None:
        await services.store.collection("raising_seen").insert_one({"_id": envelope.id})

    return [Subscription(types=("order.*",), handler=record)]


@hookimpl
def register_routes() -> list[Route]:
    raise RuntimeError("the raising plugin cannot declare its routes (tests)")


@hookimpl
def register_commands() -> list[Command]:
    raise RuntimeError("the raising plugin cannot declare its commands (tests)")
