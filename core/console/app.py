"""The console's pages (a sub-application mounted at `/console`).

Pages read through the JSON API's routes (`core.console.api`); forms post here,
carry a CSRF token, call the route the JSON API would, then redirect back to the
page (post/redirect/get). A refusal is shown as a readable page, not as JSON.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from core.console.api import Answer, ApiCaller
from core.console.session import CSRF_FIELD, Session, require
from core.errors import Forbidden, InvalidInput, NotFound, RescenterError, Unauthenticated, Unavailable
from core.http.app import CALLER, ROUTES, SERVICES
from core.http.auth import Principal
from core.http.routes import SUPPORT, admit
from core.order_pages import order_page
from core.orders import COLLECTION as ORDERS
from core.orders import public_view

log = structlog.get_logger("rescenter.console")

STATIC = Path(__file__).parent / "static"
SESSION: web.AppKey[Session] = web.AppKey("console_session", Session)
FINAL_STATES = ("completed", "cancelled")
#: Orders listed per party on a search by buyer or seller id.
SEARCH_LIMIT = 50
#: What a form did, shown on the page it redirects to (?done=...).
NOTICES = {
    "cancelled": "The order was cancelled.",
    "flagged": "The cancellation was flagged: it no longer counts in the seller's completion rate (MET-2).",
    "unflagged": "The flag was cleared.",
    "review-removed": "The review was removed; the reason is kept on record (REV-8).",
    "switched-on": "The plugin was switched on; every instance follows within seconds.",
    "switched-off": "The plugin was switched off; every instance follows within seconds.",
}


# ---------------------------------------------------------------- plumbing


def signed_in(request: web.Request) -> Principal | None:
    """The caller of the session cookie (checked again on each use: a signature check is cheap,
    and the request keeps no state of the console's)."""
    return request.app[SESSION].principal(request)


def api(request: web.Request) -> ApiCaller:
    return ApiCaller(request, request.config_dict[ROUTES], request.config_dict[SERVICES], signed_in(request))


def render(request: web.Request, template: str, context: dict[str, Any], *, status: int = 200) -> web.Response:
    session = request.app[SESSION]
    seed, new = session.csrf_seed(request)
    caller = api(request)
    services = request.config_dict[SERVICES]
    notice = NOTICES.get(request.query.get("done", ""))
    base = {
        "principal": caller.principal,
        "csrf_field": CSRF_FIELD,
        "csrf_token": session.csrf_token(seed),
        "may": caller.may,
        "clock_mode": services.clock.mode,
        "notice": notice,
        "now": services.clock.now(),
    }
    response = aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)
    if new:
        session.remember_seed(request, response, seed)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'; form-action 'self'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


async def form_of(request: web.Request) -> dict[str, str]:
    """The posted form, once its CSRF token was checked."""
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    request.app[SESSION].check_csrf(request, form)
    return form


def back_to(location: str, done: str | None = None) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"{location}?done={done}" if done else location)


@web.middleware
async def console_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Who is signed in; and every refusal as a page: RFC 9457's fields in words."""
    try:
        try:
            CALLER.set(signed_in(request))  # the access log names the console's caller too
        except Unauthenticated:
            response = web.Response(status=303, headers={"Location": "/console/sign-in?expired=1"})
            Session.sign_out(response)  # a token no longer valid (expired): the session ends
            return response
        return await handler(request)
    except Unauthenticated as exc:
        if request.method == "GET":
            raise web.HTTPSeeOther("/console/sign-in") from exc
        return render(request, "problem.html", {"problem": exc.to_problem()}, status=exc.status)
    except RescenterError as exc:
        if exc.status >= 500:
            log.warning("console request failed", path=request.path, error=exc.detail)
        return render(request, "problem.html", {"problem": exc.to_problem()}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = {"type": "about:blank", "title": exc.reason, "status": exc.status, "detail": exc.reason}
        return render(request, "problem.html", {"problem": problem}, status=exc.status)


# ---------------------------------------------------------------- sign-in


async def home(request: web.Request) -> web.StreamResponse:
    principal = signed_in(request)
    if principal is None:
        raise web.HTTPSeeOther("/console/sign-in")
    return render(request, "home.html", {})


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    return render(request, "sign_in.html", {"expired": "expired" in request.query})


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    token = form.get("token", "")
    response = web.Response(status=303, headers={"Location": "/console/"})
    if not token.strip():
        raise InvalidInput("paste a token to sign in", field="token")
    request.app[SESSION].sign_in(request, response, token)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await form_of(request)
    response = web.Response(status=303, headers={"Location": "/console/sign-in"})
    Session.sign_out(response)
    return response


# ---------------------------------------------------------------- plugins


async def queue_figures(services: Any, plugin: str) -> dict[str, int | None]:
    """The plugin's queue depth and its consumers (every instance), read from the broker;
    None where the plugin has no queue or the broker did not say."""
    bus = services.bus
    figures: dict[str, int | None] = {"depth": None, "consumers": None}
    if plugin not in bus.groups or bus.connection is None:
        return figures
    try:
        channel = await bus.connection.channel()
        try:
            queue = await channel.declare_queue(bus.queue_name(plugin), passive=True)
            figures["depth"] = queue.declaration_result.message_count
            figures["consumers"] = queue.declaration_result.consumer_count
        finally:
            await channel.close()
    except Exception as exc:  # the page still shows the rest
        log.warning("queue figures unavailable", plugin=plugin, error=str(exc))
    return figures


async def plugins_page(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    caller = api(request)
    listed = await caller.call("GET", "/admin/plugins")
    services = request.config_dict[SERVICES]
    # Dead letters leave their queue for the store at once (core.dead_letters): counted there.
    dead: dict[str, Any] = {}
    if caller.may("GET", "/admin/dead-letters"):
        dead = {q.plugin: q for q in (await caller.call("GET", "/admin/dead-letters")).queues}
    rows = [{**plugin, **(await queue_figures(services, plugin["name"])), "dead": dead.get(plugin["name"])}
            for plugin in listed["plugins"]]
    return render(request, "plugins.html", {"plugins": rows})


def _plugin_target(value: str | None) -> bool:
    if value not in ("on", "off"):
        raise InvalidInput("the switch goes 'on' or 'off'", field="to")
    return value == "on"


async def plugin_switch_page(request: web.Request) -> web.StreamResponse:
    """The confirmation step: switching a plugin changes every instance."""
    name = request.match_info["name"]
    caller = api(request)
    require(signed_in(request))
    listed = await caller.call("GET", "/admin/plugins")
    plugin = next((p for p in listed["plugins"] if p["name"] == name), None)
    if plugin is None:
        raise NotFound(f"no plugin named {name!r}")
    on = _plugin_target(request.query.get("to"))
    if not caller.may("PUT", "/admin/plugins/{name}"):
        raise Forbidden("switching a plugin needs the role admin")
    return render(request, "plugin_switch.html", {"plugin": plugin, "on": on})


async def plugin_switch(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    name = request.match_info["name"]
    on = _plugin_target(form.get("to"))
    await api(request).call("PUT", "/admin/plugins/{name}", body={"enabled": on}, name=name)
    raise back_to("/console/plugins", "switched-on" if on else "switched-off")


# ---------------------------------------------------------------- orders


async def orders_search(request: web.Request) -> web.StreamResponse:
    """By order id, or every order of a buyer or a seller (support and admins)."""
    principal = require(signed_in(request))
    query = request.query.get("q", "").strip()
    found: dict[str, list[dict[str, Any]]] = {}
    if query:
        caller = api(request)
        order = await caller.answer("GET", "/orders/{order_id}", order_id=query)
        if order.ok:
            raise web.HTTPSeeOther(f"/console/orders/{query}")
        if principal.has_any(SUPPORT):
            # The same pages as GET /orders, for any party: support reads every order.
            collection = request.config_dict[SERVICES].store.collection(ORDERS)
            for role in ("buyer", "seller"):
                page = await order_page(collection, role, query, limit=SEARCH_LIMIT)
                if page.orders:
                    found[role] = [public_view(o) for o in page.orders]
    return render(request, "orders_search.html", {"query": query, "found": found,
                                                  "support": principal.has_any(SUPPORT)})


async def order_page_view(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    order_id = request.match_info["order_id"]
    caller = api(request)
    order = await caller.call("GET", "/orders/{order_id}", order_id=order_id)
    timeline = await caller.call("GET", "/orders/{order_id}/timeline", order_id=order_id)

    async def section(path: str) -> Answer | None:
        return await caller.section(path, order_id=order_id)

    review = await section("/orders/{order_id}/review")
    context = {
        "order": order,
        "timeline": timeline["entries"],
        "resolution": await section("/orders/{order_id}/resolution"),
        "deadlines": await section("/orders/{order_id}/deadlines"),
        "eligibility": await section("/orders/{order_id}/review-eligibility"),
        "review": review if review is not None and (review.ok or review.problem.status != 404) else None,
        "flag": await section("/orders/{order_id}/cancellation-flag") if order["state"] == "cancelled" else None,
        "final": order["state"] in FINAL_STATES,
    }
    return render(request, "order.html", context)


async def order_cancel(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    order_id = request.match_info["order_id"]
    await api(request).call("POST", "/orders/{order_id}/cancellation", body={"reason": form.get("reason", "")},
                            order_id=order_id)
    raise back_to(f"/console/orders/{order_id}", "cancelled")


async def order_flag(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    order_id = request.match_info["order_id"]
    caller = api(request)
    if form.get("flag") == "none":
        await caller.call("DELETE", "/orders/{order_id}/cancellation-flag", order_id=order_id)
        raise back_to(f"/console/orders/{order_id}", "unflagged")
    await caller.call("PUT", "/orders/{order_id}/cancellation-flag",
                      body={"flag": form.get("flag", ""), "note": form.get("note", "")}, order_id=order_id)
    raise back_to(f"/console/orders/{order_id}", "flagged")


async def review_removal(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    order_id = request.match_info["order_id"]
    await api(request).call("POST", "/reviews/{review_id}/removal", body={"reason": form.get("reason", "")},
                            review_id=form.get("review_id", ""))
    raise back_to(f"/console/orders/{order_id}", "review-removed")


# ---------------------------------------------------------------- sellers


async def sellers_search(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    query = request.query.get("q", "").strip()
    if query:
        raise web.HTTPSeeOther(f"/console/sellers/{query}")
    return render(request, "seller_search.html", {})


async def seller_page(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    seller_id = request.match_info["seller_id"]
    caller = api(request)

    async def section(path: str) -> Answer | None:
        return await caller.section(path, seller_id=seller_id)

    return render(request, "seller.html", {
        "seller_id": seller_id,
        "metrics": await section("/sellers/{seller_id}/metrics"),
        "availability": await section("/availability/sellers/{seller_id}"),
        "availability_settings": await section("/availability/sellers/{seller_id}/settings"),
        "blocked": await section("/blocking/sellers/{seller_id}/blocked-buyers"),
    })


# ---------------------------------------------------------------- clock


async def clock_page(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    clock = await api(request).call("GET", "/admin/clock")
    return render(request, "clock.html", {"clock": clock, "fired": None})


async def clock_advance(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    caller = api(request)
    moved = await caller.call("POST", "/admin/clock/advance", body={"by": form.get("by", "").strip()})
    # Rendered, not redirected: what fired on the way is this answer's alone.
    return render(request, "clock.html", {"clock": moved, "fired": moved["fired"], "by": form.get("by")})


# ---------------------------------------------------------------- policy what-if

WHAT_IF = "/admin/policy/what-if"


async def policy_page(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    caller = api(request)
    admit(caller.route("POST", WHAT_IF), caller.services, caller.principal)
    return render(request, "policy.html", {"answer": None, "tables": [], "form": {}, "keys": _replay_keys(caller)})


async def policy_what_if(request: web.Request) -> web.StreamResponse:
    """The same replay as `POST /admin/policy/what-if` (core/whatif.py), shown as the tables the
    command line prints: nothing is written."""
    form = await form_of(request)
    caller = api(request)
    changes: dict[str, str] = {}
    for line in form.get("set", "").splitlines():
        if line.strip():
            key, sep, value = line.partition("=")
            if not sep:
                raise InvalidInput(f"{line.strip()!r}: write each change as KEY=VALUE", field="set")
            if key.strip() in changes:  # as the route refuses a member named twice
                raise InvalidInput(f"{key.strip()!r} is set twice: give each key once", field="set")
            changes[key.strip()] = value.strip()
    body: dict[str, Any] = {"set": changes}
    if form.get("at", "").strip():
        body["at"] = form["at"].strip()
    sellers = [s.strip() for s in form.get("sellers", "").split(",") if s.strip()]
    if sellers:
        body["sellers"] = sellers
    answer = await caller.call("POST", WHAT_IF, body=body)
    tables = [table for replay in caller.services.plugins.policy_replays() if answer.get(replay.section) is not None
              for table in replay.tables(answer[replay.section])]
    return render(request, "policy.html", {"answer": answer, "tables": tables, "form": form,
                                           "keys": _replay_keys(caller)})


def _replay_keys(caller: ApiCaller) -> list[str]:
    return sorted(key for replay in caller.services.plugins.policy_replays() for key in replay.keys)


# ---------------------------------------------------------------- dead letters


async def dead_letters_page(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    summary = await api(request).call("GET", "/admin/dead-letters")
    return render(request, "dead_letters.html", {"queues": summary.queues})


async def dead_letter_queue_page(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    queue = request.match_info["queue"]
    query = {k: request.query[k] for k in ("after",) if request.query.get(k)}
    page = await api(request).call("GET", "/admin/dead-letters/{queue}", query=query, queue=queue)
    return render(request, "dead_letter_queue.html", {"page": page, "queue": queue})


async def dead_letter_message_page(request: web.Request) -> web.StreamResponse:
    require(signed_in(request))
    queue, message_id = request.match_info["queue"], request.match_info["id"]
    caller = api(request)
    # No route of its own: admitted as the queue's page is, then the same service reads it.
    admit(caller.route("GET", "/admin/dead-letters/{queue}"), caller.services, caller.principal)
    dead_letters = caller.services.dead_letters
    if dead_letters is None:
        raise Unavailable("dead letters are not available yet: the service is starting")
    message = await dead_letters.get(queue, message_id)
    body = json.dumps(message.body, indent=2, ensure_ascii=False) if not isinstance(message.body, str) \
        else message.body
    return render(request, "dead_letter.html", {"queue": queue, "message": message, "body": body})


def _ids(form: Any) -> list[str]:
    return [v for v in form.getall("id", []) if isinstance(v, str) and v]


async def dead_letters_replay(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    queue = request.match_info["queue"]
    ids = _ids(await request.post())
    result = await api(request).call("POST", "/admin/dead-letters/{queue}/replay",
                                     body={} if form.get("all") == "yes" else {"ids": ids}, queue=queue)
    return render(request, "dead_letter_result.html", {"queue": queue, "action": "replayed",
                                                       "done": result.replayed, "skipped": result.skipped})


async def dead_letters_discard(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    queue = request.match_info["queue"]
    result = await api(request).call("DELETE", "/admin/dead-letters/{queue}",
                                     body={"ids": _ids(await request.post()), "reason": form.get("reason", "")},
                                     queue=queue)
    return render(request, "dead_letter_result.html", {"queue": queue, "action": "discarded",
                                                       "done": result.discarded, "skipped": result.skipped})


# ---------------------------------------------------------------- the app


def when(value: Any) -> str:
    """An instant as people read it, in UTC, to the second."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def money(value: Any) -> str:
    if isinstance(value, dict) and "amount" in value:
        return f"{value['amount']} {value.get('currency', '')}".strip()
    return "" if value is None else str(value)


def console_app(settings: Any) -> web.Application:
    app = web.Application(middlewares=[console_middleware])
    app[SESSION] = Session(settings.auth)
    environment = aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("core.console", "templates"), autoescape=True)
    environment.filters["when"] = when
    environment.filters["money"] = money
    app.router.add_get("/", home)
    app.router.add_get("/sign-in", sign_in_page)
    app.router.add_post("/sign-in", sign_in)
    app.router.add_post("/sign-out", sign_out)
    app.router.add_get("/plugins", plugins_page)
    app.router.add_get("/plugins/{name}/switch", plugin_switch_page)
    app.router.add_post("/plugins/{name}/switch", plugin_switch)
    app.router.add_get("/orders", orders_search)
    app.router.add_get("/orders/{order_id}", order_page_view)
    app.router.add_post("/orders/{order_id}/cancel", order_cancel)
    app.router.add_post("/orders/{order_id}/flag", order_flag)
    app.router.add_post("/orders/{order_id}/review-removal", review_removal)
    app.router.add_get("/sellers", sellers_search)
    app.router.add_get("/sellers/{seller_id}", seller_page)
    app.router.add_get("/dead-letters", dead_letters_page)
    app.router.add_get("/dead-letters/{queue}", dead_letter_queue_page)
    app.router.add_get("/dead-letters/{queue}/{id}", dead_letter_message_page)
    app.router.add_post("/dead-letters/{queue}/replay", dead_letters_replay)
    app.router.add_post("/dead-letters/{queue}/discard", dead_letters_discard)
    app.router.add_get("/policy", policy_page)
    app.router.add_post("/policy", policy_what_if)
    app.router.add_get("/clock", clock_page)
    app.router.add_post("/clock", clock_advance)
    app.router.add_static("/static", STATIC, name="static")
    return app


__all__ = ["console_app"]
