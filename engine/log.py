"""Logging for every c2pg process: structlog, JSON lines by default, console on a terminal.

Called once at each process edge (the CLI, a job's ``main``, an actor's ``__init__``).
Context travels through :mod:`structlog.contextvars`: :func:`bind` the pipeline, table,
topic, partition or run id once, and every line after carries them.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

CONTEXT_KEYS = ("pipeline", "table", "topic", "partition", "run_id")


def configure(level: str | None = None, *, json: bool | None = None) -> None:
    """Set up structlog and route stdlib logging (drivers, Ray) through the same renderer.

    ``json`` defaults to True unless stderr is a terminal; ``C2PG_LOG_FORMAT=json|console``
    and ``C2PG_LOG_LEVEL`` override both arguments' defaults.
    """
    level = (os.environ.get("C2PG_LOG_LEVEL") or level or "INFO").upper()
    fmt = os.environ.get("C2PG_LOG_FORMAT")
    if fmt:
        json = fmt == "json"
    elif json is None:
        json = not sys.stderr.isatty()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.add_logger_name,
    ]
    renderer = (structlog.processors.JSONRenderer() if json
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        # format_exc_info here too: a stdlib record's exc_info would otherwise reach the
        # JSON renderer as a repr'd tuple, losing the traceback of a driver's exception.
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("cassandra", "kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def bind(**context: object) -> None:
    """Bind context (pipeline, table, topic, partition, run_id...) to every later line."""
    unknown = set(context) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"unknown log context key(s): {sorted(unknown)}; use {CONTEXT_KEYS}")
    structlog.contextvars.bind_contextvars(**{k: v for k, v in context.items() if v is not None})


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
