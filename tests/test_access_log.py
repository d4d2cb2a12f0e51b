"""One access-log line per HTTP request, and the request id (`X-Request-Id`) accepted or
made, answered, and carried into the log lines and the events the request causes, even
through the messages it causes in turn (DSP-7: the resolution center's command to the core)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tests.harness import ORDER, Harness


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []

    def capture(logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        captured.append({**event, "level": method})
        raise structlog.DropEvent

    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield captured
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []


def access_lines(lines: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == "request" and line.get("request_id") == request_id]


async def test_each_request_is_logged_once_with_its_route_template_status_caller_and_request_id(
        log_lines: list[dict[str, Any]]) -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer = h.client(service, "buyer-1", "buyer")
        order = await buyer.post("/orders", ORDER, expect=201, headers={"X-Request-Id": "req-place-1"})
        assert buyer.last_headers["X-Request-Id"] == "req-place-1"
        await buyer.get(f"/orders/{order['id']}", expect=200, headers={"X-Request-Id": "req-read-1"})
        # ORD-4: a buyer may not deliver; the refusal is logged with who asked.
        await buyer.post(f"/orders/{order['id']}/deliveries", {"message": "x"}, expect=403,
                         headers={"X-Request-Id": "req-refused-1"})
        assert buyer.last_headers["X-Request-Id"] == "req-refused-1"
        await h.client(service).get("/orders", expect=401, headers={"X-Request-Id": "req-anonymous-1"})

        [placed] = access_lines(log_lines, "req-place-1")
        assert {k: placed[k] for k in ("method", "route", "status", "caller", "role", "level")} == {
            "method": "POST", "route": "/orders", "status": 201, "caller": "buyer-1", "role": "buyer",
            "level": "info"}
        assert placed["duration_ms"] >= 0
        [read] = access_lines(log_lines, "req-read-1")
        assert (read["route"], read["status"]) == ("/orders/{order_id}", 200)  # the template, not the id
        assert order["id"] not in read["route"]
        [refused] = access_lines(log_lines, "req-refused-1")
        assert (refused["route"], refused["status"], refused["caller"]) == (
            "/orders/{order_id}/deliveries", 403, "buyer-1")
        [anonymous] = access_lines(log_lines, "req-anonymous-1")
        assert (anonymous["status"], anonymous["caller"], anonymous["role"]) == (401, None, None)
        # Lines logged while handling a request carry its id too.
        assert any(line.get("event") == "order placed" and line.get("request_id") == "req-place-1"
                   for line in log_lines)

        counted = service.services.metrics.registry.get_sample_value(
            "rescenter_http_requests_total", {"method": "GET", "route": "/orders/{order_id}", "status": "200"})
        assert counted == 1


async def test_a_request_id_is_made_when_none_is_sent_or_the_one_sent_is_not_one() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        client = h.client(service)
        await client.get("/healthz", expect=200)
        made = client.last_headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        await client.get("/healthz", expect=200)
        assert client.last_headers["X-Request-Id"] != made  # one per request
        for sent in ("has spaces in it", "x" * 129, "new\\nline"):
            await client.get("/healthz", expect=200, headers={"X-Request-Id": sent})
            assert re.fullmatch(r"[0-9a-f]{32}", client.last_headers["X-Request-Id"])
        await client.get("/no/such/route", expect=404, headers={"X-Request-Id": "req-404"})
        assert client.last_headers["X-Request-Id"] == "req-404"


async def test_DSP_7_the_events_a_request_causes_carry_its_request_id_through_the_bus() -> None:
    async with Harness() as h:
        service = await h.start_instance()
        buyer, seller = h.client(service, "buyer-7", "buyer"), h.client(service, "seller-7", "seller")
        order = await buyer.post("/orders", {**ORDER, "seller_id": "seller-7"}, expect=201,
                                 headers={"X-Request-Id": "req-order-7"})
        [placed] = await h.probe.wait_for("order.placed", lambda m: m.subject == order["id"])
        assert placed.requestid == "req-order-7"
        await buyer.post(f"/orders/{order['id']}/requirements", {"requirements": "a logo"}, expect=200)
        request = await seller.post(f"/orders/{order['id']}/resolution/requests",
                                    {"kind": "extension_request", "days": 2, "reason": "More variants."},
                                    expect=201)
        await buyer.post(f"/orders/{order['id']}/resolution/requests/{request['id']}/answer",
                         {"answer": "accept"}, expect=200, headers={"X-Request-Id": "req-accept-7"})

        # The center's command to the core, and the core's event for it, come from that request.
        [command] = await h.probe.wait_for("command.order.extend_delivery", lambda m: m.subject == order["id"])
        [extended] = await h.probe.wait_for("order.delivery_extended", lambda m: m.subject == order["id"])
        assert (command.requestid, extended.requestid) == ("req-accept-7", "req-accept-7")
        requirements = h.probe.of_type("order.requirements_submitted", order["id"])
        assert requirements[0].requestid not in (None, "req-order-7", "req-accept-7")


async def test_DSP_10_the_resolution_centers_lines_keep_the_requests_id_and_name_the_dispute_request_apart(
        log_lines: list[dict[str, Any]]) -> None:
    """Searching the log by X-Request-Id finds the plugin's own lines too: a resolution-center
    request's id is `dispute_request_id`, never in place of the HTTP request's `request_id`."""
    async with Harness() as h:
        service = await h.start_instance()
        buyer, seller = h.client(service, "buyer-8", "buyer"), h.client(service, "seller-8", "seller")
        order = await buyer.post("/orders", {**ORDER, "seller_id": "seller-8"}, expect=201)
        await buyer.post(f"/orders/{order['id']}/requirements", {"requirements": "a logo"}, expect=200)
        opened = await seller.post(f"/orders/{order['id']}/resolution/requests",
                                   {"kind": "extension_request", "days": 2, "reason": "More variants."},
                                   expect=201, headers={"X-Request-Id": "req-open-8"})
        await buyer.post(f"/orders/{order['id']}/resolution/requests/{opened['id']}/answer",
                         {"answer": "accept"}, expect=200, headers={"X-Request-Id": "req-answer-8"})
        lines = {line["event"]: line for line in log_lines if line.get("dispute_request_id") == opened["id"]}
        assert lines["request opened"]["request_id"] == "req-open-8"
        assert lines["request answered"]["request_id"] == "req-answer-8"


def test_a_time_in_a_log_line_is_ISO_8601_not_a_python_repr(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    from datetime import UTC, datetime

    from core.logging import configure_logging

    configure_logging("INFO", json=True)
    try:
        structlog.get_logger("tests").info("request opened", answer_by=datetime(2026, 12, 3, 8, 0, tzinfo=UTC))
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []
    assert line["answer_by"] == "2026-12-03T08:00:00+00:00"
