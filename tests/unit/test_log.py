"""engine.log: what a c2pg log line looks like, whoever emits it.

``configure()`` installs its handler on the ``sys.stderr`` of the moment, so each test calls
it after ``capfd`` has started capturing. Every test leaves structlog, the context variables
and the root logger as it found them.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from engine import log

CONTEXT = {"pipeline": "orders", "table": "shop.orders", "topic": "c2pg.shop.orders",
           "partition": 2, "run_id": "run-7"}


@pytest.fixture(autouse=True)
def isolated_logging(monkeypatch):
    """Each test configures logging from scratch (tests/conftest.py puts the session's back)."""
    monkeypatch.delenv("C2PG_LOG_FORMAT", raising=False)
    monkeypatch.delenv("C2PG_LOG_LEVEL", raising=False)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    yield


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_line_carries_bound_context_timestamp_and_level(capfd):
    log.configure(json=True)
    log.bind(**CONTEXT)
    before = datetime.now(UTC)

    log.get("c2pg.test").info("batch flushed", rows=3)

    [line] = json_lines(capfd.readouterr().err)
    assert line["event"] == "batch flushed"
    assert line["rows"] == 3
    assert line["level"] == "info"
    assert line["logger"] == "c2pg.test"
    assert {k: line[k] for k in CONTEXT} == CONTEXT  # partition stays an int
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC) + timedelta(seconds=1)


def test_bind_skips_none_and_later_lines_keep_the_context(capfd):
    log.configure(json=True)
    log.bind(pipeline="orders", table=None)
    log.bind(partition=0)

    log.get("c2pg.test").info("one")
    log.get("c2pg.other").warning("two")

    lines = json_lines(capfd.readouterr().err)
    assert [(x["event"], x["level"]) for x in lines] == [("one", "info"), ("two", "warning")]
    for x in lines:
        assert x["pipeline"] == "orders" and x["partition"] == 0
        assert "table" not in x


def test_bind_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError, match="tabel") as err:
        log.bind(pipeline="orders", tabel="shop.orders", worker=3)
    assert "worker" in str(err.value)
    assert structlog.contextvars.get_contextvars() == {}  # nothing half-bound


def test_console_format_from_the_environment_is_not_json(capfd, monkeypatch):
    monkeypatch.setenv("C2PG_LOG_FORMAT", "console")
    log.configure(json=True)  # the environment wins over the argument
    log.bind(pipeline="orders")

    log.get("c2pg.test").info("batch flushed")

    err = capfd.readouterr().err
    [line] = [x for x in err.splitlines() if x.strip()]
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    assert "batch flushed" in line and "pipeline=orders" in line and "[c2pg.test]" in line
    assert "\x1b[" not in line  # no colour codes when stderr is not a terminal


def test_log_level_from_the_environment_filters(capfd, monkeypatch):
    monkeypatch.setenv("C2PG_LOG_LEVEL", "warning")
    log.configure("DEBUG", json=True)

    log.get("c2pg.test").info("dropped")
    log.get("c2pg.test").warning("kept")

    assert [x["event"] for x in json_lines(capfd.readouterr().err)] == ["kept"]


def test_stdlib_loggers_go_through_the_same_json_renderer(capfd):
    log.configure(json=True)
    log.bind(pipeline="orders", run_id="run-7")

    logging.getLogger("cassandra").warning("host %s is down", "127.0.0.1")
    logging.getLogger("cassandra").info("driver chatter")  # drivers are held at WARNING

    [line] = json_lines(capfd.readouterr().err)
    assert line["event"] == "host 127.0.0.1 is down"
    assert line["level"] == "warning"
    assert line["logger"] == "cassandra"
    assert line["pipeline"] == "orders" and line["run_id"] == "run-7"
    assert datetime.fromisoformat(line["timestamp"]).tzinfo is not None


def test_stdlib_exception_keeps_its_traceback_in_json(capfd):
    log.configure(json=True)

    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logging.getLogger("kafka").exception("fetch failed")

    [line] = json_lines(capfd.readouterr().err)
    assert line["level"] == "error"
    assert "exc_info" not in line
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "ConnectionResetError: peer went away" in line["exception"]
