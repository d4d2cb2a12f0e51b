"""Every HTTP answer the suite receives is checked against the OpenAPI document
that the answering instance serves at /openapi.json (openapi-core validates the
status, the content type and the body against the operation's schema).

On top of what OpenAPI itself requires, a problem below 500 must be one the
operation lists by its status: the `default` response covers only what nobody
can plan for (500, an outage's 503). So an answer the document does not
describe, a field a model does not declare, or a problem an operation does not
list fails the test that received it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS31Validator

PROBLEM = "application/problem+json"

_loaded: dict[str, OpenAPI] = {}


class ContractViolation(AssertionError):
    """An answer that the served OpenAPI document does not describe."""


@dataclass
class Contract:
    """The OpenAPI document of one instance, and the checks against it."""

    document: dict[str, Any]
    openapi: OpenAPI

    @classmethod
    def of(cls, document: dict[str, Any]) -> Contract:
        key = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
        if key not in _loaded:
            # from_dict also validates the document itself (OpenAPI 3.1)
            config = Config(extra_media_type_deserializers={PROBLEM: json.loads})
            _loaded[key] = OpenAPI.from_dict(document, config=config)
        return cls(document, _loaded[key])

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        """The documented path template and operation that answer `method path`, if any."""
        for template, operations in self.document["paths"].items():
            if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", template), path) and method.lower() in operations:
                return template, operations[method.lower()]
        return None

    def check(self, method: str, url: str, status: int, content_type: str, body: bytes,
              request_headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        where = f"{method} {parts.path} -> {status}"
        found = self.operation(method, parts.path)
        if found is None:
            # Not an operation of the document (an unknown path, a method not allowed): it
            # can only be a problem.
            if content_type != PROBLEM or status < 400:
                raise ContractViolation(f"{where}: no documented operation, yet the answer is not a problem")
            self._problem_schema(json.loads(body), where)
            return
        template, operation = found
        responses = operation["responses"]
        if str(status) not in responses and status < 500:
            raise ContractViolation(
                f"{where}: the operation {template} does not list status {status} "
                f"(it lists {', '.join(sorted(responses))})")
        request = MockRequest(f"{parts.scheme}://{parts.netloc}", method, parts.path,
                              path_pattern=template, args=dict(parse_qsl(parts.query)),
                              headers=request_headers or {})
        response = MockResponse(body, status_code=status, content_type=content_type)
        try:
            self.openapi.validate_response(request, response)
        except Exception as exc:
            details = "; ".join(str(e.message) for e in getattr(exc.__cause__, "schema_errors", ()) or ())
            raise ContractViolation(f"{where}: {exc}{' (' + details + ')' if details else ''}") from exc

    def _problem_schema(self, payload: Any, where: str) -> None:
        schema = {"$ref": "#/components/schemas/Problem", "components": self.document["components"]}
        errors = [e.message for e in OAS31Validator(schema).iter_errors(payload)]
        if errors:
            raise ContractViolation(f"{where}: not a Problem: {'; '.join(errors)}")


__all__ = ["Contract", "ContractViolation"]
