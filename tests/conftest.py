"""Shared fixtures. Integration tests (marker ``stack``) run against the real local stack.

``stack`` brings the stack up once per session, or reuses the one already running (as
``.ci/run`` and ``scripts/test.sh`` start it first); it never stops it, so a developer's
running stack survives a test run. ``ray_cluster`` connects the test process, as a Ray
driver, to the stack's Ray head.

Two test processes at once (``scripts/test.sh`` runs ``pytest -n 2``;
pytest-xdist): most of a test's time is waiting on the servers (a change event's trip
through the connector and Kafka, a supervisor's round, a reconcile job), so two tests share
the stack and the machine's two cores well. What cannot share is arranged here:

- a module runs whole in one process (its module fixtures — a shared supervisor, a table —
  are made once), and the modules marked ``serve`` all in one process (one Serve instance);
  these units are handed out longest first (``tests/durations.json``), so both processes
  finish at about the same time;
- a test marked ``exclusive`` runs with no other test running beside it: it stops, restarts
  or breaks a server every test uses (the connector, Kafka, PostgreSQL, capture itself), or
  judges a latency budget. It waits for the other process's running test to end, and no new
  test starts there until it (and any ``exclusive`` test right after it) is done. Writers
  first: a waiting exclusive test holds a turnstile that new shared tests queue behind.
- every entry into an exclusive turn costs the rest of the other process's running test
  (up to half a minute of a core idle), so exclusive tests are kept together: last in their
  module, and the modules that are exclusive whole join the ``serve`` unit, after its shared
  modules, so they follow each other in one turn. The seconds each process waited for its
  turns are printed at the end of the run.
- a shared test whose destructive part is short takes the exclusive turn for that part only
  (``with exclusive_section("why"):``), so the rest of it runs beside other tests. While it
  waits for the section, its own pipeline keeps running, and another test's section may run
  first: what it asserts after its section must hold after any other test's fault too.

Run alone (plain ``pytest``, no ``-n``), none of this applies: one test at a time anyway.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path

import pytest

from tests.run_locks import Turns, once_per_run, run_lock_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PIPELINE = ROOT / "examples" / "pipeline.local.yaml"


_turns: Turns | None = None
_running = None  # the test item this process runs now (for exclusive_section's record)


def _is_exclusive(item) -> bool:
    return item is not None and item.get_closest_marker("exclusive") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Take this test's turn (see the module's docstring) for its set-up, call and teardown
    (a module's fixtures are torn down in its last test's teardown, inside the turn)."""
    global _turns, _running
    if run_lock_path("room") is None:
        return (yield)
    if _turns is None:
        _turns = Turns()
    if item.get_closest_marker("stack") is None:
        # A unit test touches no server: it takes no turn, and runs beside anything (the
        # scheduler hands the unit tests out while the exclusive tests run, to fill that time).
        item.user_properties.append(("turn_started_at", time.time()))
        return (yield)
    _running = item
    asked = time.monotonic()
    _turns.take(_is_exclusive(item))
    item.user_properties.append(("turn_wait_s", time.monotonic() - asked))
    item.user_properties.append(("turn_started_at", time.time()))
    try:
        return (yield)
    finally:
        # A shared turn ends with each test, so that a waiting exclusive test gets in; an
        # exclusive one is kept while the next test is exclusive too.
        if not (_is_exclusive(item) and _is_exclusive(nextitem)):
            _turns.give_back()
        _running = None
        if _unit(item.nodeid.split("::", 1)[0]) == "serve" and (
                nextitem is None or _unit(nextitem.nodeid.split("::", 1)[0]) != "serve"):
            _stop_serve_after_its_unit()


def _stop_serve_after_its_unit() -> None:
    """The ``serve`` unit is done in this process: stop Serve now rather than at the session's
    end, so the tests after it do not run beside an idle Serve (``shutdown_serve`` does
    nothing if this process did not start it)."""
    from tests.integration.serve_helpers import shutdown_serve

    shutdown_serve()


@contextlib.contextmanager
def exclusive_section(why: str):
    """Run the block with no other test running beside it (see the module's docstring), from
    inside a shared test or a fixture: for the few seconds a test stops, restarts or breaks a
    server every test uses. Waits for the other process's running test to end (or reach a
    section of its own); afterwards the test goes on in a shared turn. Inside an exclusive
    test, or run alone, the block just runs. ``why`` is for the reader (and the failure
    traceback): what the section does to the shared servers."""
    if _turns is None or _turns.held != "shared":
        yield
        return
    asked = time.monotonic()
    _turns.take(True)
    began = time.monotonic()
    try:
        yield
    finally:
        ended = time.monotonic()
        _turns.take(False)
        if _running is not None:
            _running.user_properties.append(("section_wait_s", began - asked))
            _running.user_properties.append(("section_s", ended - began))


@pytest.fixture(scope="session", autouse=True)
def _report_dir(tmp_path_factory):
    """Drift pages written without an explicit path go to the session's temporary directory
    (``C2PG_REPORT_DIR``, inherited by the CLI and job processes tests start), not into the
    working directory (the repository)."""
    os.environ["C2PG_REPORT_DIR"] = str(tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="session")
def stack():
    from engine.stack.launcher import Stack

    s = Stack()
    with once_per_run("stack-up"):  # not two `up`s at once; the second finds the stack running
        rows = s.up(on_event=lambda msg: None)
    unhealthy = [f"{r.name}: {r.detail}" for r in rows if not r.healthy]
    assert not unhealthy, f"local stack not healthy: {unhealthy}"
    return s


@pytest.fixture(scope="session")
def example_pipeline_path(stack) -> Path:
    return EXAMPLE_PIPELINE


@pytest.fixture(scope="session")
def pipeline(example_pipeline_path):
    """The example pipeline with every secret resolved from the stack's OpenBao."""
    from engine.config import load_config

    return load_config(example_pipeline_path)


@pytest.fixture(scope="session")
def ray_cluster(stack):
    """The driver of this test session, connected to the stack's Ray head (token auth on)."""
    import ray

    ray.init(address=stack.services["ray"].gcs_address, namespace="c2pg-tests",
             runtime_env={"env_vars": {"C2PG_LOG_FORMAT": "json"}}, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture()
def pg(pipeline):
    """A PostgreSQL connection to the stack's database (modules may define their own ``pg``)."""
    import psycopg2

    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs())
    yield conn
    conn.close()


def alive_pg(conn, pipeline):
    """``conn`` if it still answers, else a new connection to the same database: for a test
    after its ``exclusive_section``, since while it waited for that section another test's
    section may have restarted PostgreSQL and closed ``conn``. (A replaced connection is
    closed when collected.)"""
    import psycopg2

    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.rollback()
        return conn
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        return psycopg2.connect(**pipeline.postgres.connect_kwargs())


@pytest.fixture(autouse=True)
def _restore_logging():
    """Tests that run an entry point (``main()``) or ``engine.log.configure`` change the
    process's logging; put everything back: structlog's configuration (the session's routing
    through stdlib, which caplog tests rely on), bound context, the root logger's handlers
    and level, and the drivers' levels. pytest's own capture handlers are per test phase, so
    the ones present at teardown are kept and stale ones are not put back."""
    import logging

    import structlog
    from _pytest.logging import LogCaptureHandler

    root = logging.getLogger()
    kept = [h for h in root.handlers if not isinstance(h, LogCaptureHandler)]
    levels = {name: logging.getLogger(name).level for name in (None, "cassandra", "kafka", "urllib3")}
    config = structlog.get_config()
    yield
    structlog.contextvars.clear_contextvars()
    structlog.configure(**config)
    root.handlers[:] = [h for h in root.handlers if isinstance(h, LogCaptureHandler)] + kept
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def pytest_configure(config):
    """Route c2pg's structlog output through stdlib logging, as every c2pg process does,
    so tests can read it with caplog; speak Ray's token authentication with the stack's
    token (Ray reads the mode once, when first imported, so it is set before any test module
    imports ray)."""
    from engine import log

    from engine.stack.root import ray_token_path

    os.environ["RAY_AUTH_MODE"] = "token"
    # The stack's own token (created by the `stack` fixture's `up` if the stack is not
    # running yet, before any test connects to Ray); never ~/.ray.
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(ray_token_path()))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log.configure("INFO", json=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With ``pytest -n``: each module runs whole in one process (its module fixtures are made
    once), and the modules marked ``serve`` all in the same one (one Serve instance).

    xdist's ``loadgroup`` would do this from ``xdist_group`` marks, but it renames test ids
    in a way pytest 9 ignores, so the groups are told here, by module path; a module is a
    ``serve`` one if it says ``pytest.mark.serve``."""
    from xdist.scheduler import LoadScopeScheduling

    known = _known_durations()

    def expected_s(scope: str) -> float:
        """A unit's expected seconds: from tests/durations.json, else a guess by kind."""
        return known.get(scope, 10.0 if "integration" in scope else 1.0)

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid.split("::", 1)[0])

        def _assign_work_unit(self, node) -> None:
            # The ``serve`` unit first (it starts with the exclusive tests), then the unit
            # tests, which take no turn: the process that does not run the exclusive tests
            # runs them meanwhile instead of waiting. Then longest first: the waiting unit
            # expected to take longest goes to the process that asks next, so the two
            # processes end close together instead of one finishing a long module alone (in
            # collection order they ended ~220 s apart).
            def first(unit: str) -> tuple[int, float]:
                return (0 if unit == "serve" else 1 if _is_free_module(unit) else 2, -expected_s(unit))

            self.workqueue.move_to_end(min(self.workqueue, key=first), last=False)
            super()._assign_work_unit(node)

    return ByModule(config, log)


DURATIONS = Path(__file__).resolve().parent / "durations.json"
"""Seconds per scheduling unit (a module, or ``serve``) from a recent run; only the order in
which units are handed out depends on it. A run with ``-n`` writes its own figures to
``test-artifacts/test-durations.json``; copy that file here when modules have changed much."""


def _known_durations() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError):
        return {}


_unit_seconds: dict[str, float] = {}
_timeline: dict[str, dict] = {}  # test id → its process, start, seconds, wait, exclusive


def pytest_runtest_logreport(report):
    """On the controlling process of a ``-n`` run: add up each unit's seconds, each process's
    wait for turns, and each test's place in the run's timeline."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None and getattr(report, "node", None) is not None:
        unit = _unit(report.nodeid.split("::", 1)[0])
        _unit_seconds[unit] = _unit_seconds.get(unit, 0.0) + report.duration
        node = report.node.gateway.id
        entry = _timeline.setdefault(report.nodeid, {"process": node, "seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + report.duration, 2)
        props = dict(report.user_properties)
        sections = [(k, v) for k, v in report.user_properties if k.startswith("section_")]
        if report.when == "setup":
            entry.update(started_at=props.get("turn_started_at"), exclusive="exclusive" in report.keywords)
        entry["waited_s"] = round(props.get("turn_wait_s", 0.0)
                                  + sum(v for k, v in sections if k == "section_wait_s"), 2)
        if sections:
            entry["exclusive_s"] = round(sum(v for k, v in sections if k == "section_s"), 2)


def pytest_sessionfinish(session):
    """Write the run's figures to ``test-artifacts/``: seconds per scheduling unit (copy to
    tests/durations.json to reorder units) and the timeline of tests (which process ran each,
    when, how long it waited for its turn, whether it was exclusive), to see where the wall
    time goes."""
    if _unit_seconds:
        out = ROOT / "test-artifacts" / "test-durations.json"
        out.parent.mkdir(exist_ok=True)
        ordered = dict(sorted(((k, round(v, 1)) for k, v in _unit_seconds.items()), key=lambda kv: -kv[1]))
        out.write_text(json.dumps(ordered, indent=1) + "\n", encoding="utf-8")
        starts = [e["started_at"] for e in _timeline.values() if e.get("started_at")]
        t0 = min(starts, default=0.0)
        timeline = sorted(({"test": test, **e, "started_at": round((e.get("started_at") or t0) - t0, 2)}
                           for test, e in _timeline.items()), key=lambda e: e["started_at"])
        (out.parent / "test-timeline.json").write_text(json.dumps(timeline, indent=0) + "\n", encoding="utf-8")


def pytest_terminal_summary(terminalreporter):
    if _timeline:
        per_process: dict[str, float] = {}
        for e in _timeline.values():
            per_process[e["process"]] = per_process.get(e["process"], 0.0) + e.get("waited_s", 0.0)
        waits = ", ".join(f"{node} {s:.0f} s" for node, s in sorted(per_process.items()))
        terminalreporter.write_line(f"waited for turns (shared/exclusive): {waits}")
        exclusive_s = sum(e["seconds"] for e in _timeline.values() if e.get("exclusive"))
        sections_s = sum(e.get("exclusive_s", 0.0) for e in _timeline.values() if not e.get("exclusive"))
        terminalreporter.write_line(f"exclusive tests: {exclusive_s:.0f} s in all, exclusive sections of shared "
                                    f"tests {sections_s:.0f} s; longest waits for a turn:")
        longest = sorted(_timeline.items(), key=lambda kv: -kv[1].get("waited_s", 0.0))[:8]
        for test, e in longest:
            terminalreporter.write_line(f"  {e.get('waited_s', 0.0):5.1f} s  {e['process']}  {test}")


@functools.cache
def _module_marks(module: str) -> frozenset[str]:
    """The markers a module's ``pytestmark`` line names, and ``stack`` if any of its tests is
    marked so (read from its source: the xdist scheduler sees node ids, not items)."""
    path = ROOT / module
    if not path.is_file():
        return frozenset()
    source = path.read_text(encoding="utf-8")
    lines = [line for line in source.splitlines() if line.startswith("pytestmark")]
    marks = {m for m in ("serve", "exclusive") for line in lines if f"pytest.mark.{m}" in line}
    return frozenset(marks | ({"stack"} if "pytest.mark.stack" in source else set()))


def _is_free_module(module: str) -> bool:
    """A module of unit tests only: none needs the stack, so none takes a turn (a module under
    tests/unit with a test marked ``stack`` is not free)."""
    return "integration" not in module and "stack" not in _module_marks(module)


def _is_serve_module(module: str) -> bool:
    return "serve" in _module_marks(module)


def _is_exclusive_module(module: str) -> bool:
    """A module whose every test is ``exclusive``."""
    return "exclusive" in _module_marks(module)


def _unit(module: str) -> str:
    """The scheduling unit of a module: ``serve`` for the serve modules and the modules that
    are exclusive whole (they run one after the other, in one exclusive turn), else the module."""
    return "serve" if _is_serve_module(module) or _is_exclusive_module(module) else module


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration needs the stack: mark it so -m "not stack" skips it.

    The order (stable: collection order within each group):
    - the ``serve`` unit: modules marked ``serve`` (they deploy the control plane on Ray
      Serve) share one Serve instance (``serve_instance``), started by the first and stopped
      after the last (``_stop_serve_after_its_unit``); within it, the modules exclusive whole
      (serve or not) first, then those with some exclusive tests (those tests first), then
      the rest, so the exclusive tests follow each other in one turn at the run's start,
      while the other process runs the unit tests (which take no turn);
    - in the other modules, their exclusive tests after their shared ones (one turn, not
      several)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.stack)
    modules = [item.nodeid.split("::", 1)[0] for item in items]
    some_exclusive = {m for m, item in zip(modules, items, strict=True) if _is_exclusive(item)}
    first_seen = {m: i for i, m in reversed(list(enumerate(modules)))}

    def order(pair):
        module, item = pair
        if _unit(module) != "serve":
            return (0, 0, first_seen[module], _is_exclusive(item))
        kind = 0 if _is_exclusive_module(module) else 1 if module in some_exclusive else 2
        return (1, kind, first_seen[module], not _is_exclusive(item))

    items[:] = [item for _, item in sorted(zip(modules, items, strict=True), key=order)]
