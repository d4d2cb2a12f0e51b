"""Every hook of core/hookspecs.py, exercised through a plugin loaded like an
outside one (tests/probe_plugin.py), against the real servers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import structlog

from core.commands import Command, CommandContext
from core.hookspecs import hookimpl
from tests.harness import ORDER, Harness
from tests.probe_plugin import PINGS, REMINDERS, UNPLACED, ProbePing

PROBE = {"plugins": {"extra": ["tests.probe_plugin"]}}


async def test_register_message_types_adds_the_plugin_types_to_the_catalogue_and_asyncapi() -> None:
    async with Harness(**PROBE) as h:
        service = await h.start_instance()
        catalogue = service.services.catalogue
        assert catalogue.types["probe.ping"].owner == "probe"
        document = await h.client(service).get("/asyncapi.json", expect=200)
        assert document["channels"]["probe_ping"]["address"] == "probe.ping"
        assert "receive_probe_ping" in document["operations"]


async def test_subscriptions_outbox_and_deadline_handlers_work_together() -> None:
    async with Harness(**PROBE) as h:
        service = await h.start_instance()
        admin = h.client(service, "admin-1", "admin")
        envelope = await h.publish("probe.ping", ProbePing(order_id="o-1", remind_in_hours=2), subject="o-1")
        await h.publish("probe.ping", ProbePing(order_id="o-1", remind_in_hours=2), subject="o-1", id=envelope.id)
        store = service.services.store
        deadline_id = f"probe/{envelope.id}"
        for _ in range(50):  # the handler stored the ping and, through its outbox, the deadline
            if await store.collection("deadlines").find_one({"_id": deadline_id}):
                break
            import asyncio

            await asyncio.sleep(0.1)
        assert await store.collection(PINGS).count_documents({}) == 1
        ping = await store.collection(PINGS).find_one({"_id": envelope.id})
        assert ping["_outbox"] == []  # the effects were applied and cleared

        await admin.post("/admin/clock/advance", {"by": "PT1H59M59S"}, expect=200)
        assert await store.collection(REMINDERS).find_one({"_id": deadline_id}) is None
        moved = await admin.post("/admin/clock/advance", {"by": "PT1S"}, expect=200)
        assert [f["kind"] for f in moved["fired"]] == ["probe.reminder"]
        assert (await store.collection(REMINDERS).find_one({"_id": deadline_id}))["fired"] == 1


async def test_startup_hook_prepares_the_plugin_collections() -> None:
    async with Harness(**PROBE) as h:
        service = await h.start_instance()
        indexes = await service.services.store.collection("probe_seen").index_information()
        assert "probe_subject" in indexes


async def test_ORD_5_order_not_placed_lets_plugins_undo_what_they_reserved() -> None:
    async with Harness(**PROBE) as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        problem = await buyer.post("/orders", {**ORDER, "gig_id": "vetoed-gig"}, expect=409)
        undone = [d async for d in service.services.store.collection(UNPLACED).find({})]
        assert len(undone) == 1 and undone[0]["reason"] == problem["detail"]


async def test_log_lines_written_while_handling_a_message_carry_its_context() -> None:
    captured: list[dict] = []

    def capture(logger: object, method: str, event: dict) -> dict:
        captured.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        async with Harness() as h:
            await h.start_instance()
            envelope = await h.publish("command.order.place", {
                "order_id": "logged-order", "buyer_id": "b-1", "seller_id": "s-1", "gig_id": "g-1",
                "price": {"amount": "10.00", "currency": "EUR"}, "delivery_days": 2,
            }, subject="logged-order")
            await h.probe.wait_for("order.placed", lambda m: m.subject == "logged-order")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []
    placed = [e for e in captured if e.get("event") == "order placed"]
    assert placed, captured
    assert placed[0]["message_id"] == envelope.id
    assert placed[0]["type"] == "command.order.place"
    assert placed[0]["order_id"] == "logged-order"
    assert placed[0]["plugin"] == "core"


# ---------------------------------------------------------------- register_commands: this module, loaded as a plugin

ROOT = Path(__file__).resolve().parent.parent


@hookimpl
def register_commands() -> list[Command]:
    """Only when `plugins.extra` names this module (the subprocess below), as plugin `test_hooks`."""

    async def clock(context: CommandContext, args: argparse.Namespace) -> int:
        await context.store.ping()
        print(f"{args.greeting} at {context.clock.now().isoformat()} ({context.clock.mode})", file=context.out)
        return 3 if args.fail else 0

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("greeting")
        parser.add_argument("--fail", action="store_true")

    return [Command("clock", "Print the service clock.", clock, arguments=arguments)]


async def test_register_commands_runs_as_rescenter_plugin_command_with_the_store_and_the_clock() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        moved = await h.client(service, "admin-1", "admin").post("/admin/clock/advance", {"by": "P3D"}, expect=200)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESCENTER_")}
        env.update({"RESCENTER_PLUGINS__EXTRA": '["tests.test_hooks"]', "RESCENTER_CLOCK__MODE": "test",
                    "RESCENTER_SERVICE__ENVIRONMENT": "test", "RESCENTER_STORE__URL": h.settings.store.url,
                    "RESCENTER_STORE__DATABASE": h.settings.store.database})

        def rescenter(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)

        ran, failed, listed = await asyncio.gather(
            asyncio.to_thread(rescenter, "test_hooks", "clock", "hello"),
            asyncio.to_thread(rescenter, "test_hooks", "clock", "hello", "--fail"),
            asyncio.to_thread(rescenter, "--help"))
    # The shared test instant, read from the store: the command got both.
    assert ran.returncode == 0 and f"hello at {moved['now']} (test)" in ran.stdout, ran.stderr
    assert failed.returncode == 3  # the command's exit status is the process's
    assert "test_hooks" in listed.stdout
