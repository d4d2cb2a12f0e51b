"""OpenAPI 3.1, built from the same route table as the app.

Every operation describes its answer (the route's response model) and every
problem it can answer: those its declaration implies (a token: 401 and 403; a
path parameter: 404; a change: 409, 413, 415 and 422; a query: 422; a plugin's
route: 503) and those the route adds in `responses` (where None drops an
implied one that the route never answers). Anything else (500, an outage's 503)
is the `default` problem.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from core.http.responses import Problem
from core.http.routes import CHANGES, QueryParam, Route

REF = "#/components/schemas/{model}"
PROBLEM_TYPE = "application/problem+json"

AUTH = (
    "A JWT in `Authorization: Bearer <token>`.\n\n"
    "- **Signature**: the configured algorithm only (`auth.algorithm`, HS256 by default, with `auth.secret`); "
    "a token signed with any other algorithm, or unsigned, is refused.\n"
    "- **Required claims**: `sub` (the caller's user id, a non-empty string), `aud` (equal to `auth.audience`, "
    "`rescenter` by default) and `exp`; `iss` too, equal to `auth.issuer`, when that is set.\n"
    "- **Roles**: the `roles` claim, a list of strings (a single string in `role` is read too): `buyer`, "
    "`seller`, `support`, `admin`, `service`. Other values are ignored; a token with no known role is refused. "
    "One user may hold several roles (buyer and seller). `support`, `admin` and `service` are staff: they see "
    "every order. Each operation lists the roles it accepts in `x-roles`.\n"
    "- **Time**: `exp` (and `nbf` when present) are checked against the real clock with 5 seconds of leeway, "
    "also in test clock mode: moving the test clock neither expires a token nor revives an expired one.\n\n"
    "A missing, malformed, expired or unverifiable token is a 401 problem saying which; a valid token whose "
    "roles may not call the operation is a 403 problem."
)

#: what each implied problem status means, whichever route answers it
IMPLIED = {
    "401": "No valid bearer token: missing, malformed, expired, wrong audience or issuer, or no known role.",
    "403": "The token's roles may not call this operation, or the caller may not act on this resource "
           "(the rule, when one decides, is in `rule`).",
    "404": "No such resource, or the caller may not know that it exists (a stranger to an order gets 404).",
    "409": "Refused by a business rule (`rule` names it) or by the resource's state; or a concurrent change "
           "won and the call may be repeated.",
    "413": "The body is larger than `http.max_body_bytes`.",
    "415": "A body sent with a `Content-Type` other than `application/json` (or another `+json` type).",
    "422": "Invalid input: the body (strict: unknown fields are refused, `errors` lists each field; not valid "
           "JSON, or an object naming a member twice; on an operation without a request body, any body but "
           "none or `{}`), a query parameter or a header.",
}


IDEMPOTENCY_KEY = (
    "Makes retrying this command safe (as Stripe and the IETF draft \"The Idempotency-Key HTTP Header "
    "Field\" do it). A key belongs to the caller (the token's `sub`) and to the first request sent with "
    "it: method, path and a fingerprint of the JSON body (field order and spacing do not count). "
    "The same request again gets the first answer's status and body again, refusals included, with "
    "`Idempotent-Replayed: true`, and changes nothing. The same key on another route or with another "
    "body is refused with 422 (`type` .../idempotency-key-reused; `idempotency_key` names the key, "
    "`first_request` the route it was used for) and changes nothing. While the first request is still "
    "being processed, the same request gets 409 (`type` .../idempotency-key-in-use): retry later. "
    "Answers that invite a retry (409 conflict, 503, 500) are not kept, so the key stays usable. "
    "A key is kept 24 h by default (`idempotency.expire_after`), then it may name a new request. "
    "Requests that fail authentication or validation do not use the key."
)


REQUEST_ID = (
    "An id for this request, to find it in the service's logs: kept when it is 1 to 128 characters among "
    "letters, digits and `._:/+=@-` (a UUID, a trace id), else replaced with a new one. The answer carries "
    "it back in `X-Request-Id`; the access-log line of the request and every line logged while handling "
    "it carry it as `request_id`, and every event the request causes, even through other messages, "
    "carries it in the CloudEvents extension attribute `requestid`."
)


REQUEST_ID_PARAMETER = {
    "name": "X-Request-Id", "in": "header", "required": False, "description": REQUEST_ID,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:/+=@-]{1,128}$"},
}


def implied_problems(route: Route) -> dict[str, str]:
    """The problem statuses a route's declaration implies, with what each means."""
    statuses = []
    if route.roles is not None:
        statuses += ["401", "403"]
    if "{" in route.path:
        statuses.append("404")
    if route.method in CHANGES:
        statuses += ["409", "413", "415"]  # every change reads its body, whether it takes one or not
    if route.body is not None or route.query or route.method in CHANGES:
        statuses.append("422")
    problems = {status: IMPLIED[status] for status in statuses}
    if route.plugin != "core":
        problems["503"] = f"The {route.plugin} plugin is switched off."
    return problems


def _query_parameter(param: str | QueryParam) -> dict[str, Any]:
    if isinstance(param, str):
        param = QueryParam(param)
    described: dict[str, Any] = {"name": param.name, "in": "query", "required": False, "schema": param.schema}
    if param.description:
        described["description"] = param.description
    return described


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_TYPE: {"schema": {"$ref": REF.format(model="Problem")}}}}


def _schemas(routes: list[Route]) -> tuple[dict[tuple[type[BaseModel], JsonSchemaMode], Any], dict[str, Any]]:
    """Every body (as validated) and answer (as serialised) in one pass, so that a model used
    both ways gets two names (`Money-Input`, `Money-Output`) only where the two differ."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Problem, "serialization"): None}
    for route in routes:
        if route.body is not None:
            wanted[(route.body, "validation")] = None
        if route.response is not None:
            wanted[(route.response, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template=REF)
    return refs, top.get("$defs", {})


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    refs, schemas = _schemas(routes)
    paths: dict[str, Any] = {}
    for route in routes:
        responses: dict[str, Any] = {}
        if route.response is not None:
            responses[str(route.status)] = {
                "description": HTTPStatus(route.status).phrase,
                "content": {"application/json": {"schema": refs[(route.response, "serialization")]}},
            }
        for status, description in implied_problems(route).items():
            responses[status] = _problem(description)
        for status, extra in route.responses.items():
            if extra is None:  # the route never answers this one, though its declaration implies it
                responses.pop(status, None)
            elif int(status) >= 400:
                responses[status] = {**_problem(extra.get("description", "")), **extra}
            else:
                responses[status] = extra
        responses["default"] = _problem("Any other error (500, or 503 while a server the service needs is "
                                        "unreachable), as problem details.")
        for response in responses.values():
            response["headers"] = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
        operation: dict[str, Any] = {
            "operationId": f"{route.plugin}_{route.handler.__name__}",
            "summary": route.summary,
            "tags": list(route.tags) or [route.plugin],
            "responses": dict(sorted(responses.items(), key=lambda item: (item[0] == "default", item[0]))),
        }
        if route.rules:
            operation["description"] = f"Rules: {', '.join(route.rules)}."
            operation["x-rules"] = list(route.rules)
        if route.plugin != "core":
            operation["x-plugin"] = route.plugin
        if route.roles is not None:
            operation["security"] = [{"bearer": []}]
            operation["x-roles"] = sorted(route.roles)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        parameters += [_query_parameter(q) for q in route.query]
        parameters.append(REQUEST_ID_PARAMETER)
        if route.method in ("POST", "PUT", "PATCH") and route.roles is not None:
            parameters.append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": IDEMPOTENCY_KEY,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            })
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rescenter",
            "version": "0.1.0",
            "description": "Order resolution service of a freelance marketplace. Every answer is described "
            "by its schema, which lists every field it may carry; every error is RFC 9457 problem+json "
            "(`Problem`), and a refusal by a business rule names it in `rule`. Bodies are JSON "
            "(`application/json`), strict (unknown fields, and a member named twice, are refused; an operation "
            "without a request body takes none, or `{}`) and size-limited. Authentication: see the `bearer` security scheme.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "headers": {"RequestId": {
                "description": "The request's id: the one sent in `X-Request-Id`, or a new one.",
                "schema": {"type": "string"}}},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": AUTH},
            },
        },
    }
