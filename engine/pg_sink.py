"""A Ray Data Datasink that writes snapshot blocks into PostgreSQL with COPY.

Built on the driver by the snapshot job and pickled to the write tasks: it holds settings,
never a connection. Each write task opens one connection; each (split, part) of a block is
one transaction:

1. COPY the rows — straight into the target for an initial load into a table this run
   created (``direct``), otherwise into a staging table followed by the LWW merge of
   :func:`engine.pg_dialect.merge` (``merge``), so a re-snapshot while sync runs never
   overwrites a newer cell;
2. dead letters of the part (values that did not convert) into ``_c2pg.dead_letters``;
3. the part recorded in ``_c2pg.run_parts`` and the split marked ``done`` once all its
   parts are in — in the same transaction as the data, so ``--resume`` redoes exactly the
   splits whose data is not committed.

A direct COPY that hits a key already there (a retried task re-sending a committed part)
rolls back and goes through the merge instead: the result is the same, only slower.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import errors as pg_errors
from psycopg2.extras import execute_values
from ray.data.datasource import Datasink

from engine import pg_dialect as d
from engine.cassandra_source import DEAD_ERROR, DEAD_KEY, PART, PART_ROWS_COL, PARTS_TOTAL, RECHECK, RETRIES, SPLIT
from engine.config import PostgresConfig
from engine.schema import META_EXP, META_ROW_TS, META_TOKEN, META_WT, TableSchema

log = logging.getLogger("c2pg.snapshot.write")


@dataclass(frozen=True, slots=True)
class SinkSettings:
    postgres: PostgresConfig
    schema: TableSchema
    target_schema: str
    target_table: str
    tomb_table: str
    run_id: str
    pipeline: str
    mode: Literal["direct", "merge"]


@dataclass(frozen=True, slots=True)
class WriteStats:
    rows: int = 0
    bytes: int = 0
    dead: int = 0
    parts: int = 0
    seconds: float = 0.0

    def __add__(self, other: WriteStats) -> WriteStats:
        return WriteStats(self.rows + other.rows, self.bytes + other.bytes, self.dead + other.dead,
                          self.parts + other.parts, self.seconds + other.seconds)


class PostgresDatasink(Datasink[WriteStats]):
    def __init__(self, settings: SinkSettings):
        self.settings = settings
        self.total = WriteStats()

    def get_name(self) -> str:
        return f"PostgreSQL({self.settings.target_schema}.{self.settings.target_table})"

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    def write(self, blocks, ctx) -> WriteStats:
        s = self.settings
        conn = psycopg2.connect(**s.postgres.connect_kwargs(application_name=f"c2pg-snapshot-{s.run_id[:8]}"))
        stats = WriteStats()
        try:
            writer = _PartWriter(conn, s)
            for block in blocks:
                for part in _parts(block):
                    stats = stats + writer.write(part)
        finally:
            conn.close()
        return stats

    def on_write_complete(self, write_result) -> None:
        total = WriteStats()
        for stats in write_result.write_returns:
            total = total + stats
        self.total = total


def _parts(block: pa.Table) -> list[pa.Table]:
    """The (split, part) groups of a block: normally one, more if Ray coalesced blocks."""
    keys = sorted(set(zip(block.column(SPLIT).to_pylist(), block.column(PART).to_pylist(), strict=True)))
    if len(keys) == 1:
        return [block]
    return [block.filter(pc.and_(pc.equal(block[SPLIT], sp), pc.equal(block[PART], pt))) for sp, pt in keys]


class _PartWriter:
    def __init__(self, conn, settings: SinkSettings):
        self.conn = conn
        self.s = settings
        self.columns = d.target_columns(settings.schema)
        self.merge_sql = d.merge(settings.schema, settings.target_schema, settings.target_table,
                                 settings.tomb_table).as_string(conn)
        settle = d.settle_static_rows(settings.schema, settings.target_schema, settings.target_table)
        self.settle_sql = settle.as_string(conn) if settle is not None else None
        self.copy_target = d.copy_target(settings.target_schema, settings.target_table,
                                         self.columns).as_string(conn)
        self.copy_stage = d.copy_stage(self.columns).as_string(conn)
        self.create_stage = d.create_stage(settings.target_schema, settings.target_table).as_string(conn)
        self.direct = settings.mode == "direct"

    def write(self, part: pa.Table) -> WriteStats:
        t0 = time.perf_counter()
        split = part.column(SPLIT)[0].as_py()
        part_no = part.column(PART)[0].as_py()
        expected = part.column(PART_ROWS_COL)[0].as_py()
        if part.num_rows != expected:
            # Committing a piece would mark the part written while rows are missing.
            raise RuntimeError(f"split {split} part {part_no} reached the sink in pieces "
                               f"({part.num_rows} of {expected} rows): Ray Data split the block")
        totals = [x for x in part.column(PARTS_TOTAL).to_pylist() if x is not None]
        retries = next((x for x in part.column(RETRIES).to_pylist() if x is not None), None)
        dead = part.filter(pc.is_valid(part[DEAD_ERROR]))
        good = part.filter(pc.and_(pc.is_valid(part[META_TOKEN]), pc.is_null(part[DEAD_ERROR])))
        buffer = copy_buffer(good, self.s.schema) if good.num_rows else b""
        rechecks = self._rechecks(good) if good.num_rows else []
        try:
            self._commit(buffer, good.num_rows, dead, split, part_no, totals, retries, rechecks, direct=self.direct)
        except pg_errors.UniqueViolation:
            self.conn.rollback()
            log.info("part %s/%s already partly there; merging it instead", split, part_no)
            self._commit(buffer, good.num_rows, dead, split, part_no, totals, retries, rechecks, direct=False)
        return WriteStats(good.num_rows, len(buffer), dead.num_rows, 1, time.perf_counter() - t0)

    def _rechecks(self, good: pa.Table) -> list[tuple]:
        """``_c2pg.rechecks`` entries of the part's collections whose elements carry TTLs
        (:mod:`engine.recheck`): the key as canonical text, the column, when, its write time."""
        rows = good.filter(pc.is_valid(good[RECHECK]))
        if not rows.num_rows:
            return []
        schema, s = self.s.schema, self.s
        keys = zip(*(rows[c.name].to_pylist() for c in schema.primary_key), strict=True)
        out = []
        for key, ats, wts in zip(keys, rows[RECHECK].to_pylist(), rows[META_WT].to_pylist(), strict=True):
            for c, at, wt in zip(schema.regular, ats, wts, strict=True):
                if at is not None and wt is not None:
                    out.append((s.target_schema, s.target_table, list(key), c.name, at, wt))
        return out

    def _commit(self, buffer: bytes, rows: int, dead: pa.Table, split: int, part_no: int,
                totals: list[int], retries: int | None, rechecks: list[tuple], *, direct: bool) -> None:
        s = self.s
        with self.conn, self.conn.cursor() as cur:
            if rows:
                if direct:
                    cur.copy_expert(self.copy_target, io.BytesIO(buffer))
                else:
                    cur.execute(self.create_stage)
                    cur.copy_expert(self.copy_stage, io.BytesIO(buffer))
                    cur.execute(self.merge_sql)
                    if self.settle_sql:  # a static row stored earlier, its partition now with rows
                        cur.execute(self.settle_sql)
            if rechecks:
                execute_values(cur, d.REGISTER_RECHECKS.as_string(cur), rechecks)
            if dead.num_rows:
                # A part sent again (Ray's retry, --resume) must not record its rows twice.
                cur.execute("DELETE FROM _c2pg.dead_letters WHERE run_id = %s AND origin = 'snapshot' "
                            "AND row_key = ANY(%s)", (s.run_id, dead.column(DEAD_KEY).to_pylist()))
                execute_values(cur, d.insert_dead_letters().as_string(cur), [
                    (s.pipeline, "snapshot", s.run_id, s.schema.keyspace, s.schema.table, None, None,
                     None, key, None, None, *_class_and_message(err))
                    for key, err in zip(dead.column(DEAD_KEY).to_pylist(),
                                        dead.column(DEAD_ERROR).to_pylist(), strict=True)])
            cur.execute("INSERT INTO _c2pg.run_parts (run_id, split_index, part, rows) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING", (s.run_id, split, part_no, rows))
            cur.execute(
                "UPDATE _c2pg.run_splits rs SET parts_total = COALESCE(%s, rs.parts_total), "
                "retries = COALESCE(%s, rs.retries), "
                "rows = p.rows, status = CASE WHEN COALESCE(%s, rs.parts_total) <= p.parts THEN 'done' "
                "ELSE 'running' END, finished_at = CASE WHEN COALESCE(%s, rs.parts_total) <= p.parts "
                "THEN now() END "
                "FROM (SELECT count(*) AS parts, sum(rows) AS rows FROM _c2pg.run_parts "
                "      WHERE run_id = %s AND split_index = %s) p "
                "WHERE rs.run_id = %s AND rs.split_index = %s",
                (totals[0] if totals else None, retries, totals[0] if totals else None,
                 totals[0] if totals else None, s.run_id, split, s.run_id, split))


def _class_and_message(error: str) -> tuple[str, str]:
    """The reader's ``"ErrorClass: message"`` split in two."""
    cls, _, message = error.partition(": ")
    return cls, message


def copy_buffer(table: pa.Table, schema: TableSchema) -> bytes:
    """COPY TEXT lines (UTF-8) for the rows of ``table`` (values arrive already COPY-escaped).

    Built column-wise with Arrow's string kernels and taken whole from the result's data
    buffer, no Python string per row: this runs for every snapshot block.
    """
    fields = [pc.fill_null(table[c.name], NULL) for c in schema.columns]
    fields.append(pc.cast(table[META_TOKEN], pa.string()))
    fields.append(pg_int_arrays(table[META_WT]))
    fields.append(pg_int_arrays(table[META_EXP]))
    fields.append(pc.fill_null(pc.cast(table[META_ROW_TS], pa.string()), NULL))
    # ``_c2pg_row_exp``: CQL does not expose a row marker's TTL, so a snapshot row has none
    # (docs/snapshot.md, "Row markers"); it is the last field, so it carries the line's end.
    fields.append(pa.scalar(NULL + "\n"))
    return _string_bytes(pc.binary_join_element_wise(*fields, "\t"))


def _string_bytes(arr) -> bytes:
    """The concatenated values of a string array without nulls, copied once out of its
    data buffer."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if not len(arr):
        return b""
    offsets = np.frombuffer(arr.buffers()[1], np.int32)
    first, last = int(offsets[arr.offset]), int(offsets[arr.offset + len(arr)])
    return memoryview(arr.buffers()[2])[first:last].tobytes()


NULL = "\\N"


def pg_int_arrays(column) -> pa.Array:
    """A list<int64> column as PostgreSQL array literals: ``[1, None]`` → ``{1,NULL}``,
    a null list → COPY NULL."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets
    offsets = pc.subtract(offsets, offsets[0]) if len(offsets) and offsets[0].as_py() else offsets
    items = pc.fill_null(pc.cast(arr.flatten(), pa.string()), "NULL")
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, items), ",")
    literal = pc.binary_join_element_wise("{", joined, "}", "")
    return pc.if_else(arr.is_null(), NULL, literal)
