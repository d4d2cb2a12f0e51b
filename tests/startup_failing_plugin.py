"""A plugin whose `startup` fails once awaited (its indexes cannot be made), for
tests/test_plugin_isolation.py. It declares a route, which must then answer 503."""

from __future__ import annotations

from typing import Any

from core.hookspecs import hookimpl
from core.http.responses import View
from core.http.routes import Call, Route

NAME = "startup_failing"


class Pong(View):
    pong: bool


@hookimpl
def register_routes() -> list[Route]:
    async def ping(call: Call) -> dict[str, Any]:
        return {"pong": True}

    return [Route("GET", "/startup-failing/ping", ping, "Answers while the plugin runs (tests).", response=Pong)]


@hookimpl
def startup(services: Any) -> Any:
    async def prepare() -> None:
        raise ValueError("the startup_failing plugin cannot prepare its collections (tests)")

    return prepare()
