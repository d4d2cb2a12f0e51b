"""One exception family, mapped once to HTTP problem+json (core.http.problems)
and once to dead-lettering on the bus (core.bus).

Every refusal that a business rule makes carries the rule id from RULES.md.
"""

from __future__ import annotations

from typing import Any


class RescenterError(Exception):
    """Base of every error the service raises on purpose."""

    status = 500
    title = "Internal error"
    type_suffix = "internal"
    #: a message that raises this can never succeed: dead-letter it at once
    permanent = True

    def __init__(self, detail: str, *, rule: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.rule = rule
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": f"https://rescenter.dev/problems/{self.type_suffix}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.rule:
            problem["rule"] = self.rule
        problem.update(self.extra)
        return problem


class InvalidInput(RescenterError):
    status, title, type_suffix = 422, "Invalid input", "invalid-input"


class UnsupportedMediaType(RescenterError):
    """A body sent as something other than JSON (HTTP only)."""

    status, title, type_suffix = 415, "Unsupported media type", "unsupported-media-type"


class Unauthenticated(RescenterError):
    status, title, type_suffix = 401, "Not authenticated", "unauthenticated"


class Forbidden(RescenterError):
    status, title, type_suffix = 403, "Forbidden", "forbidden"


class NotFound(RescenterError):
    status, title, type_suffix = 404, "Not found", "not-found"


class RuleViolation(RescenterError):
    """A business rule refuses the command; `rule` names it."""

    status, title, type_suffix = 409, "Refused by a business rule", "rule-violation"


class Conflict(RescenterError):
    """A concurrent change won; the caller may retry."""

    status, title, type_suffix = 409, "Conflict", "conflict"
    permanent = False


class PluginDisabled(RescenterError):
    status, title, type_suffix = 503, "Plugin disabled", "plugin-disabled"
    permanent = False


class Unavailable(RescenterError):
    status, title, type_suffix = 503, "Service unavailable", "unavailable"
    permanent = False
