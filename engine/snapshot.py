"""Snapshot: copy a whole Cassandra table into PostgreSQL in parallel, on Ray Data.

Called by ``python -m jobs.snapshot`` (locally or under ``ray job submit``) and by
``c2pg snapshot``. The driver reads the table definition, prepares the target (see
:mod:`engine.target`), plans token-range splits, records the run in ``_c2pg.runs`` with
one ``_c2pg.run_splits`` row per split, then streams
``CassandraDatasource → PostgresDatasink``. Ray Data's progress bars show the work.

Resume: ``resume=<run_id>`` reloads that run's splits and reads only those not ``done``
(a split is marked done in the same transaction that commits its last rows).

Outcome: a :class:`SnapshotResult`; ``ok`` is false when some rows could not be converted
(they are in ``_c2pg.dead_letters`` with the run id) or some splits did not finish.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Literal

import psycopg2
from cassandra import ConsistencyLevel
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from engine import cql, faults, log
from engine.cassandra_source import ReadSettings, SplitReader, _cql_ident
from engine.config import PipelineConfig, TableConfig
from engine.errors import C2pgError
from engine.pg_sink import PostgresDatasink, SinkSettings
from engine.ray_connect import ensure_ray
from engine.schema import TableSchema, read_table
from engine.target import create_token_index, ensure_state, ensure_target
from engine.token_ranges import TokenSplit, plan_splits

logger = log.get("c2pg.snapshot")


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    run_id: str
    table: str
    target: str
    rows: int
    dead_letters: int
    bytes: int
    seconds: float
    splits: int
    splits_done: int
    retries: int
    mode: str
    rows_this_run: int  # rows written by this invocation (less than ``rows`` after --resume)
    write_times: bool = True  # False: --no-writetime, every cell stamped with the read's start
    ttls: bool = True  # False: TTL selectors left out (the table never had TTLs, may_have_ttls)

    @property
    def rows_per_s(self) -> float:
        return self.rows_this_run / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.dead_letters == 0 and self.splits_done == self.splits

    def as_dict(self) -> dict:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1), "ok": self.ok}


def find_table(cfg: PipelineConfig, qualified: str) -> TableConfig:
    """``ks.table`` as configured in the pipeline, or a bare one with default targets."""
    keyspace, _, table = qualified.partition(".")
    if not keyspace or not table:
        raise SnapshotUsageError(f"--table must be KEYSPACE.TABLE, got {qualified!r}")
    for t in cfg.tables:
        if (t.keyspace, t.table) == (keyspace, table):
            return t
    return TableConfig(keyspace=keyspace, table=table, target_schema=cfg.postgres.schema, target_table=table)


class SnapshotUsageError(C2pgError):
    """A bad ``--table``, ``--consistency`` or ``--resume`` value (exit code 2)."""

    exit_code = 2


class SnapshotFailed(C2pgError):
    """The run stopped before every split was copied; ``--resume run_id`` finishes it."""

    def __init__(self, run_id: str, cause: BaseException):
        self.run_id = run_id
        super().__init__(f"snapshot run {run_id} failed ({type(cause).__name__}: {cause}); "
                         f"rerun with --resume {run_id} to copy the unfinished splits")


def run_snapshot(cfg: PipelineConfig, table_cfg: TableConfig, *, splits: int | None = None,
                 consistency: str | None = None, resume: str | None = None, evolve: bool = False,
                 concurrency: int | None = None, run_id: str | None = None, write_times: bool = True,
                 read_ttls: bool | None = None, json_rows: bool = True) -> SnapshotResult:
    """Copy ``table_cfg``'s table; see the module docstring. Raises :class:`SnapshotFailed`
    (with the run id) when splits fail, after recording the run as failed.

    ``run_id`` names the new run (the Serve app picks it so it can answer with it before the
    job starts); it must be a UUID not used yet, and cannot be combined with ``resume``.
    ``write_times=False`` (``--no-writetime``) is for a first load only (the target must not
    exist yet): cells get the read's start as their write time (docs/snapshot.md).
    ``read_ttls``: ``None`` reads TTLs unless :func:`may_have_ttls` says the table never had
    any; ``True``/``False`` force it. ``json_rows=False`` reads row tuples even where
    :mod:`engine.json_read` could read the table as JSON (the benchmark's "before").
    """
    import ray

    started = time.monotonic()
    read_started_us = int(time.time() * 1_000_000)
    consistency = (consistency or cfg.snapshot.consistency).upper()
    if not hasattr(ConsistencyLevel, consistency) or consistency == "ANY":
        raise SnapshotUsageError(f"--consistency {consistency!r} is not a read consistency level")
    splits = splits or cfg.snapshot.splits
    if run_id is not None:
        if resume:
            raise SnapshotUsageError("--run-id names a new run; --resume continues an existing one: use one")
        try:
            run_id = str(uuid.UUID(run_id))
        except ValueError:
            raise SnapshotUsageError(f"--run-id must be a UUID, got {run_id!r}") from None
    with _connections(cfg) as (cluster, session, conn):
        schema = read_table(session, table_cfg.keyspace, table_cfg.table)
        for note in schema.unsupported_by_cdc():
            logger.warning("cdc limitation", table=schema.qualified, note=note)
        ensure_state(conn)
        # The documented defaults, for a TableConfig built without the pipeline's validation.
        target = ensure_target(conn, schema, table_cfg.target_schema or cfg.postgres.schema,
                               table_cfg.target_table or table_cfg.table, evolve=evolve)
        ensure_ray()
        mode: Literal["direct", "merge"]
        # Stand-in write times must never meet real ones in a merge (docs/snapshot.md).
        if not write_times and resume:
            raise SnapshotUsageError("--no-writetime loads a new target only; --resume reads write times")
        if not write_times and not target.created:
            raise SnapshotUsageError(f"--no-writetime loads a new target only: "
                                     f"{target.target_schema}.{target.target_table} exists")
        if resume:
            run_id, plan = _load_resume(conn, resume, schema.qualified)
            mode = "merge"
        else:
            run_id = run_id or str(uuid.uuid4())
            mode = "direct" if target.created else "merge"
            # Two splits a concurrent task: each has work and stragglers are short, and no more
            # tasks than that, each opening a session and a connection (four a task measured
            # 4-5 % slower on 1M rows, docs/benchmarks.md).
            slots = int(ray.cluster_resources().get("CPU", 2) / cfg.snapshot.task_cpus)
            min_splits = max(8, 2 * slots)
            plan = plan_splits(cluster, schema.keyspace, schema.table, split_size_mb=cfg.snapshot.split_size_mb,
                               min_splits=min_splits, splits=splits)
            _record_run(conn, run_id, cfg, schema.qualified, target, plan, mode, splits, consistency)
        ttls = may_have_ttls(session, schema, plan) if read_ttls is None else read_ttls
        log.bind(pipeline=cfg.name, table=schema.qualified, run_id=run_id)
        logger.info("snapshot starting", splits=len(plan), mode=mode, write_times=write_times, ttls=ttls,
                    target=f"{target.target_schema}.{target.target_table}")
        sink = PostgresDatasink(SinkSettings(cfg.postgres, target.schema, target.target_schema,
                                             target.target_table, target.tomb_table, run_id, cfg.name, mode))
        read = ReadSettings(cfg.cassandra, target.schema, consistency, cfg.snapshot.page_size,
                            cfg.snapshot.max_retries, read_started_us, write_times, ttls, json_rows)
        try:
            if plan:
                _copy(cfg, read, plan, sink, concurrency)
            # Built after an initial load, and by any later run if that load never finished.
            create_token_index(conn, target)
        except BaseException as exc:  # Ctrl-C included: the run record must not stay 'running'
            try:
                _finish(conn, run_id, schema.qualified, target, sink, time.monotonic() - started, mode, exc, read)
            except Exception:
                logger.exception("could not record the failed run", run_id=run_id)
            if isinstance(exc, Exception):
                raise SnapshotFailed(run_id, exc) from exc
            raise
        return _finish(conn, run_id, schema.qualified, target, sink, time.monotonic() - started, mode, None, read)


@contextlib.contextmanager
def _connections(cfg: PipelineConfig):
    cluster, session = cql.connect(cfg.cassandra)
    try:
        conn = psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-snapshot"))
    except BaseException:
        cluster.shutdown()
        raise
    try:
        yield cluster, session, conn
    finally:
        cluster.shutdown()
        conn.close()


class CassandraDatasource(Datasource):
    """The snapshot's Ray Data source: built on the driver and pickled to the read tasks,
    it holds settings and the split plan, never a session; each read task is a
    :class:`~engine.cassandra_source.SplitReader`."""

    def __init__(self, settings: ReadSettings, splits: list[TokenSplit]):
        self.settings = settings
        self.splits = splits

    def get_name(self) -> str:
        return f"Cassandra({self.settings.schema.qualified})"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        """One task per split, whatever ``parallelism`` says: splits are the unit of resume."""
        return [ReadTask(SplitReader(self.settings, split),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None))
                for split in self.splits]


def may_have_ttls(session, schema: TableSchema, plan: list[TokenSplit]) -> bool:
    """Whether the snapshot must read ``TTL(c)`` of every cell: true when the table has a
    default TTL, or a sample finds a cell with one (the first :data:`TTL_SAMPLE_ROWS` rows of
    up to :data:`TTL_SAMPLE_SPLITS` splits spread over the ring). False only for a table
    with no TTL in that sample; a TTL cell the sample missed is copied without its expiry
    (sync's events and reconcile catch up with it; docs/snapshot.md, "Known limits").
    Skipping the selectors saves a third of the values Cassandra sends and the driver decodes.
    """
    if not schema.live_regular:
        return False
    row = session.execute("SELECT default_time_to_live FROM system_schema.tables "
                          "WHERE keyspace_name = %s AND table_name = %s", (schema.keyspace, schema.table)).one()
    if row is None or row.default_time_to_live:
        return True
    q = _cql_ident
    pk = ", ".join(q(c.name) for c in schema.partition_key)
    ttls = [f"collection_min(TTL({q(c.name)}))" if c.cql_type.multi_cell else f"TTL({q(c.name)})"
            for c in schema.live_regular]
    stmt = session.prepare(f"SELECT {', '.join(ttls)} FROM {q(schema.keyspace)}.{q(schema.table)} "  # nosec B608 - quoted names
                           f"WHERE token({pk}) > ? AND token({pk}) <= ? LIMIT {TTL_SAMPLE_ROWS}")
    step = max(1, len(plan) // TTL_SAMPLE_SPLITS)
    # All samples in flight at once: read one after another they took half a second.
    reads = [session.execute_async(stmt, (split.start, split.end)) for split in plan[::step][:TTL_SAMPLE_SPLITS]]
    found = False
    for read in reads:
        rows = read.result()  # every read is awaited, so none is left running
        found = found or any(any(t is not None for t in sample) for sample in rows)
    return found


TTL_SAMPLE_SPLITS = 16
TTL_SAMPLE_ROWS = 2000


def _copy(cfg: PipelineConfig, read: ReadSettings, plan: list[TokenSplit], sink: PostgresDatasink,
          concurrency: int | None) -> None:
    """The Ray Data pipeline: one read task per split, the sink's write tasks fused to them."""
    import ray

    source = CassandraDatasource(read, plan)
    env = faults.runtime_env()
    # One block per read task output: a split's part must reach the sink whole (it is
    # committed with its run_parts row), so Ray Data must not split blocks here.
    ds = ray.data.read_datasource(source, concurrency=concurrency, override_num_blocks=len(plan),
                                  num_cpus=cfg.snapshot.task_cpus, **env)
    ds.write_datasink(sink, concurrency=concurrency,
                      ray_remote_args={"num_cpus": cfg.snapshot.task_cpus, **env})


def _record_run(conn, run_id: str, cfg: PipelineConfig, qualified: str, target, plan: list[TokenSplit],
                mode: str, splits: int | None, consistency: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO _c2pg.runs (run_id, kind, pipeline, keyspace, source_table, target, status, "
                    "args) VALUES (%s, 'snapshot', %s, %s, %s, %s, 'running', %s)",
                    (run_id, cfg.name, target.schema.keyspace, target.schema.table,
                     f"{target.target_schema}.{target.target_table}",
                     json.dumps({"splits": splits, "consistency": consistency, "mode": mode})))
        cur.executemany("INSERT INTO _c2pg.run_splits (run_id, split_index, start_token, end_token) "
                        "VALUES (%s, %s, %s, %s)", [(run_id, s.index, s.start, s.end) for s in plan])


def _load_resume(conn, run_id: str, qualified: str) -> tuple[str, list[TokenSplit]]:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT keyspace || '.' || source_table, status FROM _c2pg.runs "
                    "WHERE run_id::text = %s AND kind = 'snapshot'", (run_id,))
        row = cur.fetchone()
        if row is None:
            raise SnapshotUsageError(f"--resume {run_id}: no such snapshot run in _c2pg.runs")
        if row[0] != qualified:
            raise SnapshotUsageError(f"--resume {run_id}: that run copied {row[0]}, not {qualified}")
        cur.execute("SELECT split_index, start_token, end_token FROM _c2pg.run_splits "
                    "WHERE run_id = %s AND status <> 'done' ORDER BY split_index", (run_id,))
        plan = [TokenSplit(i, a, b) for i, a, b in cur.fetchall()]
        # Parts of unfinished splits are re-sent whole; forget the ones already counted.
        cur.execute("DELETE FROM _c2pg.run_parts p USING _c2pg.run_splits s WHERE p.run_id = s.run_id "
                    "AND p.split_index = s.split_index AND s.run_id = %s AND s.status <> 'done'", (run_id,))
        # A re-read may cut the split into a different number of parts.
        cur.execute("UPDATE _c2pg.run_splits SET parts_total = NULL, rows = 0 "
                    "WHERE run_id = %s AND status <> 'done'", (run_id,))
        cur.execute("UPDATE _c2pg.runs SET status = 'running', finished_at = NULL, error = NULL "
                    "WHERE run_id = %s", (run_id,))
    return run_id, plan


def _finish(conn, run_id: str, qualified: str, target, sink: PostgresDatasink | None, seconds: float,
            mode: str, error: BaseException | None, read: ReadSettings) -> SnapshotResult:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE status = 'done'), COALESCE(sum(rows), 0), "
                    "COALESCE(sum(retries), 0) FROM _c2pg.run_splits WHERE run_id = %s", (run_id,))
        n_splits, done, rows, retries = cur.fetchone()
        cur.execute("SELECT count(*) FROM _c2pg.dead_letters WHERE run_id = %s", (run_id,))
        dead = cur.fetchone()[0]
        written = sink.total if sink else None
        result = SnapshotResult(run_id, qualified, f"{target.target_schema}.{target.target_table}", int(rows),
                                int(dead), written.bytes if written else 0, round(seconds, 2), n_splits, done,
                                int(retries), mode, written.rows if written else 0, read.write_times, read.ttls)
        status = "failed" if error or done < n_splits else "succeeded"
        cur.execute("UPDATE _c2pg.runs SET status = %s, finished_at = now(), stats = %s, error = %s "
                    "WHERE run_id = %s", (status, json.dumps(result.as_dict()),
                                          f"{type(error).__name__}: {error}" if error else None, run_id))
    return result
