"""OpenAPI 3.1, built from the same route table as the app."""

from __future__ import annotations

import re
from typing import Any

from core.http.routes import Route

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; `rule` names the business rule that refused, when one did.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "rule": {"type": "string"},
    },
    "required": ["type", "title", "status"],
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


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": f"{route.plugin}_{route.handler.__name__}",
            "summary": route.summary,
            "tags": list(route.tags) or [route.plugin],
            "responses": {
                str(route.status): {"description": "OK", "content": {"application/json": {}}},
                "default": {
                    "description": "An error, as problem details.",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
                **route.responses,
            },
        }
        if route.rules:
            operation["description"] = f"Rules: {', '.join(route.rules)}."
            operation["x-rules"] = list(route.rules)
        if route.plugin != "core":
            operation["x-plugin"] = route.plugin
            operation["responses"]["503"] = {"description": f"The {route.plugin} plugin is switched off."}
        if route.roles is not None:
            operation["security"] = [{"bearer": []}]
            operation["x-roles"] = sorted(route.roles)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        parameters += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in route.query]
        if route.method in ("POST", "PUT", "PATCH") and route.roles is not None:
            parameters.append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": IDEMPOTENCY_KEY,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            })
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            schema = route.body.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas[name] = sub
            schemas[route.body.__name__] = schema
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rescenter",
            "version": "0.1.0",
            "description": "Order resolution service of a freelance marketplace. Errors are RFC 9457 "
            "problem+json; bodies are strict (unknown fields are refused) and size-limited.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
