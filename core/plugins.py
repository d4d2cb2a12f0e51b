"""Loading plugins and switching them on and off at run time.

Built-in plugins register exactly like outside ones: from `DEFAULT_PLUGINS`,
then modules named in `plugins.extra`, then the `rescenter.plugins` entry-point
group. Each loads alone: one that fails to import, or whose hook raises while the
instance starts (or the command line reads what plugins declare), is reported and
the others run. A name in `plugins.enabled` that is no plugin is refused.

Whether a plugin is on is kept in MongoDB (`plugin_states`), so admins switch
it for every instance at once; each instance re-reads it every
`plugins.poll_interval`. A plugin that is off is blocked in the plugin manager
(it vetoes nothing), its consumer is cancelled (its queue keeps what arrives
meanwhile), its routes answer 503 and its deadlines wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy
import structlog
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from core import hookspecs
from core.clock import Clock
from core.errors import Conflict, NotFound, RuleViolation, Unavailable
from core.messages import Actor, PlaceOrder, PluginSwitched, make_envelope
from core.metrics import Metrics
from core.outbox import Effect, Outbox
from core.settings import PluginSettings, SettingsError
from core.store import Collection, Store, unreachable
from core.whatif import PolicyReplay

log = structlog.get_logger("rescenter.plugins")

DEFAULT_PLUGINS = (
    "plugins.disputes",
    "plugins.reviews",
    "plugins.availability",
    "plugins.blocking",
    "plugins.metrics",
)
ENTRY_POINT_GROUP = "rescenter.plugins"
STATES = "plugin_states"
SWITCH_ATTEMPTS = 8


def plugin_subject(name: str) -> str:
    """The CloudEvents subject of an admin's event about a plugin (as `seller:<id>` for a seller's)."""
    return f"plugin:{name}"


async def await_me_maybe(value: Any) -> Any:
    """Hooks may return a value or an awaitable; every call site awaits what it gets."""
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass(frozen=True)
class HookResult:
    plugin: str
    value: Any


SwitchListener = Callable[[str, bool], Awaitable[None]]


class PluginRegistry:
    def __init__(self, settings: PluginSettings, store: Store, metrics: Metrics) -> None:
        self.settings = settings
        self.pm = pluggy.PluginManager("rescenter")
        self.pm.add_hookspecs(hookspecs)
        self.modules: dict[str, Any] = {}
        self.builtin: set[str] = set()
        self.failed: dict[str, str] = {}
        self.enabled: set[str] = set()
        self.store = store
        self.metrics = metrics
        self.listeners: list[SwitchListener] = []
        self._task: asyncio.Task[None] | None = None
        self._switching = asyncio.Lock()

    # ------------------------------------------------------------ loading

    def load(self) -> None:
        for path in DEFAULT_PLUGINS:
            self._load_one(path.rsplit(".", 1)[-1], lambda p=path: importlib.import_module(p), builtin=True)
        for path in self.settings.extra:
            self._load_one(path.rsplit(".", 1)[-1], lambda p=path: importlib.import_module(p))
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._load_one(ep.name, ep.load)

    def _load_one(self, name: str, loader: Callable[[], Any], *, builtin: bool = False) -> None:
        plugin = None
        try:
            plugin = loader()
            name = getattr(plugin, "NAME", name)  # a plugin may name itself
            if name in self.modules:
                raise ValueError(f"a plugin named {name!r} is already loaded")
            self.pm.register(plugin, name=name)
            # A misspelled hook name is an error of this plugin alone.
            self.pm.check_pending()
        except Exception as exc:
            if plugin is not None and self.pm.is_registered(plugin) and name not in self.modules:
                self.pm.unregister(plugin)
            failed_name = name if name not in self.modules else f"{name} (duplicate)"
            self.failed[failed_name] = f"{type(exc).__name__}: {exc}"
            log.error("plugin failed to load; the others run", plugin=name, error=self.failed[failed_name])
            return
        self.modules[name] = plugin
        if builtin:
            self.builtin.add(name)

    @property
    def collection(self) -> Collection:
        """Where the switches are kept; asked for when used, so that plugins load (and a bad
        `plugins.enabled` is refused) before the store is connected."""
        return self.store.collection(STATES)

    def default_enabled(self, name: str) -> bool:
        return name in self.settings.enabled or name not in self.builtin

    def check_enabled(self) -> None:
        """Refuse a name in `plugins.enabled` that no plugin has: a typo ("reveiws") would
        otherwise switch off the built-in plugin it meant, without a word. A plugin that failed
        to load is known (it is reported as failed), and so are outside ones."""
        known = set(self.modules) | set(self.failed)
        unknown = [name for name in self.settings.enabled if name not in known]
        if unknown:
            raise SettingsError(f"plugins.enabled: no plugin named {', '.join(map(repr, unknown))}; "
                                f"the plugins are {', '.join(sorted(known))}")

    def fail(self, name: str, hook_name: str, exc: BaseException) -> None:
        """Take out a loaded plugin whose start-up hook raised, as if it had not loaded: it is
        reported with the error (/admin/plugins) and never switched on here, so its consumer
        does not start, its routes answer 503 and its deadlines wait; the others and the core
        carry on. Called before the first `refresh`, while no plugin is on yet."""
        self.failed[name] = f"{hook_name}: {type(exc).__name__}: {exc}"
        log.error("plugin failed to start; the others run", plugin=name, error=self.failed[name])
        self.pm.unregister(name=name)
        del self.modules[name]
        self.builtin.discard(name)

    # ------------------------------------------------------------ calling

    def call_each(self, hook_name: str, **kwargs: Any) -> list[HookResult]:
        """Call a declaring hook on each plugin, keeping who answered what. These are called
        while an instance starts and while the command line reads what plugins declare: a
        plugin that raises is failed (`fail`) with nothing of what it declared, and the others
        run."""
        results = []
        for impl in self._impls(hook_name):
            if impl.plugin_name not in self.modules:
                continue  # failed by its other implementation of this hook
            try:
                value = impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception as exc:
                self.fail(impl.plugin_name, hook_name, exc)
                continue
            if value is not None:
                results.append(HookResult(impl.plugin_name, value))
        # A plugin failed by its second implementation of the hook keeps nothing of its first either.
        return [result for result in results if result.plugin in self.modules]

    def ask_each(self, hook_name: str, **kwargs: Any) -> list[HookResult]:
        """Call a hook on each enabled plugin while serving (ORD-5): what one raises is the
        caller's to answer, for this call only; it does not fail the plugin."""
        results = []
        for impl in self._impls(hook_name):
            value = impl.function(**{name: kwargs[name] for name in impl.argnames})
            if value is not None:
                results.append(HookResult(impl.plugin_name, value))
        return results

    def _impls(self, hook_name: str) -> list[Any]:
        """The hook's implementations in the order pluggy calls them (the last registered first)."""
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    async def start_each(self, services: Any) -> None:
        """The `startup` hook of each plugin, awaited in turn. One that raises is failed
        (`fail`); a store that does not answer is no plugin's fault, and fails the start as it
        fails the core's own indexes."""
        for result in self.call_each("startup", services=services):
            try:
                await await_me_maybe(result.value)
            except Exception as exc:
                if unreachable(exc):
                    raise
                self.fail(result.plugin, "startup", exc)

    def policy_replays(self) -> list[PolicyReplay]:
        """What each plugin can replay under another policy (the what-if), with its plugin's name."""
        return [dataclasses.replace(replay, plugin=result.plugin)
                for result in self.call_each("register_policy_replays") for replay in result.value]

    # ------------------------------------------------------------ switching

    async def refresh(self) -> None:
        """Follow the switches stored in MongoDB."""
        stored = {doc["_id"]: doc["enabled"] async for doc in self.collection.find({}, {"enabled": 1})}
        wanted = {
            name for name in self.modules if stored.get(name, self.default_enabled(name))
        }
        async with self._switching:
            for name in sorted(self.modules):
                on = name in wanted
                if on != (name in self.enabled):
                    await self._apply(name, on)

    async def _apply(self, name: str, on: bool) -> None:
        if on:
            self.pm.unblock(name)
            if self.pm.get_plugin(name) is None:
                self.pm.register(self.modules[name], name=name)
            self.enabled.add(name)
        else:
            self.pm.set_blocked(name)
            self.enabled.discard(name)
        self.metrics.plugin_enabled.labels(name).set(1 if on else 0)
        log.info("plugin switched", plugin=name, enabled=on)
        for listener in self.listeners:
            await listener(name, on)

    async def switch(self, name: str, on: bool, actor: Actor, outbox: Outbox, clock: Clock) -> bool:
        """An admin's switch: stored for every instance, applied here at once, and announced
        with `plugin.switched` (subject `plugin:<name>`). A switch to the state the plugin is
        already in changes nothing and announces nothing. Returns whether it changed."""
        if name not in self.modules:
            raise NotFound(f"no plugin named {name!r} is loaded", plugin=name)
        for _ in range(SWITCH_ATTEMPTS):
            stored = await self.collection.find_one({"_id": name}, {"enabled": 1})
            current = stored["enabled"] if stored is not None else self.default_enabled(name)
            if current == on:
                await self.refresh()
                return False
            now = clock.now()
            event = make_envelope("plugin.switched", PluginSwitched(plugin=name, enabled=on, actor=actor),
                                  subject=plugin_subject(name), time=now)
            fields = {"enabled": on, "changed_at": now, "changed_by": actor.id}
            doc: dict[str, Any] | None
            if stored is None:
                doc = {"_id": name, **fields, **outbox.initial([Effect.publish(event)])}
                try:
                    await self.collection.insert_one(doc)
                except DuplicateKeyError:
                    continue  # another admin's switch was stored first: look again
            else:
                # Guarded by the state read, so two admins flipping it at once announce it once.
                doc = await self.collection.find_one_and_update(
                    {"_id": name, "enabled": current}, outbox.stage({"$set": fields}, [Effect.publish(event)]),
                    return_document=ReturnDocument.AFTER,
                )
                if doc is None:
                    continue
            try:
                await outbox.flush(STATES, doc)
            except Exception as exc:  # stored: the sweeper publishes the event once the broker is back
                log.warning("plugin.switched deferred to the outbox sweeper", plugin=name, error=repr(exc))
            await self.refresh()
            return True
        raise Conflict(f"plugin {name!r} is being switched by someone else; try again", plugin=name)

    def start_following(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="plugin-switches")

    async def _follow(self) -> None:
        interval = self.settings.poll_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not read plugin switches; will retry", error=repr(exc))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def ask_vetoes(self, services: Any, command: PlaceOrder) -> None:
        """ORD-5: every enabled plugin is asked about a new order; one refusal refuses it
        (raised as a RuleViolation), and every plugin then undoes what it reserved."""
        calls = self.ask_each("veto_order", services=services, order=command)
        answers = await asyncio.gather(*(await_me_maybe(r.value) for r in calls), return_exceptions=True)
        outage = next((a for a in answers if isinstance(a, BaseException) and unreachable(a)), None)
        if outage is not None:
            # Not a refusal: the order could not be checked now and may be placed later (over
            # the bus the command runs again once the store answers; over HTTP a 503).
            await self._undo_placement(services, command, "the store is unreachable")
            raise Unavailable("cannot check the new order: the store is unreachable") from outage
        vetoes = []
        for result, answer in zip(calls, answers, strict=True):
            if isinstance(answer, BaseException):
                log.error("veto hook failed; the order is refused to be safe", plugin=result.plugin,
                          error=repr(answer))
                vetoes.append((result.plugin, None, f"{result.plugin} could not check this order"))
            elif answer is not None:
                vetoes.append((result.plugin, answer, answer.reason))
        if not vetoes:
            return
        plugin, veto, reason = vetoes[0]
        log.info("order refused by a plugin", order_id=command.order_id, plugin=plugin,
                 plugin_rule=veto.rule if veto else None, seller_id=command.seller_id)
        await self._undo_placement(services, command, reason)
        if veto is not None and veto.discreet:
            raise RuleViolation(reason, rule="ORD-5")
        raise RuleViolation(
            reason,
            rule="ORD-5",
            plugin=plugin,
            plugin_rule=veto.rule if veto else None,
            **(veto.details if veto else {}),
        )

    async def _undo_placement(self, services: Any, command: PlaceOrder, reason: str) -> None:
        for undo in self.ask_each("order_not_placed", services=services, order=command, reason=reason):
            try:
                await await_me_maybe(undo.value)
            except Exception:
                log.exception("order_not_placed hook failed", plugin=undo.plugin)

    def describe(self) -> list[dict[str, Any]]:
        rows = [
            {"name": name, "loaded": True, "enabled": name in self.enabled, "builtin": name in self.builtin}
            for name in sorted(self.modules)
        ]
        rows += [
            {"name": name, "loaded": False, "enabled": False, "error": error}
            for name, error in sorted(self.failed.items())
        ]
        return rows
