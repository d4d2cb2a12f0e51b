"""Prometheus metrics, one registry per service instance (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.published = Counter("rescenter_published_total", "Messages published and confirmed.", ["type"], registry=r)
        self.consumed = Counter(
            "rescenter_consumed_total", "Messages handled, by outcome (ok, rejected, retry).",
            ["plugin", "type", "outcome"], registry=r,
        )
        self.dead_lettered = Counter(
            "rescenter_dead_lettered_total", "Messages sent to a dead-letter queue, by reason.",
            ["plugin", "reason"], registry=r,
        )
        self.store_outage_retries = Counter(
            "rescenter_store_outage_retries_total",
            "Handler runs that found the store unreachable and were run again in place (the message kept).",
            ["plugin"], registry=r,
        )
        self.handler_seconds = Histogram(
            "rescenter_handler_seconds", "Time spent handling one message.", ["plugin"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.http_requests = Counter(
            "rescenter_http_requests_total", "HTTP requests, by route and status.",
            ["method", "route", "status"], registry=r,
        )
        self.http_seconds = Histogram(
            "rescenter_http_request_seconds", "HTTP request latency.", ["route"], registry=r,
        )
        self.outbox_swept = Counter(
            "rescenter_outbox_swept_total", "Documents whose pending effects the sweeper published.",
            registry=r,
        )
        self.outbox_full_sweeps = Counter(
            "rescenter_outbox_full_sweeps_total",
            "Full outbox sweeps (a query on `_outbox_due` per outbox collection): at start-up, per dead "
            "instance and every outbox.full_sweep_interval.", registry=r,
        )
        self.deadlines_fired = Counter(
            "rescenter_deadlines_fired_total", "Deadlines fired, by owner and kind.", ["owner", "kind"],
            registry=r,
        )
        self.store_commands = Counter(
            "rescenter_store_commands_total",
            "MongoDB commands sent (round trips to the store), by command and collection.",
            ["command", "collection"], registry=r,
        )
        self.store_seconds = Histogram(
            "rescenter_store_command_seconds", "MongoDB command latency, by command.", ["command"],
            registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.plugin_enabled = Gauge("rescenter_plugin_enabled", "1 when the plugin is on.", ["plugin"], registry=r)
        # Read from the broker and the store on each scrape (core.dead_letters.DeadLetters.refresh_gauges).
        self.queue_messages = Gauge(
            "rescenter_queue_messages", "Messages ready in a queue (each group's queue and its dead-letter queue).",
            ["queue"], registry=r,
        )
        self.dead_letters = Gauge(
            "rescenter_dead_letters", "Dead letters waiting for a decision, by dead-letter queue and reason "
            "(reason `all`: the queue's total).", ["queue", "reason"], registry=r,
        )
