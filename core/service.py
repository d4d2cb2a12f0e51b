"""One running instance of rescenter: wires the parts, starts and stops them."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import structlog
from aiohttp import web

from core.bus import Bus, Subscription
from core.clock import Clock, SystemClock, TestClock
from core.console import console_app
from core.dead_letters import DeadLetters
from core.http.app import build_app
from core.http.core_routes import core_routes
from core.http.idempotency import IdempotencyKeys
from core.http.routes import Route
from core.messages import (
    CORE_BINDINGS,
    AcceptDelivery,
    AmendOrder,
    CancelByAgreement,
    CancelOrder,
    ChargebackReported,
    DeliverOrder,
    Envelope,
    ExtendDelivery,
    MessageData,
    PlaceOrder,
    RequestRevision,
    SubmitRequirements,
    core_catalogue,
)
from core.metrics import Metrics
from core.orders import AUTO_COMPLETE, LATE, OrderService
from core.outbox import Outbox
from core.plugins import STATES, PluginRegistry
from core.scheduler import CORE_OWNER, Scheduler
from core.services import Services
from core.settings import Settings
from core.store import Store
from core.whatif import WhatIfRoute

log = structlog.get_logger("rescenter.service")

CORE_GROUP = "core"


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Services | None = None
        self.routes: list[Route] = []
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.idempotency: IdempotencyKeys | None = None

    async def start(self, *, http: bool = True) -> Services:
        settings = self.settings
        instance = settings.service.instance
        metrics = Metrics()
        store = Store(settings.store.url, settings.store.database, metrics=metrics)
        plugins = PluginRegistry(settings.plugins, store, metrics)
        plugins.load()
        plugins.check_enabled()  # before connecting to anything: a misspelled name stops the start
        await store.connect()
        clock: Clock = TestClock(store.collection("clock")) if settings.clock.mode == "test" else SystemClock()
        if isinstance(clock, TestClock):
            await clock.start()
            log.warning("test clock mode: time is frozen and moves only when an admin advances it")
        catalogue = core_catalogue()
        for result in plugins.call_each("register_message_types"):
            for message_type in result.value:
                catalogue.add(dataclasses.replace(message_type, owner=result.plugin))
        bus = Bus(settings.bus, catalogue, metrics)
        await bus.connect()
        scheduler = Scheduler(store, clock, settings.scheduler, metrics, instance,
                              active_owners=lambda: {CORE_OWNER} | plugins.enabled)
        outbox = Outbox(store, bus, scheduler, settings.outbox, metrics)
        outbox.register(STATES)
        orders = OrderService(store, outbox, clock, settings.policy.orders,
                              ask_vetoes=lambda order: plugins.ask_vetoes(self.services, order))
        services = Services(settings=settings, clock=clock, store=store, bus=bus, outbox=outbox,
                            scheduler=scheduler, orders=orders, plugins=plugins, catalogue=catalogue,
                            metrics=metrics, instance=instance)
        self.services = services

        # Declarations first, from every loaded plugin, so one switched off now can come back later.
        for result in plugins.call_each("register_outbox_collections"):
            for name in result.value:
                outbox.register(name)
        await bus.declare_group(CORE_GROUP, self._core_subscriptions(orders))
        subscriptions: dict[str, list[Subscription]] = {}
        for result in plugins.call_each("register_subscriptions", services=services):
            subscriptions.setdefault(result.plugin, []).extend(result.value)
        for plugin, declared in subscriptions.items():
            await bus.declare_group(plugin, declared)
        services.dead_letters = DeadLetters(bus, store, metrics)
        await services.dead_letters.start()
        scheduler.register(CORE_OWNER, LATE, orders.on_late)
        scheduler.register(CORE_OWNER, AUTO_COMPLETE, orders.on_auto_complete)
        for result in plugins.call_each("register_deadline_handlers", services=services):
            for kind, handler in result.value.items():
                scheduler.register(result.plugin, kind, handler)
        self.routes = core_routes()
        for result in plugins.call_each("register_routes", services=services):
            self.routes += [dataclasses.replace(route, plugin=result.plugin) for route in result.value]
        self.routes.append(WhatIfRoute(plugins.policy_replays()).route())
        self.idempotency = IdempotencyKeys(store, settings.idempotency)
        await asyncio.gather(scheduler.create_indexes(), orders.create_indexes(), outbox.create_indexes(),
                             self.idempotency.create_indexes())
        await orders.fill_lists()
        await plugins.start_each(services)

        plugins.listeners.append(self._on_switch)
        await plugins.refresh()
        await bus.start_consuming(CORE_GROUP)
        plugins.start_following()
        scheduler.start()
        outbox.start(instance)
        self.idempotency.start()
        if http:
            await self._start_http(services)
        log.info("rescenter started", instance=instance, plugins=sorted(plugins.enabled),
                 failed=sorted(plugins.failed), port=self.port)
        return services

    async def _start_http(self, services: Services) -> None:
        self.app = build_app(services, self.routes, self.idempotency)
        self.app.add_subapp("/console", console_app(self.settings))
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        server = site._server  # the bound port, when 0 asked for any free one
        self.port = server.sockets[0].getsockname()[1] if server and server.sockets else self.settings.http.port

    async def _on_switch(self, plugin: str, on: bool) -> None:
        assert self.services is not None
        bus = self.services.bus
        if plugin not in bus.groups:
            return
        if on:
            await bus.start_consuming(plugin)
        else:
            await bus.stop_consuming(plugin)

    def _core_subscriptions(self, orders: OrderService) -> list[Subscription]:
        async def on_command(envelope: Envelope, data: MessageData) -> None:
            await handle_core_message(orders, envelope, data)

        return [Subscription(types=CORE_BINDINGS, handler=on_command)]

    async def stop(self) -> None:
        """Stop taking work, finish what is in flight, then close connections."""
        services = self.services
        if self._runner is not None:
            await self._runner.cleanup()
        if services is None:
            return
        await services.plugins.stop()
        await services.scheduler.stop()
        if services.dead_letters is not None:
            await services.dead_letters.stop()
        await services.bus.close()  # cancels consumers, drains in-flight handlers
        await services.outbox.stop()
        if self.idempotency is not None:
            await self.idempotency.stop()
        if isinstance(services.clock, TestClock):
            await services.clock.stop()
        await services.store.close()
        log.info("rescenter stopped", instance=services.instance)

    async def kill(self) -> None:
        """Drop everything at once, as a crashed process would (for tests)."""
        services = self.services
        if self._runner is not None:
            # The port stops listening and open connections drop, requests in flight included
            # (`stop()` still releases the rest).
            for site in list(self._runner.sites):
                await site.stop()
            if self._runner.server is not None:
                for connection in self._runner.server.connections:
                    connection.force_close()
        if services is None:
            return
        await services.outbox.stop(retire=False)  # its record runs out: another instance sweeps
        for stoppable in (services.plugins, services.scheduler, self.idempotency):
            if stoppable is not None:
                await stoppable.stop()
        if isinstance(services.clock, TestClock):
            await services.clock.stop()
        if services.bus.connection is not None:
            await services.bus.connection.close()
        await services.store.close()


async def handle_core_message(orders: OrderService, envelope: Envelope, data: Any) -> None:
    """Commands from other marketplace services and facts from payments (ORD-7)."""
    mid = envelope.id
    match data:
        case PlaceOrder():
            from core.messages import Actor

            await orders.place(data, Actor(id=envelope.source, role="service"), message_id=mid)
        case SubmitRequirements():
            await orders.submit_requirements(data.order_id, data.actor, data.requirements, message_id=mid)
        case DeliverOrder():
            await orders.deliver(data.order_id, data.actor, data.message, data.attachments, message_id=mid)
        case AcceptDelivery():
            await orders.accept(data.order_id, data.actor, message_id=mid)
        case RequestRevision():
            await orders.request_revision(data.order_id, data.actor, data.reason, message_id=mid)
        case CancelOrder():
            await orders.cancel(data.order_id, data.actor, cause="support", reason=data.reason, message_id=mid)
        case ChargebackReported():
            await orders.chargeback(data.order_id, message_id=mid)
        # The resolution center's agreements (DSP-4, DSP-6, DSP-7, DSP-8), staged in its outbox
        # with the write that accepted the request: the envelope id makes them apply once.
        case CancelByAgreement():
            await orders.cancel(data.order_id, data.actor, cause="mutual_agreement", rule=data.rule,
                                requested_by=data.requested_by, request_id=data.request_id, message_id=mid)
        case ExtendDelivery():
            await orders.extend_delivery(data.order_id, data.actor, data.days, rule=data.rule,
                                         request_id=data.request_id, message_id=mid)
        case AmendOrder():
            await orders.amend(data.order_id, data.actor, added_revisions=data.added_revisions,
                               added_days=data.added_days, added_price=data.added_price, rule=data.rule,
                               request_id=data.request_id, message_id=mid)
        case _:
            raise TypeError(f"the core does not handle {envelope.type}")
