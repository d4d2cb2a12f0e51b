"""The console's one way to the service: the JSON API's routes, called in process."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from yarl import URL

from core.errors import Forbidden, RescenterError, Unauthenticated, Unavailable
from core.http.auth import Principal
from core.http.routes import Call, Route, admit, validate_body


class ApiRequest:
    """The request a route handler sees when the console calls it: the route's own path and
    query; everything else (the app, the connection) is the page's request."""

    def __init__(self, page: web.Request, method: str, url: URL, params: dict[str, str]) -> None:
        self._page = page
        self.method = method
        self.rel_url = url
        self.path = url.path
        self.query = url.query
        self.match_info = params

    def __getattr__(self, name: str) -> Any:
        return getattr(self._page, name)


@dataclass
class ConsoleCall(Call):
    """A `Call` made by the console: the route's path parameters come from the page, not the URL."""

    params: dict[str, str] = field(default_factory=dict)

    @property
    def match(self) -> dict[str, str]:
        return dict(self.params)


@dataclass
class Answer:
    """A route's answer, or the problem it raised, for a page that shows either."""

    value: Any = None
    problem: RescenterError | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class ApiCaller:
    def __init__(self, request: web.Request, routes: list[Route], services: Any,
                 principal: Principal | None) -> None:
        self.request = request
        self.routes = {(r.method, r.path): r for r in routes}
        self.services = services
        self.principal = principal

    def route(self, method: str, path: str) -> Route:
        try:
            return self.routes[(method, path)]
        except KeyError:
            raise LookupError(f"the console calls {method} {path}, which no loaded route serves") from None

    def refusal(self, method: str, path: str) -> RescenterError | None:
        """Why the caller may not call the route now (None: it may): no such route loaded, its
        plugin switched off, or none of its roles."""
        if (method, path) not in self.routes:
            return Unavailable(f"{method} {path} is not served: its plugin is not loaded")
        try:
            admit(self.route(method, path), self.services, self.principal)
        except RescenterError as exc:
            return exc
        return None

    async def section(self, path: str, **params: str) -> Answer | None:
        """A page's part read from GET `path`: its answer, or the problem to show in its place;
        None when the caller's roles do not read it at all (the part is left out)."""
        refused = self.refusal("GET", path)
        if isinstance(refused, Forbidden | Unauthenticated):
            return None
        if refused is not None:
            return Answer(problem=refused)
        return await self.answer("GET", path, **params)

    def may(self, method: str, path: str) -> bool:
        """Whether the caller may call the route now (its plugin on, one of its roles): what the
        page offers. The rules the route applies on the order itself still decide the call."""
        if (method, path) not in self.routes:
            return False
        try:
            admit(self.route(method, path), self.services, self.principal)
        except RescenterError:
            return False
        return True

    async def call(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                   query: dict[str, str] | None = None, **params: str) -> Any:
        """Call the route `method path` (its template, e.g. `/orders/{order_id}`) as the JSON API
        would: admitted, the body validated in the same strict mode, the same handler."""
        route = self.route(method, path)
        admit(route, self.services, self.principal)
        parsed = validate_body(route.body, json.dumps(body).encode()) if route.body is not None else None
        url = URL(path.format(**params)).with_query(query or {})
        api_request: Any = ApiRequest(self.request, method, url, params)
        call = ConsoleCall(api_request, self.principal, parsed, self.services, None, params=params)
        return await route.handler(call)

    async def answer(self, method: str, path: str, **kwargs: Any) -> Answer:
        try:
            return Answer(await self.call(method, path, **kwargs))
        except RescenterError as exc:
            return Answer(problem=exc)
