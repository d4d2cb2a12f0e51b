"""One plugin's fault is that plugin's alone: a hook that raises while an instance starts
(or while the command line reads what plugins declare) fails that plugin, reported in
/admin/plugins, and the others, the core and every `rescenter` command carry on. A
misspelled name in `plugins.enabled` stops the start instead of switching a plugin off
without a word. A switch made on the command line is announced like an admin's over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from core.bus import delete_topology
from core.settings import SettingsError
from tests.embedded import free_port
from tests.harness import ORDER, Harness
from tests.support import eventually
from tests.test_two_processes import RESCENTER, ServiceProcess, process_env

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ["disputes", "reviews", "availability", "blocking", "metrics"]
RAISING = "tests.raising_plugin"


def rescenter(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RESCENTER, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


async def test_a_plugin_whose_hook_raises_at_start_is_reported_failed_and_the_others_run() -> None:
    extra = [RAISING, "tests.startup_failing_plugin", "tests.probe_plugin"]
    async with Harness(plugins={"extra": extra}) as h:
        service = await h.start_instance()
        assert service.services is not None
        admin = h.client(service, "admin-1", "admin")
        rows = {p["name"]: p for p in (await admin.get("/admin/plugins", expect=200))["plugins"]}

        assert rows["raising"] == {"name": "raising", "loaded": False, "enabled": False, "error":
                                   "register_routes: RuntimeError: the raising plugin cannot declare its routes (tests)"}
        assert rows["startup_failing"]["loaded"] is False and rows["startup_failing"]["enabled"] is False
        assert rows["startup_failing"]["error"] == (
            "startup: ValueError: the startup_failing plugin cannot prepare its collections (tests)")
        for name in [*BUILTIN, "probe"]:
            assert rows[name]["loaded"] is True and rows[name]["enabled"] is True, rows[name]

        # What a failed plugin declared before it raised does not run: its consumer never starts
        # (its queue keeps what arrives for a fixed version), its routes answer 503.
        assert service.services.bus.groups["raising"].consumer_tag is None
        problem = await admin.get("/startup-failing/ping", expect=503)
        assert problem["plugin"] == "startup_failing"

        # The others do run: the probe vetoes and consumes, orders are placed.
        buyer = h.client(service, "buyer-1", "buyer")
        assert (await buyer.post("/orders", {**ORDER, "gig_id": "vetoed-gig"}, expect=409))["plugin"] == "probe"
        order_id = (await buyer.post("/orders", ORDER, expect=201))["id"]
        await h.probe.wait_for("order.placed", lambda m: m.subject == order_id)
        seen = service.services.store.collection("probe_seen")
        await eventually(lambda: seen.find_one({"subject": order_id}), what="the probe consumes the order")
        assert await service.services.store.collection("raising_seen").count_documents({}) == 0


async def test_a_plugin_whose_commands_or_routes_raise_stops_no_rescenter_command() -> None:
    async with Harness() as h:
        assert h.session is not None
        port = free_port()
        env = process_env(h.settings, "isolation", port)
        env["RESCENTER_PLUGINS__EXTRA"] = f'["{RAISING}"]'
        try:
            token, check, listed = await asyncio.gather(
                asyncio.to_thread(rescenter, env, "token", "admin-1", "admin"),
                asyncio.to_thread(rescenter, env, "check-config"),
                asyncio.to_thread(rescenter, env, "plugins", "list"))
            for result in (token, check, listed):
                assert result.returncode == 0, result.stderr
                assert "Traceback" not in result.stderr, result.stderr
            assert all(f"{name} " in listed.stdout for name in BUILTIN), listed.stdout

            run = ServiceProcess("isolation", env, port, Path(tempfile.mkdtemp(prefix="rescenter-isolation-")) / "run.log")
            try:
                await run.start(h.session)
                async with h.session.get(f"{run.base}/admin/plugins",
                                         headers={"Authorization": f"Bearer {h.token('admin-1', 'admin')}"}) as answer:
                    rows = {p["name"]: p for p in (await answer.json())["plugins"]}
                assert rows["raising"]["loaded"] is False and "register_routes" in rows["raising"]["error"]
                assert all(rows[name]["enabled"] for name in BUILTIN), rows
            finally:
                assert await run.stop() == 0
        finally:
            with contextlib.suppress(Exception):
                await delete_topology(h.settings.bus, {"raising"})


async def test_a_misspelled_plugin_in_plugins_enabled_stops_the_start_and_names_the_plugins() -> None:
    async with Harness(plugins={"extra": ["tests.probe_plugin"]}) as h:
        typo = ["disputes", "reveiws", "availability", "blocking", "metrics"]
        with pytest.raises(SettingsError) as refused:
            await h.start_instance(plugins={"enabled": typo})
        message = str(refused.value)
        assert "plugins.enabled" in message and "'reveiws'" in message
        assert "the plugins are availability, blocking, disputes, metrics, probe, reviews" in message

        # The command line reads the same configuration: every command refuses it, with exit 2.
        env = process_env(h.settings, "cli", 0)
        env["RESCENTER_PLUGINS__ENABLED"] = json.dumps(typo)
        for command in (("check-config",), ("run",)):
            result = await asyncio.to_thread(rescenter, env, *command)
            assert result.returncode == 2 and "'reveiws'" in result.stderr, (command, result.stderr)
            assert "Traceback" not in result.stderr

        # An outside plugin's name is a plugin's name too; and one left out is simply off.
        service = await h.start_instance(plugins={"enabled": ["disputes", "probe"]})
        assert service.services is not None
        assert service.services.plugins.enabled == {"disputes", "probe"}


async def test_a_switch_on_the_command_line_is_announced_once_with_plugin_switched() -> None:
    async with Harness(plugins={"extra": ["tests.probe_plugin"]}) as h:
        service = await h.start_instance()
        assert service.services is not None
        env = process_env(h.settings, "cli", 0)
        env["RESCENTER_PLUGINS__EXTRA"] = '["tests.probe_plugin"]'

        disabled = await asyncio.to_thread(rescenter, env, "plugins", "disable", "probe")
        assert disabled.returncode == 0, disabled.stderr
        [event] = await h.probe.wait_for("plugin.switched")
        assert event.subject == "plugin:probe"
        assert event.data["plugin"] == "probe" and event.data["enabled"] is False
        assert event.data["actor"]["role"] == "admin" and event.data["actor"]["id"].startswith("cli:")
        await eventually(lambda: "probe" not in service.services.plugins.enabled, timeout=5,
                         what="the running instance follows")

        # The state it is already in: nothing stored, nothing announced.
        again = await asyncio.to_thread(rescenter, env, "plugins", "disable", "probe")
        assert again.returncode == 0 and "already off" in again.stdout, (again.stdout, again.stderr)
        await h.probe.settle(0.3)
        assert [m.id for m in h.probe.of_type("plugin.switched")] == [event.id]

        enabled = await asyncio.to_thread(rescenter, env, "plugins", "enable", "probe")
        assert enabled.returncode == 0, enabled.stderr
        [_, back] = await h.probe.wait_for("plugin.switched", count=2)
        assert back.data["enabled"] is True
        await eventually(lambda: "probe" in service.services.plugins.enabled, timeout=5,
                         what="the running instance follows")

