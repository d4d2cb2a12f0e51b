"""Small waiting helpers shared by the bus, outbox, scheduler and plugin tests."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

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
