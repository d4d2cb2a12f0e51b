"""The aiohttp application: one table of routes (core's and plugins'), each
wrapped with the same steps: plugin switched on? token? role? strict body?
Every error leaves as RFC 9457 problem+json."""

from __future__ import annotations

import json
import re
import time
import uuid
from contextvars import ContextVar
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import structlog
from aiohttp import web

from core.errors import RescenterError, UnsupportedMediaType
from core.http.auth import Authenticator, Principal
from core.http.idempotency import IdempotencyKeys, IdempotentRequest, Replay, idempotent_request
from core.http.routes import CHANGES, Call, Route, admit, parse_body, refuse_body
from core.messages import REQUEST_ID

log = structlog.get_logger("rescenter.http")

PROBLEM_TYPE = "application/problem+json"
SERVICES: web.AppKey[Any] = web.AppKey("services", object)
ROUTES: web.AppKey[list[Route]] = web.AppKey("routes", list)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body_bytes", int)
IDEMPOTENCY: web.AppKey[IdempotencyKeys] = web.AppKey("idempotency", IdempotencyKeys)


def json_default(value: Any) -> Any:
    """`json.dumps`'s `default`: how every answer of the service turns its values into JSON."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(payload: Any, status: int = 200, **kwargs: Any) -> web.Response:
    return web.json_response(payload, status=status, dumps=lambda v: json.dumps(v, default=json_default), **kwargs)


def problem_response(problem: dict[str, Any], instance: str | None = None) -> web.Response:
    if instance:
        problem.setdefault("instance", instance)
    return web.Response(
        text=json.dumps(problem, default=json_default), status=problem["status"], content_type=PROBLEM_TYPE
    )


REQUEST_ID_HEADER = "X-Request-Id"
#: a request id the caller sends is kept when it looks like one (a UUID, a trace id, ...); any
#: other value is replaced with a new id, so that log lines and events never carry arbitrary text
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
#: set by `_wrap` once the token is read (the same task as the middleware): the caller, for the access log
CALLER: ContextVar[Principal | None] = ContextVar("rescenter_caller", default=None)


def request_id_of(request: web.Request) -> str:
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    return sent if VALID_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex


@web.middleware
async def request_context_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Outermost: the request id (accepted or created, answered in `X-Request-Id`, bound to every
    log line and to every event the request causes) and one access-log line per request."""
    started = time.perf_counter()
    request_id = request_id_of(request)
    structlog.contextvars.clear_contextvars()  # a kept-alive connection's previous request left nothing
    structlog.contextvars.bind_contextvars(request_id=request_id)
    token = REQUEST_ID.set(request_id)
    caller_token = CALLER.set(None)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except web.HTTPException as exc:  # redirects and the like: problems_middleware answered the rest
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    finally:
        principal = CALLER.get()
        access_log = log.error if status >= 500 else log.info
        access_log("request", method=request.method, route=route_of(request), status=status, request_id=request_id,
                   duration_ms=round((time.perf_counter() - started) * 1000, 2),
                   caller=principal.id if principal else None,
                   role=",".join(sorted(principal.roles)) if principal else None)
        REQUEST_ID.reset(token)
        CALLER.reset(caller_token)
        structlog.contextvars.clear_contextvars()


def route_of(request: web.Request) -> str:
    """The route template (`/orders/{order_id}`), never the path: ids stay out of metric labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def problems_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    route = route_of(request)
    metrics = request.app[SERVICES].metrics
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except RescenterError as exc:
        status = exc.status
        if exc.status >= 500:
            log.warning("request failed", path=request.path, error=exc.detail)
        return problem_response(exc.to_problem(), request.path)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        problem = {
            "type": "about:blank", "title": exc.reason, "status": exc.status,
            "detail": exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason,
        }
        if exc.status == 413:
            problem["detail"] = f"the body is larger than {request.app[MAX_BODY]} bytes"
        response = problem_response(problem, request.path)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error", path=request.path)
        return problem_response(
            {"type": "about:blank", "title": "Internal Server Error", "status": 500,
             "detail": "an unexpected error occurred; it has been logged"}, request.path)
    finally:
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_seconds.labels(route).observe(time.perf_counter() - started)


def _is_json(media_type: str) -> bool:
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


async def read_body(request: web.Request, route: Route) -> None:
    """What every change checks of its body before its own model does: at most
    `http.max_body_bytes` (413), sent as JSON when there is one (415), and none at all (or
    `{}`) on a route that takes none (422)."""
    raw = await request.read()
    if raw.strip() and not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"the body must be sent as application/json, not {request.headers.get('Content-Type', 'untyped')}",
            content_type=request.headers.get("Content-Type"))
    if route.body is None:
        refuse_body(raw)


def _wrap(route: Route, authenticator: Authenticator) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        principal = None
        if route.roles is not None and (route.plugin == "core" or route.plugin in services.plugins.enabled):
            principal = authenticator.authenticate(request.headers.get("Authorization"))
            CALLER.set(principal)
        admit(route, services, principal)
        if route.method in CHANGES:
            await read_body(request, route)
        body = await parse_body(request, route.body) if route.body is not None else None
        idempotent = None
        if principal is not None:
            structlog.contextvars.bind_contextvars(user=principal.id)
            # Only a request that passed authentication and validation claims its key.
            payload = (await request.read() or b"null") if route.body is not None else None
            idempotent = idempotent_request(request, principal.id, payload)
        call = Call(request, principal, body, services, idempotent)
        if idempotent is None:
            return await _answer(route, call)
        return await _answer_once(route, call, idempotent, request.app[IDEMPOTENCY])

    handle.__name__ = getattr(route.handler, "__name__", "handle")
    return handle


async def _answer(route: Route, call: Call) -> web.StreamResponse:
    result = await route.handler(call)
    if route.raw:
        return result
    return json_response(result, status=route.status)


async def _answer_once(route: Route, call: Call, idempotent: IdempotentRequest,
                       keys: IdempotencyKeys) -> web.StreamResponse:
    """Run a request sent with an Idempotency-Key once; its repetitions get its answer."""
    claim = await keys.begin(idempotent)
    if isinstance(claim, Replay):
        return claim.response()
    try:
        response = await _answer(route, call)
    except RescenterError as exc:
        if exc.permanent and exc.status < 500:
            # A refusal is an answer too (ORD-3 even records the attempt): a repetition gets it again.
            refusal = problem_response(exc.to_problem(), call.request.path)
            await keys.finish(claim, refusal)
            return refusal
        await keys.release(claim)  # "try again" (writers collided, unavailable): the key stays usable
        raise
    except BaseException:
        await keys.release(claim)
        raise
    if isinstance(response, web.Response):
        await keys.finish(claim, response)
    else:
        await keys.release(claim)
    return response


def build_app(services: Any, routes: list[Route], idempotency: IdempotencyKeys | None = None) -> web.Application:
    settings = services.settings
    app = web.Application(
        middlewares=[request_context_middleware, problems_middleware], client_max_size=settings.http.max_body_bytes
    )
    app[SERVICES] = services
    app[ROUTES] = routes
    app[MAX_BODY] = settings.http.max_body_bytes
    app[IDEMPOTENCY] = idempotency or IdempotencyKeys(services.store, settings.idempotency)
    authenticator = Authenticator(settings.auth)
    seen: set[tuple[str, str]] = set()
    for route in routes:
        key = (route.method, route.path)
        if key in seen:
            raise ValueError(f"route {route.method} {route.path} is declared twice")
        seen.add(key)
        app.router.add_route(route.method, route.path, _wrap(route, authenticator))
    return app


__all__ = ["build_app", "json_default", "json_response", "problem_response", "ROUTES", "SERVICES"]
