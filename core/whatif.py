"""What-if policy replay: a policy change's effect before it is made.

    rescenter policy what-if --set policy.metrics.completion_window=P90D [--at ...] [--seller ...]
    POST /admin/policy/what-if  {"set": {"policy.metrics.completion_window": "P90D"}, ...}

A plugin that keeps its facts with the times they happened and decides with
pure rules declares a `PolicyReplay` (hook `register_policy_replays`): the
policy keys it can replay and how. The core reads the keys to set, builds the
proposed policy with the same validation as the configuration, and hands each
replay whose section a key names the current and the proposed policy: the
plugin runs its own rules twice over the same facts and reports what moves.

Nothing is written and nothing is published: a replay only reads (the tests
count the store's commands and watch the bus). It reads in bounded pages, and
the answer is bounded too (`limit` sellers or orders listed, totals over all).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, create_model

from core.errors import InvalidInput
from core.settings import Policy

if TYPE_CHECKING:
    from core.clock import Clock
    from core.http.routes import Call, Route
    from core.store import Store

#: how many documents a replay reads per round trip
PAGE_SIZE = 500
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


#: a table of the command line's answer: its title, column names and rows of cells
Table = tuple[str, list[str], list[list[str]]]


class ProgressTask(Protocol):
    def advance(self, done: int) -> None: ...


class Progress(Protocol):
    """Where a replay reports how far it got (a progress bar on the command line)."""

    def task(self, description: str, total: int | None) -> ProgressTask: ...


class _Silent:
    def task(self, description: str, total: int | None) -> _Silent:
        return self

    def advance(self, done: int) -> None:
        return None


SILENT = _Silent()


@dataclass(frozen=True)
class ReplayRequest:
    """What a replay works on: the instant, both policies, and the bounds."""

    at: datetime
    current: Policy
    proposed: Policy
    #: the keys set (full names, `policy.<section>.<key>`), with their new values as given
    changes: Mapping[str, Any]
    #: narrow to these sellers; empty: every seller
    sellers: tuple[str, ...] = ()
    #: at most this many sellers (or orders) listed in the answer; totals count them all
    limit: int = DEFAULT_LIMIT
    page_size: int = PAGE_SIZE
    progress: Progress = SILENT


@dataclass(frozen=True)
class PolicyReplay:
    """A plugin's replay under another policy (hook `register_policy_replays`)."""

    #: the policy section it replays: its keys are `policy.<section>.<key>`
    section: str
    #: the keys it accepts, full names (`policy.metrics.completion_window`)
    keys: tuple[str, ...]
    #: the model of its part of the answer
    answer: type[BaseModel]
    #: reads the facts (never writes) and answers with an `answer`
    run: Callable[[Store, ReplayRequest], Awaitable[BaseModel]]
    #: its answer as tables for the command line: [(title, column names, rows of cells)]
    tables: Callable[[Any], list[Table]] = lambda answer: []
    #: set by the core: the plugin that declared it
    plugin: str = ""
    description: str = ""


# ---------------------------------------------------------------- the keys


def accepted_keys(replays: list[PolicyReplay]) -> list[str]:
    return sorted(key for replay in replays for key in replay.keys)


def _known_policy_keys(model: type[BaseModel] = Policy, prefix: str = "policy") -> set[str]:
    keys = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _known_policy_keys(annotation, f"{prefix}.{name}")
        else:
            keys.add(f"{prefix}.{name}")
    return keys


def proposed_policy(current: Policy, changes: Mapping[str, Any], replays: list[PolicyReplay],
                    switched_off: Sequence[PolicyReplay] = ()) -> Policy:
    """The current policy with `changes` applied, validated as the configuration is; an
    unknown key, a key no replay accepts or a bad value is an InvalidInput naming it."""
    off = {key: replay.plugin for replay in switched_off for key in replay.keys}
    if not changes:
        raise InvalidInput("nothing to compare: set at least one policy key (e.g. "
                           "policy.metrics.completion_window=P90D)", field="set", accepted=accepted_keys(replays))
    accepted = set(accepted_keys(replays))
    data = current.model_dump()
    for key, value in changes.items():
        if key not in accepted and key in off:
            raise InvalidInput(f"{key!r} is replayed by the {off[key]} plugin, which is switched off",
                               field=f"set.{key}", plugin=off[key])
        if key not in accepted:
            why = ("is not replayable: the what-if replays the keys of the plugins that keep their facts "
                   "with their times" if key in _known_policy_keys() else "is not a policy key")
            raise InvalidInput(f"{key!r} {why}; accepted: {', '.join(sorted(accepted))}", field=f"set.{key}",
                               accepted=sorted(accepted))
        *parents, leaf = key.split(".")[1:]
        node = data
        for name in parents:
            node = node[name]
        node[leaf] = value
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": "set.policy." + ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                  for e in exc.errors()]
        raise InvalidInput("; ".join(f"{e['field'][4:]}: {e['message']} (got {changes.get(e['field'][4:])!r})"
                                     for e in errors), field=errors[0]["field"], errors=errors) from None


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """`KEY=VALUE` arguments of the command line, in order (a key set twice: the last wins)."""
    found: dict[str, str] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--set {assignment!r}: expected KEY=VALUE, e.g. policy.reviews.review_window=P7D")
        found[key.strip()] = value.strip()
    return found


# ---------------------------------------------------------------- running


async def replay(store: Store, replays: list[PolicyReplay], current: Policy, changes: Mapping[str, Any],
                 at: datetime, *, sellers: tuple[str, ...] = (), limit: int = DEFAULT_LIMIT,
                 progress: Progress = SILENT, page_size: int = PAGE_SIZE,
                 switched_off: Sequence[PolicyReplay] = ()) -> dict[str, Any]:
    """Every replay whose section a key names, run one after the other (they read, so
    cancelling the task at any point leaves nothing behind)."""
    proposed = proposed_policy(current, changes, replays, switched_off)
    request = ReplayRequest(at=at, current=current, proposed=proposed, changes=dict(changes), sellers=sellers,
                            limit=limit, page_size=page_size, progress=progress)
    answer: dict[str, Any] = {"at": at, "set": dict(changes), "accepted_keys": accepted_keys(replays)}
    sections = {key.split(".")[1] for key in changes}
    for item in replays:
        part = await item.run(store, request) if item.section in sections else None
        answer[item.section] = part
        await asyncio.sleep(0)
    return answer


def answer_model(replays: list[PolicyReplay]) -> type[BaseModel]:
    """The answer's model, one optional part per replay (OpenAPI's response schema)."""
    parts: dict[str, Any] = {
        replay.section: (replay.answer | None, Field(description=f"{replay.description} null: no key of "
                                                                 f"policy.{replay.section} was set."))
        for replay in replays
    }
    return create_model(  # type: ignore[call-overload, no-any-return]
        "PolicyWhatIf",
        __config__=ConfigDict(extra="forbid"),
        __doc__="What a policy change would move, replayed over the facts kept; nothing is written.",
        at=(datetime, Field(description="The instant both policies are applied at.")),
        set=(dict[str, Any], Field(description="The keys set, with their values as given.")),
        accepted_keys=(list[str], Field(description="Every key the what-if accepts.")),
        **parts,
    )


class WhatIfBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    set: dict[str, str | int | float] = Field(
        description="Policy keys (as in config/defaults.toml, full names such as "
                    "`policy.metrics.completion_window`) and their values (ISO 8601 durations as strings).")
    at: AwareDatetime | None = Field(default=None, description="Apply both policies as of this instant "
                                                               "(not later than now); default now.")
    sellers: list[str] = Field(default_factory=list, max_length=1000,
                               description="Only these sellers (and their orders); default every seller.")
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT,
                       description="At most this many sellers (and orders) listed; totals count them all.")


@dataclass
class WhatIfRoute:
    """`POST /admin/policy/what-if`, built from the replays the plugins declared."""

    replays: list[PolicyReplay] = field(default_factory=list)

    def route(self) -> Route:
        from core.http.routes import Route

        async def policy_what_if(call: Call) -> dict[str, Any]:
            return await self.handle(call)

        return Route("POST", "/admin/policy/what-if", policy_what_if,
                     "Replay the facts kept under another policy (metrics: completion rate and success score "
                     "per seller; reviews: eligibility of cancelled orders) and answer what would move, "
                     "next to the figures now. Nothing is written.",
                     roles=frozenset({"admin", "support"}), body=WhatIfBody, response=answer_model(self.replays),
                     rules=("MET-1", "MET-2", "MET-4", "REV-1", "REV-2", "REV-4"), tags=("admin",),
                     responses={"409": {"description": "Only when the same Idempotency-Key is in use by a "
                                                       "request still running: the what-if changes nothing, so "
                                                       "no rule refuses it."}})

    async def handle(self, call: Call) -> dict[str, Any]:
        body: WhatIfBody = call.body
        services = call.services
        replays = [r for r in self.replays if r.plugin in services.plugins.enabled]
        at = instant(body.at, services.clock)
        answer = await replay(services.store, replays, services.settings.policy, body.set, at,
                              sellers=tuple(body.sellers), limit=body.limit,
                              switched_off=[r for r in self.replays if r not in replays])
        for item in self.replays:
            answer.setdefault(item.section, None)
        return answer


# ---------------------------------------------------------------- the command line


class _Bar:
    """A `rich` progress bar on stderr (stdout keeps the answer), shown on a terminal only."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def task(self, description: str, total: int | None) -> _BarTask:
        return _BarTask(self.progress, self.progress.add_task(description, total=total))


class _BarTask:
    def __init__(self, progress: Any, task_id: Any) -> None:
        self.progress, self.task_id = progress, task_id

    def advance(self, done: int) -> None:
        self.progress.advance(self.task_id, done)


@contextmanager
def with_progress() -> Iterator[Progress]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield SILENT
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        yield _Bar(bar)


def print_tables(answer: dict[str, Any], replays: list[PolicyReplay]) -> None:
    """The answer as readable tables on stdout."""
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(width=200) if not sys.stdout.isatty() else Console()
    changes = ", ".join(f"{key}={value}" for key, value in answer["set"].items())
    console.print(f"What if {changes}, as of {answer['at'].isoformat()}: nothing was written.")
    for item in replays:
        part = answer.get(item.section)
        if part is None:
            continue
        for title, columns, rows in item.tables(part):
            table = RichTable(*columns, title=title, box=box.SIMPLE_HEAD, title_justify="left")
            for row in rows:
                table.add_row(*row)
            console.print(table)


def instant(at: datetime | None, clock: Clock) -> datetime:
    """`at`, to the millisecond the store keeps, and not later than now (facts exist up to now)."""
    now = clock.now()
    if at is None:
        return now
    at = at.replace(microsecond=at.microsecond // 1000 * 1000)
    if at > now:
        raise InvalidInput(f"'at' is later than now ({now.isoformat()}): facts exist up to now only", field="at")
    return at


__all__ = ["PolicyReplay", "ReplayRequest", "WhatIfRoute", "Progress", "ProgressTask", "SILENT", "Table", "replay",
           "proposed_policy", "parse_assignments", "accepted_keys", "instant", "print_tables",
           "with_progress"]
