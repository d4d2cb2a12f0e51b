"""Admin routes over dead letters (core.dead_letters): list the queues, page through one,
replay or discard what it holds."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from core.dead_letters import (
    DEFAULT_LIMIT,
    MAX_IDS,
    MAX_LIMIT,
    DeadLetterPage,
    DeadLetters,
    DeadLetterSummary,
    DiscardResult,
    ReplayResult,
)
from core.errors import Unavailable
from core.http.routes import Body, Call, QueryParam, Route, page_limit

ADMIN = frozenset({"admin"})
Id = Annotated[str, Field(min_length=1, max_length=200)]


class ReplayBody(Body):
    ids: list[Id] | None = Field(
        default=None, min_length=1, max_length=MAX_IDS,
        description="The ids to replay; absent or null: every dead letter of the queue.")


class DiscardBody(Body):
    ids: list[Id] = Field(min_length=1, max_length=MAX_IDS, description="The ids to discard.")
    reason: str = Field(min_length=1, max_length=2000, description="Why: kept on each record, and logged.")


def _dead_letters(call: Call) -> DeadLetters:
    dead_letters = call.services.dead_letters
    if dead_letters is None:
        raise Unavailable("dead letters are not available yet: the service is starting")
    return dead_letters


async def list_dead_letters(call: Call) -> DeadLetterSummary:
    return await _dead_letters(call).summary()


async def dead_letter_page(call: Call) -> DeadLetterPage:
    query = call.request.query
    limit = page_limit(query.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    return await _dead_letters(call).page(call.match["queue"], limit, query.get("after"))


async def replay_dead_letters(call: Call) -> ReplayResult:
    body: ReplayBody = call.body
    return await _dead_letters(call).replay(call.match["queue"], body.ids, call.actor())


async def discard_dead_letters(call: Call) -> DiscardResult:
    body: DiscardBody = call.body
    return await _dead_letters(call).discard(call.match["queue"], body.ids, body.reason, call.actor())


PAGE_QUERY = (
    QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
               f"Dead letters per page, 1 to {MAX_LIMIT}."),
    QueryParam("after", {"type": "string"},
               "Where the page starts: the `next_after` of the previous page (the id of its last message). "
               "Absent: the oldest. Pages are in first-death order, so replays and discards between two "
               "pages neither repeat nor skip what the next page holds."),
)


def dead_letter_routes() -> list[Route]:
    tags = ("admin",)
    replay_note = ("Replayed or discarded already, or unknown: listed in `skipped` with why, and nothing is "
                   "sent again.")
    return [
        Route("GET", "/admin/dead-letters", list_dead_letters,
              "Every dead-letter queue: how many messages wait there, the oldest first death, how many by "
              "reason.", roles=ADMIN, response=DeadLetterSummary, tags=tags),
        Route("GET", "/admin/dead-letters/{queue}", dead_letter_page,
              "The dead letters of one queue (`<prefix>.<plugin>.dead`), oldest first, a page at a time: "
              "id, type, reason, error, first death time, replays, body.",
              roles=ADMIN, response=DeadLetterPage, tags=tags, query=PAGE_QUERY),
        Route("POST", "/admin/dead-letters/{queue}/replay", replay_dead_letters,
              "Send dead letters (the ids named, or all) back to the plugin's queue, once each, at least "
              "once; each replay is recorded (who, when) and logged. One that fails again comes back "
              "here with its count of replays. " + replay_note,
              roles=ADMIN, body=ReplayBody, response=ReplayResult, tags=tags),
        Route("DELETE", "/admin/dead-letters/{queue}", discard_dead_letters,
              "Discard the dead letters named, with a reason: they leave the list, their record (who, "
              "when, why) stays. " + replay_note,
              roles=ADMIN, body=DiscardBody, response=DiscardResult, tags=tags),
    ]


__all__ = ["dead_letter_routes"]
