"""Small helpers shared by the tests: waiting for a condition, running a command, the\nrabbitmqctl that administers the broker under test."""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.service import Service

PROBLEM = "application/problem+json"


async def eventually(check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05,
                     what: str = "condition") -> Any:
    """Poll `check` (sync or async) until it returns something truthy; return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def consumed(service: Service, group: str, type_: str, outcome: str = "ok") -> float:
    """How many messages of `type_` the instance's `group` consumer finished with `outcome`."""
    assert service.services is not None
    value = service.services.metrics.registry.get_sample_value(
        "rescenter_consumed_total", {"plugin": group, "type": type_, "outcome": outcome}
    )
    return value or 0.0


def header(message: Any, name: str) -> str:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else str(value)


def problem(client: Any, payload: Any, status: int, **expected: Any) -> dict[str, Any]:
    """The last answer was problem+json with `status`, and carries `expected`."""
    assert client.last_status == status, payload
    assert client.last_content_type == PROBLEM, (client.last_content_type, payload)
    assert isinstance(payload, dict), payload
    for member in ("type", "title", "status", "detail"):
        assert payload.get(member), f"no {member!r} in {payload}"
    assert payload["status"] == status
    for key, value in expected.items():
        assert payload.get(key) == value, f"{key}: {payload.get(key)!r} != {value!r} in {payload}"
    return payload


async def run(*command: str, timeout: float = 60) -> tuple[int, str]:
    """Run a command; its exit code and its output (stdout and stderr together)."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return -1, f"{command} took more than {timeout} s"
    return process.returncode or 0, output.decode(errors="replace")


def rabbitmqctl_candidates() -> list[str]:
    """scripts/services writes a rabbitmqctl aimed at the node it runs; else the one on PATH."""
    shim = Path(__file__).resolve().parent.parent / ".local" / "bin" / "rabbitmqctl"
    found = [str(shim)] if shim.is_file() else []
    on_path = shutil.which("rabbitmqctl")
    return found + ([on_path] if on_path and on_path not in found else [])


async def rabbitmqctl_for(port: int) -> str:
    """The rabbitmqctl that administers the node serving AMQP on `port`; else the test is skipped
    (a broker started by someone else is not ours to restart or to add users to)."""
    tried = []
    for tool in rabbitmqctl_candidates():
        code, output = await run(tool, "-q", "status", "--formatter", "json", timeout=30)
        try:
            listeners = json.loads(output).get("listeners", []) if code == 0 else []
        except ValueError:
            listeners = []
        if any(item.get("protocol") == "amqp" and item.get("port") == port for item in listeners):
            return tool
        tried.append(f"{tool} (exit {code})")
    pytest.skip(f"no rabbitmqctl of this checkout reaches the node serving AMQP on port {port}; tried {tried}")
