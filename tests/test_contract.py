"""The contract an integrator reads: /openapi.json describes every answer (each
2xx with its schema, each problem it can answer), and the checks that hold the
service to it (tests/contract.py, run on every answer the suite receives) do
catch an answer the document does not describe."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openapi_spec_validator import validate

from core.cli import documents
from core.settings import load_settings
from tests.contract import Contract, ContractViolation

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return documents(load_settings())["openapi.json"]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, item in document["paths"].items()
            for method, operation in item.items()]


def test_openapi_is_a_valid_openapi_3_1_document(openapi: dict[str, Any]) -> None:
    validate(openapi)


def test_openapi_every_operation_describes_its_answer_with_a_schema(openapi: dict[str, Any]) -> None:
    undescribed = []
    for method, path, operation in operations(openapi):
        answers = {status: r for status, r in operation["responses"].items() if status.startswith("2")}
        assert len(answers) == 1, f"{method} {path}: one success status, not {sorted(answers)}"
        (content,) = answers.values()
        for media, body in content.get("content", {}).items():
            if not body.get("schema"):
                undescribed.append(f"{method} {path} ({media})")
        if not content.get("content"):
            undescribed.append(f"{method} {path}")
    assert not undescribed, f"answers without a schema: {undescribed}"


def test_openapi_order_fields_are_documented(openapi: dict[str, Any]) -> None:
    """What integrators had to learn from live answers: the order's fields."""
    schema = openapi["paths"]["/orders/{order_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    order = openapi["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert {"id", "state", "due_at", "cancel_cause", "cancelled_from", "cancel_requested_by", "price",
            "version"} <= set(order["properties"])
    assert order["additionalProperties"] is False
    request = openapi["paths"]["/orders/{order_id}/resolution/requests"]["post"]["responses"]["201"]
    assert "id" in openapi["components"]["schemas"][
        request["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]["required"]


def test_openapi_every_operation_lists_its_problems(openapi: dict[str, Any]) -> None:
    for method, path, operation in operations(openapi):
        responses = operation["responses"]
        problems = {status for status in responses if status == "default" or status[0] in "45"}
        for status in problems:
            schema = responses[status].get("content", {}).get(PROBLEM, {}).get("schema")
            assert schema == {"$ref": "#/components/schemas/Problem"}, f"{method} {path} {status}"
        assert "default" in responses
        if "security" in operation:
            assert {"401", "403"} <= problems, f"{method} {path}: a token may be refused"
        if "{" in path and not path.startswith(("/availability/sellers/{seller_id}", "/sellers/{seller_id}/reviews")):
            assert "404" in problems, f"{method} {path}"
        if "requestBody" in operation:
            assert {"413", "422"} <= problems, f"{method} {path}: a body may be invalid or too large"
        if method in ("POST", "PUT", "DELETE"):
            assert "409" in problems, f"{method} {path}: a change may be refused by a rule"
        if "x-plugin" in operation:
            assert "503" in problems, f"{method} {path}: the plugin may be off"
    problem = openapi["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "rule", "errors"} <= set(problem["properties"])


# ---------------------------------------------------------------- the checks catch what they should


def check(openapi: dict[str, Any], method: str, path: str, status: int, body: Any,
          content_type: str = "application/json") -> None:
    Contract.of(openapi).check(method, f"http://127.0.0.1:1{path}", status, content_type,
                               json.dumps(body).encode())


HEALTH = {"status": "ok", "instance": "i-1"}


def test_contract_accepts_a_described_answer(openapi: dict[str, Any]) -> None:
    check(openapi, "GET", "/healthz", 200, HEALTH)
    check(openapi, "GET", "/orders/o-1", 404,
          {"type": "https://rescenter.dev/problems/not-found", "title": "Not found", "status": 404,
           "detail": "no order 'o-1'", "order_id": "o-1"}, PROBLEM)


@pytest.mark.parametrize(("method", "path", "status", "body", "content_type", "why"), [
    ("GET", "/healthz", 200, {**HEALTH, "uptime": 3}, "application/json", "a field the model does not declare"),
    ("GET", "/healthz", 200, {"status": "ok"}, "application/json", "a required field missing"),
    ("GET", "/admin/clock", 200, {"mode": "test", "now": "yesterday"}, "application/json", "not a date-time"),
    ("GET", "/healthz", 409, {"type": "about:blank", "title": "Conflict", "status": 409}, PROBLEM,
     "a problem status the operation does not list"),
    ("GET", "/orders/o-1", 404, {"title": "Not found"}, PROBLEM, "a problem without type and status"),
    ("GET", "/healthz", 200, HEALTH, PROBLEM, "a content type the operation does not answer with"),
    ("GET", "/no/such/path", 200, HEALTH, "application/json", "no operation, and not a problem"),
])
def test_contract_refuses_an_answer_the_document_does_not_describe(
        openapi: dict[str, Any], method: str, path: str, status: int, body: Any, content_type: str, why: str) -> None:
    with pytest.raises(ContractViolation):
        check(openapi, method, path, status, body, content_type)
