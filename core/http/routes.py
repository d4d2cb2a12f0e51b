"""Route declarations: the core's and the plugins' HTTP routes, one table.

The app is built from the table and so is the OpenAPI document, so the two
cannot drift apart. A route names the roles that may call it (None: public),
its strict request body model, and the rules it enforces.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import Forbidden, InvalidInput, PluginDisabled, Unauthenticated
from core.http.auth import Principal
from core.http.idempotency import IdempotentRequest
from core.messages import Actor

Handler = Callable[["Call"], Awaitable[Any]]

#: the methods that change something: their bodies are checked (core.http.app.read_body)
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALL_ROLES = frozenset({"buyer", "seller", "support", "admin", "service"})
STAFF = frozenset({"support", "admin", "service"})
SUPPORT = frozenset({"support", "admin"})
#: routes about a seller's own settings: the seller, or support acting for them
SELLER_OR_SUPPORT = frozenset({"seller"}) | SUPPORT


@dataclass(frozen=True)
class QueryParam:
    """A query parameter as the OpenAPI document describes it (a bare name in `Route.query`
    is an optional string); the handler still reads and checks it itself."""

    name: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    description: str | None = None


class Body(BaseModel):
    """Base of request bodies: unknown fields are refused, values are strict (`parse_body`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    roles: frozenset[str] | None = ALL_ROLES  # None: no token needed
    body: type[BaseModel] | None = None
    #: the model of the answer (2xx): OpenAPI's response schema; only `raw` routes go without
    response: type[BaseModel] | None = None
    status: int = 200
    rules: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    plugin: str = "core"
    #: more OpenAPI responses, by status: a problem the declaration does not imply (see
    #: core.http.openapi), or a route's own description of one
    responses: dict[str, Any] = field(default_factory=dict)
    query: tuple[str | QueryParam, ...] = ()
    raw: bool = False  # the handler returns a web.Response itself


@dataclass
class Call:
    """One request as a handler sees it: who, what, and the services."""

    request: web.Request
    principal: Principal | None
    body: Any
    services: Any
    #: the request's Idempotency-Key, when it was sent with one (core.http.idempotency)
    idempotent: IdempotentRequest | None = None

    @property
    def match(self) -> dict[str, str]:
        return dict(self.request.match_info)

    def actor(self, party: str | None = None) -> Actor:
        """The caller as an actor: staff act as staff, users as the party they claim."""
        assert self.principal is not None
        return self.principal.actor(party)

    def acting_for_seller(self, seller_id: str, what: str = "this") -> Actor:
        """The seller themselves, or support acting for them; anyone else is refused."""
        assert self.principal is not None
        if self.principal.roles & SUPPORT:
            return self.actor()
        if "seller" in self.principal.roles and self.principal.id == seller_id:
            return self.actor("seller")
        raise Forbidden(f"only the seller (or support) can see or change {what}", seller_id=seller_id)

    @property
    def idempotency_key(self) -> str | None:
        """The message id a command remembers for this request when it came with an
        `Idempotency-Key`: one per caller, key, method, path and body. The HTTP layer has
        already answered repetitions and refused a key reused for another request."""
        return self.idempotent.message_id if self.idempotent is not None else None


def admit(route: Route, services: Any, principal: Principal | None) -> None:
    """Whether `principal` may call `route` now: its plugin is on and the caller holds one of its
    roles. The JSON API and the console (core.console) both ask here, so they cannot disagree."""
    if route.plugin != "core" and route.plugin not in services.plugins.enabled:
        raise PluginDisabled(f"the {route.plugin} plugin is switched off", plugin=route.plugin)
    if route.roles is None:
        return
    if principal is None:
        raise Unauthenticated("an Authorization: Bearer token is required")
    if not principal.has_any(route.roles):
        raise Forbidden(f"this needs one of the roles: {', '.join(sorted(route.roles))}")


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """Validate the body in pydantic's strict JSON mode: every value must already have its
    JSON type (a boolean is true or false, an integer is not "3" nor 3.0 nor true); only
    the strings the JSON Schema promises (date-times, durations) are read as such."""
    return validate_body(model, await request.read() or b"null")


def _members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) < len(pairs):
        repeated = sorted(name for name, count in Counter(name for name, _ in pairs).items() if count > 1)
        # JSON parsers disagree on which one wins (RFC 8259 §4): refuse rather than guess.
        raise InvalidInput(f"the body names {', '.join(repr(n) for n in repeated)} more than once",
                           errors=[{"field": n, "message": "member given more than once"} for n in repeated])
    return members


def read_json(raw: bytes) -> Any:
    """The body as JSON: valid, and no object naming a member twice."""
    try:
        return json.loads(raw, object_pairs_hook=_members)
    except ValueError:  # UnicodeDecodeError too
        raise InvalidInput("the body is not valid JSON") from None


def validate_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    """`parse_body` on bytes already read (the console validates its forms here, as JSON)."""
    read_json(raw)
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors()
        ]
        raise InvalidInput(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        ) from None


def refuse_body(raw: bytes) -> None:
    """A route without a body model takes no body: none at all, or an empty JSON object.
    Anything else (a field, invalid JSON) is refused, so that a body sent to the wrong
    route (a revision's reason posted to the acceptance) changes nothing."""
    if not raw.strip():
        return
    value = read_json(raw)
    if value == {}:
        return
    if isinstance(value, dict):
        errors = [{"field": name, "message": "Extra inputs are not permitted"} for name in value]
        raise InvalidInput("this request takes no body: " + "; ".join(f"{e['field']}: {e['message']}"
                                                                         for e in errors), errors=errors)
    raise InvalidInput("this request takes no body: send none, or {}", errors=[
        {"field": "body", "message": "no body expected"}])


def page_limit(raw: str | None, *, default: int, maximum: int) -> int:
    """A `limit` query parameter: a whole number from 1 to `maximum`, `default` when absent."""
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InvalidInput(f"'limit' must be a whole number from 1 to {maximum}", field="limit", limit=raw)
    return int(raw)
