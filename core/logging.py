"""structlog, one JSON object per line.

Lines written while a message is handled carry its id, type, order id and
plugin: the bus binds them to the handling task's context variables.
"""

from __future__ import annotations

import logging
import sys
from datetime import date, datetime
from typing import Any

import structlog


def _log_value(value: Any) -> Any:
    """Values JSON has no type for: times as ISO 8601 (never a Python repr), the rest as text;
    a log line must never fail to render."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(default=_log_value) if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (aio-pika, aiohttp, pymongo) log through the standard library: same format.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
