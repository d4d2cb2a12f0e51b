"""The `rescenter` command.

    rescenter run                      run the service (HTTP, consumers, scheduler)
    rescenter plugins list             loaded plugins and whether they are on
    rescenter plugins enable NAME      switch a plugin on for every instance
    rescenter plugins disable NAME     switch a plugin off for every instance
    rescenter docs [--check]           write (or check) docs/openapi.json and docs/asyncapi.json
    rescenter token SUB ROLE...        mint a development token with the configured secret
    rescenter check-config             validate the configuration and print it
    rescenter demo [--url URL]         load a small demo data set through a running service's API
    rescenter policy what-if --set KEY=VALUE ... [--at INSTANT] [--seller ID] [--limit N] [--json]
                                       what a policy change would move (core/whatif.py); writes nothing
    rescenter dead-letters list        every dead-letter queue: count, oldest, by reason
    rescenter dead-letters show QUEUE [--limit N] [--after ID]   a page of one queue's dead letters
    rescenter dead-letters replay QUEUE (ID... | --all)          back to the plugin's queue, once each
    rescenter dead-letters discard QUEUE ID... --reason TEXT     out of the list, with why
    rescenter PLUGIN COMMAND ...       a command a plugin declares (hook `register_commands`),
                                       e.g. `rescenter metrics rebuild`
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.commands import Command, CommandContext
from core.settings import Settings, SettingsError, load_settings, printable

if TYPE_CHECKING:
    from core.clock import Clock
    from core.plugins import PluginRegistry

DOCS = Path(__file__).resolve().parent.parent / "docs"
CORE_COMMANDS = frozenset({"run", "plugins", "docs", "token", "check-config", "demo", "policy", "dead-letters"})


def _token_refusal(sub: str, roles: list[str], ttl: int) -> str | None:
    from core.http.routes import ALL_ROLES

    if not sub.strip():
        return "SUB must be a user id, not empty"
    unknown = sorted(set(roles) - ALL_ROLES)
    if unknown:
        return f"unknown role(s) {', '.join(unknown)}: the roles are {', '.join(sorted(ALL_ROLES))}"
    if ttl <= 0:
        return f"--ttl must be a positive number of seconds (got {ttl}): the token would be expired already"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescenter", description="Order resolution service.")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the service")
    plugins = sub.add_parser("plugins", help="list or switch plugins")
    plugins_sub = plugins.add_subparsers(dest="action", required=True)
    plugins_sub.add_parser("list")
    for action in ("enable", "disable"):
        p = plugins_sub.add_parser(action)
        p.add_argument("name")
    docs = sub.add_parser("docs", help="write the OpenAPI and AsyncAPI documents")
    docs.add_argument("--check", action="store_true", help="fail if the files in docs/ are stale")
    token = sub.add_parser("token", help="mint a development token")
    token.add_argument("sub")
    token.add_argument("roles", nargs="+")
    token.add_argument("--ttl", type=int, default=3600)
    sub.add_parser("check-config", help="validate the configuration")
    demo = sub.add_parser("demo", help="load a demo data set through a running service's HTTP API",
                          description="Load a small, realistic data set through the HTTP API of a running "
                                      "service; running it again adds nothing (core/demo.py).")
    demo.add_argument("--url", default=os.environ.get("RESCENTER_URL") or "http://127.0.0.1:8080",
                      help="the service's base URL (default: $RESCENTER_URL, else http://127.0.0.1:8080)")
    policy = sub.add_parser("policy", help="policy tools")
    policy_sub = policy.add_subparsers(dest="action", required=True)
    what_if = policy_sub.add_parser(
        "what-if", help="what a policy change would move, replayed over the facts kept (writes nothing)",
        description="Replay the facts the plugins keep (the metrics' event log, the reviews' facts) under the "
                    "current policy and under the one with --set applied, and show what moves: each seller's "
                    "completion rate and success score, the orders whose treatment changes, the cancelled orders "
                    "whose review eligibility changes. Nothing is written or published. Ctrl-C cancels.")
    what_if.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                         help="a policy key as in config/defaults.toml, e.g. policy.metrics.completion_window=P90D "
                              "(repeatable)")
    what_if.add_argument("--at", default=None, metavar="INSTANT",
                         help="apply both policies as of this ISO 8601 instant with its offset (default: now)")
    what_if.add_argument("--seller", action="append", default=[], metavar="SELLER_ID",
                         help="only this seller (repeatable)")
    what_if.add_argument("--limit", type=int, default=50, help="sellers (and orders) listed, 1 to 1000 (default 50)")
    what_if.add_argument("--json", action="store_true", help="the answer as JSON (as the HTTP route gives it)")
    _add_dead_letter_commands(sub)
    try:
        settings: Settings | None = load_settings()
        settings_error = None
    except SettingsError as exc:  # reported once the arguments are parsed (--help still works)
        settings, settings_error = None, exc
    plugin_commands: dict[str, dict[str, Command]] = {}
    if settings is not None:
        declarations = _declarations(settings)
        try:
            declarations.check_enabled()  # every command reads the configuration: each refuses a typo
        except SettingsError as exc:
            settings, settings_error = None, exc
        else:
            plugin_commands = _add_plugin_commands(sub, declarations)
    args = parser.parse_args(argv)

    if settings is None:
        print(f"rescenter: {settings_error}", file=sys.stderr)
        return 2
    from core.logging import configure_logging

    configure_logging(args.log_level)
    if args.command == "run":
        return asyncio.run(_run(settings))
    if args.command == "plugins":
        return asyncio.run(_plugins(settings, args.action, getattr(args, "name", None)))
    if args.command == "docs":
        return _docs(settings, check=args.check)
    if args.command == "token":
        from core.http.auth import issue_token

        refusal = _token_refusal(args.sub, args.roles, args.ttl)
        if refusal:  # the service would refuse such a token: say so now, not with a 401 later
            print(f"rescenter token: {refusal}", file=sys.stderr)
            return 2
        print(issue_token(settings.auth, args.sub, args.roles, ttl=args.ttl))
        return 0
    if args.command == "check-config":
        print(printable(settings))
        return 0
    if args.command == "demo":
        return asyncio.run(_demo(settings, args.url))
    if args.command == "policy":
        try:
            return asyncio.run(_what_if(settings, args))
        except KeyboardInterrupt:
            print("rescenter policy what-if: cancelled; nothing was written", file=sys.stderr)
            return 130
    if args.command == "dead-letters":
        return asyncio.run(_dead_letters(settings, args))
    if args.command in plugin_commands:
        return asyncio.run(_plugin_command(settings, plugin_commands[args.command][args.plugin_command], args))
    return 2


def _add_dead_letter_commands(sub: Any) -> None:
    parser = sub.add_parser(
        "dead-letters", help="list, show, replay or discard dead letters",
        description="Dead letters, as GET/POST/DELETE /admin/dead-letters do it (core/dead_letters.py): straight "
                    "on the store and the broker, whether an instance runs or not.")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every dead-letter queue: count, oldest first death, count by reason")
    show = actions.add_parser("show", help="a page of one queue's dead letters, as JSON")
    show.add_argument("queue", help="the dead-letter queue, e.g. rescenter.core.dead")
    show.add_argument("--limit", type=int, default=50, help="messages per page (1 to 200)")
    show.add_argument("--after", help="the next_after of the previous page")
    replay = actions.add_parser("replay", help="send dead letters back to the plugin's queue, once each")
    replay.add_argument("queue")
    replay.add_argument("ids", nargs="*", help="the ids to replay")
    replay.add_argument("--all", action="store_true", help="every dead letter of the queue (name no ids)")
    discard = actions.add_parser("discard", help="take dead letters out of the list, with a reason")
    discard.add_argument("queue")
    discard.add_argument("ids", nargs="+")
    discard.add_argument("--reason", required=True)
    for action in (replay, discard):
        action.add_argument("--actor", default=None,
                            help="who does it, recorded on each message (default: cli:<login name>)")


async def _dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    """The dead letters of the queues the configured core and plugins declare. What waits in a
    dead-letter queue is kept first (a running instance's keeper does it too)."""
    import getpass

    from core.bus import Bus, ConsumerGroup
    from core.dead_letters import DeadLetters
    from core.errors import RescenterError
    from core.messages import Actor, core_catalogue
    from core.metrics import Metrics
    from core.store import Store

    store = Store(settings.store.url, settings.store.database)
    await store.connect()
    bus = Bus(settings.bus, core_catalogue(), Metrics())
    try:
        await bus.connect()
        groups = ["core"] + [result.plugin for result in _declarations(settings).call_each(
            "register_subscriptions", services=_declaring_services(settings)) if result.value]
        for name in groups:  # named, not declared: the service declares them
            bus.groups[name] = ConsumerGroup(name, [])
        if args.action == "replay" and args.all == bool(args.ids):
            print("rescenter dead-letters replay: name the ids to replay, or --all", file=sys.stderr)
            return 2
        dead_letters = DeadLetters(bus, store)
        await dead_letters.create_indexes()
        await dead_letters.collect()
        actor = Actor(id=getattr(args, "actor", None) or f"cli:{getpass.getuser()}", role="admin")
        if args.action == "list":
            for row in (await dead_letters.summary()).queues:
                reasons = ", ".join(f"{reason} {count}" for reason, count in row.by_reason.items())
                oldest = row.oldest.isoformat() if row.oldest else "-"
                print(f"{row.queue:<40} {row.count:>6}  oldest {oldest}  {reasons}".rstrip())
            return 0
        if args.action == "show":
            result: Any = await dead_letters.page(args.queue, args.limit, args.after)
        elif args.action == "replay":
            result = await dead_letters.replay(args.queue, None if args.all else args.ids, actor)
        else:
            result = await dead_letters.discard(args.queue, args.ids, args.reason, actor)
        print(result.model_dump_json(indent=2))
        return 0
    except RescenterError as exc:
        print(f"rescenter dead-letters: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        await bus.close()
        await store.close()


def _declarations(settings: Settings) -> PluginRegistry:
    """The plugins loaded for what they declare (routes, types, commands), without servers."""
    from core.metrics import Metrics
    from core.plugins import PluginRegistry

    registry = PluginRegistry(settings.plugins, _NoStore(), Metrics())  # type: ignore[arg-type]
    registry.load()
    return registry


def _add_plugin_commands(sub: Any, declarations: PluginRegistry) -> dict[str, dict[str, Command]]:
    """`rescenter <plugin> <command>` for every command a plugin declares."""
    declared: dict[str, dict[str, Command]] = {}
    for result in declarations.call_each("register_commands"):
        if result.plugin in CORE_COMMANDS:
            print(f"rescenter: the commands of plugin {result.plugin!r} are ignored: the name is a core command",
                  file=sys.stderr)
            continue
        for command in result.value:
            declared.setdefault(result.plugin, {})[command.name] = command
    for plugin, commands in sorted(declared.items()):
        plugin_parser = sub.add_parser(plugin, help=f"commands of the {plugin} plugin")
        plugin_sub = plugin_parser.add_subparsers(dest="plugin_command", required=True)
        for name, command in sorted(commands.items()):
            command_parser = plugin_sub.add_parser(name, help=command.help, description=command.help)
            if command.arguments is not None:
                command.arguments(command_parser)
    return declared


async def _plugin_command(settings: Settings, command: Command, args: argparse.Namespace) -> int:
    from core.store import Store

    store = Store(settings.store.url, settings.store.database)
    await store.connect()
    try:
        clock = await _clock(settings, store)
        return await command.run(CommandContext(settings=settings, store=store, clock=clock), args)
    finally:
        await store.close()


async def _what_if(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from core.errors import InvalidInput
    from core.http.app import json_default
    from core.metrics import Metrics
    from core.plugins import STATES, PluginRegistry
    from core.store import Store
    from core.whatif import MAX_LIMIT, instant, parse_assignments, print_tables, replay, with_progress

    def refuse(message: str) -> int:
        print(f"rescenter policy what-if: {message}", file=sys.stderr)
        return 2

    if not 1 <= args.limit <= MAX_LIMIT:
        return refuse(f"--limit must be from 1 to {MAX_LIMIT}")
    at = None
    if args.at is not None:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            return refuse(f"--at {args.at!r} is not an ISO 8601 instant, e.g. 2026-11-30T12:00:00+00:00")
        if at.tzinfo is None:
            return refuse(f"--at {args.at!r} needs an offset (Z or +01:00): the instant must be unambiguous")
    store = Store(settings.store.url, settings.store.database)
    await store.connect()
    try:
        registry = PluginRegistry(settings.plugins, store, Metrics())
        registry.load()
        stored = {d["_id"]: d.get("enabled") async for d in store.collection(STATES).find({})}
        declared = registry.policy_replays()
        replays = [r for r in declared if stored.get(r.plugin, registry.default_enabled(r.plugin))]
        clock = await _clock(settings, store)
        try:
            changes = parse_assignments(args.assignments)
            moment = instant(at, clock)
            with with_progress() as progress:
                answer = await replay(store, replays, settings.policy, changes, moment,
                                      sellers=tuple(args.seller), limit=args.limit, progress=progress,
                                      switched_off=[r for r in declared if r not in replays])
        except InvalidInput as exc:
            return refuse(exc.detail)
        if args.json:
            print(json.dumps(answer, default=json_default, indent=2))  # as the HTTP route answers
        else:
            print_tables(answer, replays)
        return 0
    finally:
        await store.close()


async def _clock(settings: Settings, store: Any) -> Clock:
    from core.clock import SystemClock, TestClock

    if settings.clock.mode == "test":
        test_clock = TestClock(store.collection("clock"))
        await test_clock.refresh()  # the instant the running instances share, read once
        return test_clock
    return SystemClock()


async def _demo(settings: Settings, url: str) -> int:
    from core.demo import DemoError, load

    try:
        await load(settings, url)
    except DemoError as exc:
        print(f"rescenter demo: {exc}", file=sys.stderr)
        return 1
    return 0


async def _run(settings: Settings) -> int:
    from core.service import Service

    service = Service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    # What start-up made (modules, models, routes, plugins) lives as long as the process:
    # frozen, it is out of the collector's reach, and a full collection walks only what
    # requests and messages made since. A full collection over it took about 25 ms, which
    # a request arriving meanwhile waited.
    gc.freeze()
    print(f"rescenter listening on http://{settings.http.host}:{service.port}", file=sys.stderr)
    await stop.wait()
    await service.stop()
    return 0


async def _plugins(settings: Settings, action: str, name: str | None) -> int:
    """Admin tasks straight on the store: running instances follow within seconds. A switch is
    the one `PUT /admin/plugins/{name}` makes (PluginRegistry.switch): stored with its
    `plugin.switched` event, announced once, and not at all if the plugin already is so."""
    import getpass

    from core.bus import Bus
    from core.messages import Actor, core_catalogue
    from core.metrics import Metrics
    from core.outbox import Outbox
    from core.plugins import STATES, PluginRegistry
    from core.scheduler import Scheduler
    from core.store import Store

    store = Store(settings.store.url, settings.store.database)
    await store.connect()
    try:
        registry = PluginRegistry(settings.plugins, store, Metrics())
        registry.load()
        if action == "list":
            stored = {d["_id"]: d async for d in store.collection(STATES).find({})}
            for row in registry.describe():
                if row["loaded"]:
                    on = stored.get(row["name"], {}).get("enabled", registry.default_enabled(row["name"]))
                    print(f"{row['name']:<16} {'on' if on else 'off'}")
                else:
                    print(f"{row['name']:<16} failed: {row['error']}")
            return 0
        assert name is not None
        if name not in registry.modules:
            print(f"rescenter: no plugin named {name!r} is loaded", file=sys.stderr)
            return 1
        bus = Bus(settings.bus, core_catalogue(), registry.metrics)
        try:
            await bus.connect()
        except Exception as exc:  # the event is stored with the switch: an instance's sweeper publishes it
            print(f"rescenter: the broker does not answer ({exc!r}); plugin.switched is announced later",
                  file=sys.stderr)
        clock = await _clock(settings, store)
        outbox = Outbox(store, bus, Scheduler(store, clock, settings.scheduler, registry.metrics, "cli", set),
                        settings.outbox, registry.metrics)
        try:
            changed = await registry.switch(name, action == "enable",
                                            Actor(id=f"cli:{getpass.getuser()}", role="admin"), outbox, clock)
        finally:
            await bus.close()
        state = "on" if action == "enable" else "off"
        if not changed:
            print(f"{name}: already {state}; nothing changed")
            return 0
        print(f"{name}: {state} (running instances follow within "
              f"{settings.plugins.poll_interval.total_seconds():g} s)")
        return 0
    finally:
        await store.close()


def documents(settings: Settings) -> dict[str, Any]:
    """Build both documents without servers: catalogue and routes from the plugins."""
    import dataclasses

    from core.bus import topology
    from core.http.core_routes import core_routes
    from core.http.openapi import openapi_document
    from core.messages import CORE_BINDINGS, asyncapi_document, core_catalogue
    from core.whatif import WhatIfRoute

    registry = _declarations(settings)
    catalogue = core_catalogue()
    for result in registry.call_each("register_message_types"):
        for mt in result.value:
            catalogue.add(dataclasses.replace(mt, owner=result.plugin))
    routes = core_routes()
    for result in registry.call_each("register_routes", services=None):
        routes += [dataclasses.replace(r, plugin=result.plugin) for r in result.value]
    routes.append(WhatIfRoute(registry.policy_replays()).route())
    bindings: dict[str, list[str]] = {"core": list(CORE_BINDINGS)}
    for result in registry.call_each("register_subscriptions", services=_declaring_services(settings)):
        bindings.setdefault(result.plugin, []).extend(t for subscription in result.value for t in subscription.types)
    return {
        "openapi.json": openapi_document(routes),
        "asyncapi.json": asyncapi_document(catalogue, topology(settings.bus, bindings)),
    }


class _NoStore:
    """A store for hooks that only declare: handing out a collection is not I/O, using one would be."""

    def collection(self, name: str) -> None:
        return None

    def batcher(self, name: str) -> None:
        return None


def _declaring_services(settings: Settings) -> Any:
    """What `register_subscriptions` needs to declare its patterns without servers: hooks do no
    I/O in the call (STYLE.md), so their handlers are built and never run."""
    from types import SimpleNamespace

    return SimpleNamespace(settings=settings, store=_NoStore(), clock=None, bus=None, outbox=None,
                           scheduler=None, orders=None, plugins=None, catalogue=None, metrics=None,
                           instance="docs")


def _docs(settings: Settings, *, check: bool) -> int:
    stale = []
    for name, document in documents(settings).items():
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
        path = DOCS / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            DOCS.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"rescenter: stale documents: {', '.join(stale)}; run `rescenter docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
