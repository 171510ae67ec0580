"""Every SQL statement c2pg sends to PostgreSQL is composed here, and nowhere else.

Identifiers always go through :class:`psycopg2.sql.Identifier`; values are parameters.
Callers (the snapshot Datasink, the sync writer, reconcile) get :class:`psycopg2.sql.Composed`
objects and run them in their own transactions (:mod:`engine.pg_writer`).

The merge statement is the heart of the replication contract (docs/architecture.md, "The
replication contract", rules 2 and 3): a staged cell replaces the stored one only when its
write time is newer, with ties broken deterministically (a deletion beats a live value;
otherwise the greater value, by its text form); a cell written at or before a recorded row
or partition deletion is dropped. The statement is idempotent and commutative: applying
the same staged rows twice, or batches in any order, leaves the same table.
"""

from __future__ import annotations

import hashlib

from psycopg2 import sql

from engine.schema import META_EXP, META_ROW_TS, META_TOKEN, META_WT, TableSchema

STATE_SCHEMA = "_c2pg"
STAGE = "_c2pg_stage"

STATE_DDL = [
    "CREATE SCHEMA IF NOT EXISTS _c2pg",
    """CREATE TABLE IF NOT EXISTS _c2pg.catalog (
        target_schema text NOT NULL,
        target_table text NOT NULL,
        keyspace text NOT NULL,
        source_table text NOT NULL,
        columns jsonb NOT NULL,
        fingerprint text NOT NULL,
        tombstone_table text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target_schema, target_table))""",
    """CREATE TABLE IF NOT EXISTS _c2pg.runs (
        run_id uuid PRIMARY KEY,
        kind text NOT NULL,
        pipeline text NOT NULL,
        keyspace text NOT NULL,
        source_table text NOT NULL,
        target text NOT NULL,
        status text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        args jsonb NOT NULL DEFAULT '{}',
        stats jsonb NOT NULL DEFAULT '{}',
        error text)""",
    """CREATE TABLE IF NOT EXISTS _c2pg.run_splits (
        run_id uuid NOT NULL REFERENCES _c2pg.runs ON DELETE CASCADE,
        split_index int NOT NULL,
        start_token bigint NOT NULL,
        end_token bigint NOT NULL,
        status text NOT NULL DEFAULT 'pending',
        rows bigint NOT NULL DEFAULT 0,
        parts_total int,
        retries int NOT NULL DEFAULT 0,
        finished_at timestamptz,
        PRIMARY KEY (run_id, split_index))""",
    """CREATE TABLE IF NOT EXISTS _c2pg.run_parts (
        run_id uuid NOT NULL,
        split_index int NOT NULL,
        part int NOT NULL,
        rows bigint NOT NULL,
        PRIMARY KEY (run_id, split_index, part))""",
    """CREATE TABLE IF NOT EXISTS _c2pg.dead_letters (
        id bigserial PRIMARY KEY,
        pipeline text NOT NULL,
        origin text NOT NULL,
        run_id uuid,
        keyspace text,
        source_table text,
        topic text,
        kafka_partition int,
        kafka_offset bigint,
        row_key text,
        raw_key text,
        raw_value text,
        error_class text NOT NULL,
        error text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        replayed_at timestamptz)""",
    "CREATE INDEX IF NOT EXISTS dead_letters_run ON _c2pg.dead_letters (run_id)",
    """CREATE TABLE IF NOT EXISTS _c2pg.offsets (
        pipeline text NOT NULL,
        topic text NOT NULL,
        kafka_partition int NOT NULL,
        next_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline, topic, kafka_partition))""",
    # Reconcile's findings: one row per differing primary key (engine.reconcile). ``key``
    # holds the key's canonical text by column; ``detail`` the values and write times seen.
    """CREATE TABLE IF NOT EXISTS _c2pg.reconcile_diffs (
        id bigserial PRIMARY KEY,
        run_id uuid NOT NULL REFERENCES _c2pg.runs ON DELETE CASCADE,
        split_index int NOT NULL,
        start_token bigint NOT NULL,
        end_token bigint NOT NULL,
        token bigint NOT NULL,
        key jsonb NOT NULL,
        kind text NOT NULL,
        columns text[] NOT NULL DEFAULT '{}',
        detail jsonb NOT NULL DEFAULT '{}',
        repaired bool NOT NULL DEFAULT false,
        repair_note text,
        found_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS reconcile_diffs_run ON _c2pg.reconcile_diffs (run_id, kind)",
]


def ident(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


def tombstone_table_name(target_schema: str, target_table: str) -> str:
    """``tomb_<hash>``: stable, short (PostgreSQL truncates names past 63 bytes), unique."""
    return "tomb_" + hashlib.sha1(f"{target_schema}.{target_table}".encode()).hexdigest()[:16]


def _cols(names) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def target_columns(schema: TableSchema) -> list[str]:
    """The target's columns in COPY order: Cassandra's, then the metadata columns."""
    return [c.name for c in schema.columns] + [META_TOKEN, META_WT, META_EXP, META_ROW_TS]


def create_target(schema: TableSchema, target_schema: str, target_table: str,
                  *, with_token_index: bool = True) -> list[sql.Composed]:
    """The target table (and its schema) with Cassandra's primary key and c2pg's metadata."""
    defs = [sql.SQL("{} {}{}").format(ident(c.name), sql.SQL(c.pg_sql_type),
                                      sql.SQL(" NOT NULL") if c in schema.primary_key else sql.SQL(""))
            for c in schema.columns]
    defs += [sql.SQL("{} bigint NOT NULL").format(ident(META_TOKEN)),
             sql.SQL("{} bigint[] NOT NULL").format(ident(META_WT)),
             sql.SQL("{} bigint[]").format(ident(META_EXP)),
             sql.SQL("{} bigint").format(ident(META_ROW_TS))]
    defs.append(sql.SQL("PRIMARY KEY ({})").format(_cols(c.name for c in schema.primary_key)))
    stmts = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident(target_schema)),
             sql.SQL("CREATE TABLE {} ({})").format(ident(target_schema, target_table),
                                                    sql.SQL(", ").join(defs))]
    if with_token_index:
        stmts.append(token_index(target_schema, target_table))
    return stmts


def token_index(target_schema: str, target_table: str) -> sql.Composed:
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
        ident(f"{target_table[:40]}__c2pg_token"), ident(target_schema, target_table), ident(META_TOKEN))


END_PREFIX = "_c2pg_end_"  # range deletions: the end bound's clustering values
T_KIND, T_COLUMN, T_DELETED_AT = "_c2pg_kind", "_c2pg_column", "_c2pg_deleted_at"
T_START_LEN, T_START_INCL, T_END_LEN, T_END_INCL = ("_c2pg_start_len", "_c2pg_start_incl",
                                                    "_c2pg_end_len", "_c2pg_end_incl")


def tombstone_columns(schema: TableSchema) -> list[str]:
    """The tombstone table's columns that sync writes, in COPY order."""
    return ([c.name for c in schema.primary_key] + [END_PREFIX + c.name for c in schema.clustering]
            + [T_KIND, T_START_LEN, T_START_INCL, T_END_LEN, T_END_INCL, T_COLUMN, T_DELETED_AT])


def create_tombstones(schema: TableSchema, tomb_table: str) -> sql.Composed:
    """Deletions kept beside the table, so an older write arriving later cannot resurrect
    data (purged after ``sync.tombstone_retention``). One row per deletion, by ``kind``:

    - ``row``: the clustering columns hold the row's key;
    - ``partition``: clustering columns NULL;
    - ``range``: the clustering columns hold the start bound's prefix (``_c2pg_start_len``
      values, ``_c2pg_start_incl``), the ``_c2pg_end_*`` columns the end's; a length of 0 is
      open-ended;
    - ``cell``: the deletion of one column (``_c2pg_column``) of a row that no longer exists
      (ADR 0002, addendum).

    Its own columns are prefixed ``_c2pg_`` so no Cassandra column name can collide.
    """
    pk = [sql.SQL("{} {} NOT NULL").format(ident(c.name), sql.SQL(c.pg_sql_type))
          for c in schema.partition_key]
    ck = [sql.SQL("{} {}").format(ident(c.name), sql.SQL(c.pg_sql_type)) for c in schema.clustering]
    ends = [sql.SQL("{} {}").format(ident(END_PREFIX + c.name), sql.SQL(c.pg_sql_type)) for c in schema.clustering]
    cols = [sql.SQL("_c2pg_id bigserial PRIMARY KEY"), *pk, *ck, *ends,
            sql.SQL("_c2pg_kind text NOT NULL CHECK (_c2pg_kind IN ('row', 'partition', 'range', 'cell'))"),
            sql.SQL("_c2pg_start_len smallint NOT NULL DEFAULT 0"), sql.SQL("_c2pg_start_incl boolean"),
            sql.SQL("_c2pg_end_len smallint NOT NULL DEFAULT 0"), sql.SQL("_c2pg_end_incl boolean"),
            sql.SQL("_c2pg_column text"), sql.SQL("_c2pg_deleted_at bigint NOT NULL"),
            sql.SQL("_c2pg_recorded_at timestamptz NOT NULL DEFAULT now()")]
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}); CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
        ident(STATE_SCHEMA, tomb_table), sql.SQL(", ").join(cols), ident(f"{tomb_table}_pk"),
        ident(STATE_SCHEMA, tomb_table), _cols(c.name for c in schema.partition_key))


def covers(schema: TableSchema, row: str, tomb: str) -> sql.Composed:
    """SQL: does the row/partition/range deletion ``tomb`` (alias) cover the row ``row``?"""
    r, d = sql.Identifier(row), sql.Identifier(tomb)
    same_partition = sql.SQL(" AND ").join(
        sql.SQL("{d}.{c} = {r}.{c}").format(d=d, r=r, c=ident(c.name)) for c in schema.partition_key)
    cks = [c.name for c in schema.clustering]
    if not cks:
        return sql.SQL("({same} AND {d}._c2pg_kind IN ('row', 'partition', 'range'))").format(same=same_partition, d=d)
    same_row = sql.SQL(" AND ").join(sql.SQL("{d}.{c} = {r}.{c}").format(d=d, r=r, c=ident(c)) for c in cks)

    desc = [c.descending for c in schema.clustering]
    kinds = [c.cql_type.kind for c in schema.clustering]

    def after(prefix: str, k: int, forward: bool) -> sql.Composed:
        """Row before/after the bound's first ``k`` values in clustering order (a DESC column
        reverses its values' order), strictly; lexicographic over the prefix."""
        alts = []
        for j in range(k):
            equal = [sql.SQL("{r}.{c} = {d}.{b}").format(r=r, c=ident(cks[i]), d=d, b=ident(prefix + cks[i]))
                     for i in range(j)]
            op = ">" if forward != desc[j] else "<"
            step = sql.SQL("{rk} {op} {dk}").format(
                rk=clustering_order_key(sql.SQL("{}.{}").format(r, ident(cks[j])), kinds[j]), op=sql.SQL(op),
                dk=clustering_order_key(sql.SQL("{}.{}").format(d, ident(prefix + cks[j])), kinds[j]))
            alts.append(sql.SQL("({})").format(sql.SQL(" AND ").join([*equal, step])))
        return sql.SQL("({})").format(sql.SQL(" OR ").join(alts))

    def same(prefix: str, k: int) -> sql.Composed:
        return sql.SQL(" AND ").join(sql.SQL("{r}.{c} = {d}.{b}").format(r=r, c=ident(cks[i]), d=d,
                                                                         b=ident(prefix + cks[i])) for i in range(k))

    def bound(prefix: str, length: str, incl: str, forward: bool) -> sql.Composed:
        alts = [sql.SQL("{d}.{len} = 0").format(d=d, len=sql.Identifier(length))]
        for k in range(1, len(cks) + 1):
            alts.append(sql.SQL("({d}.{len} = {k} AND ({after} OR ({d}.{incl} AND {same})))").format(
                d=d, len=sql.Identifier(length), k=sql.Literal(k), after=after(prefix, k, forward),
                incl=sql.Identifier(incl), same=same(prefix, k)))
        return sql.SQL("({})").format(sql.SQL(" OR ").join(alts))

    return sql.SQL("({same} AND ({d}._c2pg_kind = 'partition' OR ({d}._c2pg_kind = 'row' AND {same_row}) OR "
                   "({d}._c2pg_kind = 'range' AND {start} AND {end})))").format(
        same=same_partition, d=d, same_row=same_row,
        start=bound("", T_START_LEN, T_START_INCL, True), end=bound(END_PREFIX, T_END_LEN, T_END_INCL, False))


def clustering_order_key(value: sql.Composable, kind: str) -> sql.Composable:
    """An expression PostgreSQL orders the way Cassandra orders a clustering column of
    CQL type ``kind`` (the order ``engine.reduce.typed_compare`` uses for one batch):

    - text/ascii by UTF-8 bytes, whatever the column's or database's collation
      (``COLLATE "C"``; an ICU or ``en_US`` collation would put ``a`` before ``B``);
    - timeuuid by its timestamp, then its bytes (PostgreSQL's uuid order is bytes only):
      the 60-bit time as 15 hex digits (time_hi without the version, time_mid, time_low)
      followed by the uuid's text, compared bytewise;
    - everything else by PostgreSQL's own order of the mapped type.
    """
    if kind in ("text", "ascii"):
        return sql.SQL('({} COLLATE "C")').format(value)
    if kind == "timeuuid":
        return sql.SQL('((substr({v}::text, 16, 3) || substr({v}::text, 10, 4) || substr({v}::text, 1, 8) '
                       '|| {v}::text) COLLATE "C")').format(v=value)
    return value


def cell_killed(schema: TableSchema, row: str, tomb: str, column: str) -> sql.Composed:
    """SQL: is ``tomb`` a deletion of ``column`` of the row ``row`` (kind ``cell``)?"""
    r, d = sql.Identifier(row), sql.Identifier(tomb)
    same = sql.SQL(" AND ").join(sql.SQL("{d}.{c} = {r}.{c}").format(d=d, r=r, c=ident(c.name))
                                 for c in schema.primary_key)
    return sql.SQL("({d}._c2pg_kind = 'cell' AND {d}._c2pg_column = {col} AND {same})").format(
        d=d, col=sql.Literal(column), same=same)


def describe_target(target_schema: str, target_table: str) -> tuple[sql.Composable, tuple]:
    """Columns and types of an existing table (empty result when it does not exist)."""
    return (sql.SQL("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                    "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
                    "ORDER BY a.attnum"), (target_schema, target_table))


def add_column(target_schema: str, target_table: str, name: str, pg_sql_type: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        ident(target_schema, target_table), ident(name), sql.SQL(pg_sql_type))


def create_stage(target_schema: str, target_table: str) -> sql.Composed:
    """A session-private staging table shaped like the target, dropped at commit."""
    return sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        ident(STAGE), ident(target_schema, target_table))


def copy_into(qualified: sql.Composable, columns: list[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(qualified, _cols(columns))


def copy_target(target_schema: str, target_table: str, columns: list[str]) -> sql.Composed:
    return copy_into(ident(target_schema, target_table), columns)


def copy_stage(columns: list[str]) -> sql.Composed:
    return copy_into(ident(STAGE), columns)


def merge(schema: TableSchema, target_schema: str, target_table: str, tomb_table: str, *,
          source_wins_ties: bool = False) -> sql.Composed:
    """Apply the staged rows to the target with per-cell last-write-wins.

    ``source_wins_ties`` is reconcile's repair: the staged cells were just read from
    Cassandra, so at an equal write time they replace what PostgreSQL holds (a value
    changed in PostgreSQL behind c2pg's back keeps its write time). A newer stored cell
    still wins: a repair never overwrites a later write.

    Steps, all in this one statement:
    1. each staged row is joined to the newest row or partition deletion recorded for it
       (``kill``); a staged cell (and row marker) written at or before it is dropped, so an
       older write arriving after a delete cannot resurrect data;
    2. new keys are inserted as they are;
    3. for existing keys, each regular column takes the staged cell only when it wins
       (:func:`_wins`), and ``_c2pg_wt``/``_c2pg_exp`` follow the winner per position;
       the row marker keeps the greater time;
    4. rows where nothing wins are left untouched (no dead tuple).
    """
    target = ident(target_schema, target_table)
    pk = [c.name for c in schema.primary_key]
    n = len(schema.regular)
    s, t, x = sql.Identifier("s"), sql.Identifier("t"), sql.SQL("EXCLUDED")

    def at(alias, meta, i):
        return sql.SQL("{}.{}[{}]").format(alias, ident(meta), sql.Literal(i))

    kill = sql.SQL("k.kill_ts")
    select_cols: list[sql.Composable] = [sql.SQL("{}.{}").format(s, ident(name)) for name in pk]
    wt_items, exp_items = [], []
    for i, col in enumerate(schema.regular, start=1):
        ckill = sql.Identifier(f"kill_{i}")
        alive = sql.SQL("(({kill} IS NULL OR {wt} > {kill}) AND (k.{ck} IS NULL OR {wt} > k.{ck}))").format(
            kill=kill, wt=at(s, META_WT, i), ck=ckill)
        select_cols.append(sql.SQL("CASE WHEN {alive} THEN {s}.{c} END").format(
            alive=alive, s=s, c=ident(col.name)))
        wt_items.append(sql.SQL("CASE WHEN {alive} THEN {wt} END").format(alive=alive, wt=at(s, META_WT, i)))
        exp_items.append(sql.SQL("CASE WHEN {alive} THEN {e} END").format(alive=alive, e=at(s, META_EXP, i)))
    select_cols.append(sql.SQL("{}.{}").format(s, ident(META_TOKEN)))
    select_cols.append(sql.SQL("ARRAY[{}]::bigint[]").format(sql.SQL(", ").join(wt_items))
                       if n else sql.SQL("'{}'::bigint[]"))
    select_cols.append(sql.SQL("ARRAY[{}]::bigint[]").format(sql.SQL(", ").join(exp_items))
                       if n else sql.SQL("NULL::bigint[]"))
    select_cols.append(sql.SQL("CASE WHEN {kill} IS NULL OR {s}.{rt} > {kill} THEN {s}.{rt} END").format(
        kill=kill, s=s, rt=ident(META_ROW_TS)))

    sets, wins_any, new_wt, new_exp = [], [], [], []
    for i, col in enumerate(schema.regular, start=1):
        wins = _wins(x, t, col.name, i, source_wins_ties)
        wins_any.append(wins)
        sets.append(sql.SQL("{c} = CASE WHEN {w} THEN {x}.{c} ELSE {t}.{c} END").format(
            c=ident(col.name), w=wins, x=x, t=t))
        new_wt.append(sql.SQL("CASE WHEN {w} THEN {xw} ELSE {tw} END").format(
            w=wins, xw=at(x, META_WT, i), tw=at(t, META_WT, i)))
        new_exp.append(sql.SQL("CASE WHEN {w} THEN {xe} ELSE {te} END").format(
            w=wins, xe=at(x, META_EXP, i), te=at(t, META_EXP, i)))
    if n:
        sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_WT), sql.SQL(", ").join(new_wt)))
        sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_EXP), sql.SQL(", ").join(new_exp)))
    marker_wins = sql.SQL("({x}.{rt} IS NOT NULL AND ({t}.{rt} IS NULL OR {x}.{rt} > {t}.{rt}))").format(
        x=x, t=t, rt=ident(META_ROW_TS))
    sets.append(sql.SQL("{rt} = GREATEST({t}.{rt}, {x}.{rt})").format(rt=ident(META_ROW_TS), t=t, x=x))
    wins_any.append(marker_wins)

    cell_kills = [sql.SQL("max(d._c2pg_deleted_at) FILTER (WHERE {}) AS {}").format(
        cell_killed(schema, "s", "d", col.name), sql.Identifier(f"kill_{i}"))
        for i, col in enumerate(schema.regular, start=1)]
    same_partition = sql.SQL(" AND ").join(sql.SQL("d.{c} = s.{c}").format(c=ident(c.name))
                                           for c in schema.partition_key)
    return sql.SQL(
        "INSERT INTO {target} AS t ({cols}) "
        "SELECT {select} FROM {stage} AS s "
        "LEFT JOIN LATERAL (SELECT max(d._c2pg_deleted_at) FILTER (WHERE {covers}) AS kill_ts{cell_kills} "
        "FROM {tomb} AS d WHERE {same_partition}) AS k ON true "
        "ON CONFLICT ({pk}) DO UPDATE SET {sets} WHERE {any_wins}"
    ).format(
        target=target, cols=_cols(target_columns(schema)), select=sql.SQL(", ").join(select_cols),
        stage=ident(STAGE), tomb=ident(STATE_SCHEMA, tomb_table), covers=covers(schema, "s", "d"),
        cell_kills=sql.SQL("").join(sql.SQL(", ") + c for c in cell_kills), same_partition=same_partition,
        pk=_cols(pk), sets=sql.SQL(", ").join(sets), any_wins=sql.SQL(" OR ").join(wins_any),
    )


def _wins(x: sql.Composable, t: sql.Composable, column: str, i: int, source_wins_ties: bool = False) -> sql.Composed:
    """Does the staged cell (``EXCLUDED``) beat the stored one (``t``) at position ``i``?

    Newer write time wins. At equal time a deletion (NULL value) beats a live value, and
    between two live values the greater text form wins (byte order, ``COLLATE "C"``, so the
    database's locale cannot change the outcome): a deterministic order, so every
    replica of the same events converges (Cassandra compares serialized bytes instead; the
    two can differ only for different values written at the same microsecond, and
    reconcile reports it). With ``source_wins_ties`` (repair) the staged cell wins any tie.
    """
    xw = sql.SQL("{}.{}[{}]").format(x, ident(META_WT), sql.Literal(i))
    tw = sql.SQL("{}.{}[{}]").format(t, ident(META_WT), sql.Literal(i))
    if source_wins_ties:
        return sql.SQL("({xw} IS NOT NULL AND ({tw} IS NULL OR {xw} >= {tw}))").format(xw=xw, tw=tw)
    return sql.SQL(
        "({xw} IS NOT NULL AND ({tw} IS NULL OR {xw} > {tw} OR ({xw} = {tw} AND ("
        "({x}.{c} IS NULL AND {t}.{c} IS NOT NULL) OR "
        "({x}.{c} IS NOT NULL AND {t}.{c} IS NOT NULL AND "
        "{x}.{c}::text COLLATE \"C\" > {t}.{c}::text COLLATE \"C\")))))"
    ).format(xw=xw, tw=tw, x=x, t=t, c=ident(column))


def insert_dead_letters() -> sql.SQL:
    return sql.SQL(
        "INSERT INTO _c2pg.dead_letters (pipeline, origin, run_id, keyspace, source_table, topic, "
        "kafka_partition, kafka_offset, row_key, raw_key, raw_value, error_class, error) "
        "VALUES %s")


# --- the sync writer's statements (engine.pg_writer) ------------------------------------------

TSTAGE = "_c2pg_tstage"


def create_tombstone_stage(tomb_table: str) -> sql.Composed:
    return sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        ident(TSTAGE), ident(STATE_SCHEMA, tomb_table))


def copy_tombstone_stage(schema: TableSchema) -> sql.Composed:
    return copy_into(ident(TSTAGE), tombstone_columns(schema))


def record_tombstones(schema: TableSchema, tomb_table: str) -> sql.Composed:
    cols = _cols(tombstone_columns(schema))
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
        ident(STATE_SCHEMA, tomb_table), cols, cols, ident(TSTAGE))


def shadow_rows(schema: TableSchema, target_schema: str, target_table: str) -> sql.Composed:
    """Apply the batch's deletions to the rows already stored: a cell written at or before
    the newest covering deletion becomes NULL with that deletion's time; an older row marker
    goes. Rows the deletions do not cover are not touched."""
    target = ident(target_schema, target_table)
    pk = [c.name for c in schema.primary_key]
    sets, wts, exps = [], [], []
    for i, col in enumerate(schema.regular, start=1):
        # A value without a write time was not written by c2pg (a hand-made row that
        # reconcile deletes): any covering deletion kills it.
        dead = sql.SQL("(t.{wt}[{i}] <= k.kill OR (t.{wt}[{i}] IS NULL AND t.{c} IS NOT NULL))").format(
            wt=ident(META_WT), i=sql.Literal(i), c=ident(col.name))
        sets.append(sql.SQL("{c} = CASE WHEN {dead} THEN NULL ELSE t.{c} END").format(c=ident(col.name), dead=dead))
        wts.append(sql.SQL("CASE WHEN {dead} THEN k.kill ELSE t.{wt}[{i}] END").format(
            dead=dead, wt=ident(META_WT), i=sql.Literal(i)))
        exps.append(sql.SQL("CASE WHEN {dead} THEN NULL ELSE t.{e}[{i}] END").format(
            dead=dead, e=ident(META_EXP), i=sql.Literal(i)))
    if schema.regular:
        sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_WT), sql.SQL(", ").join(wts)))
        sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_EXP), sql.SQL(", ").join(exps)))
    sets.append(sql.SQL("{rt} = CASE WHEN t.{rt} <= k.kill THEN NULL ELSE t.{rt} END").format(rt=ident(META_ROW_TS)))
    key_cols = sql.SQL(", ").join(sql.SQL("r.{}").format(ident(c)) for c in pk)
    join_key = sql.SQL(" AND ").join(sql.SQL("t.{c} = k.{c}").format(c=ident(c)) for c in pk)
    return sql.SQL(
        "UPDATE {target} AS t SET {sets} FROM ("
        "SELECT {key_cols}, max(d.{deleted}) AS kill FROM {target} AS r JOIN {tstage} AS d ON {covers} "
        "GROUP BY {key_cols}) AS k WHERE {join_key}"
    ).format(target=target, sets=sql.SQL(", ").join(sets), key_cols=key_cols, deleted=ident(T_DELETED_AT),
             tstage=ident(TSTAGE), covers=covers(schema, "r", "d"), join_key=join_key)


def remove_empty_rows(schema: TableSchema, target_schema: str, target_table: str, tomb_table: str) -> sql.Composed:
    """Delete the rows of the touched partitions that have no live cell and no row marker
    (Cassandra has no such row), keeping their cell deletions as ``cell`` tombstones."""
    target = ident(target_schema, target_table)
    pk = [c.name for c in schema.partition_key]
    keys = [c.name for c in schema.primary_key]
    part = sql.SQL(", ").join(map(ident, pk))
    empty = [sql.SQL("t.{} IS NULL").format(ident(c.name)) for c in schema.regular if not c.dropped]
    empty.append(sql.SQL("t.{} IS NULL").format(ident(META_ROW_TS)))
    regular = [(i, c.name) for i, c in enumerate(schema.regular, start=1)]
    columns = (sql.SQL("(VALUES {}) AS c(name, pos)").format(sql.SQL(", ").join(
        sql.SQL("({}, {})").format(sql.Literal(n), sql.Literal(i)) for i, n in regular))
        if regular else None)
    gone_cols = sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in keys)
    deleted = sql.SQL(
        "DELETE FROM {target} AS t WHERE ({t_part}) IN (SELECT {part} FROM {stage} UNION SELECT {part} FROM {tstage}) "
        "AND {empty} RETURNING {gone_cols}, t.{wt}"
    ).format(target=target, t_part=sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in pk),
             part=part, stage=ident(STAGE), tstage=ident(TSTAGE), empty=sql.SQL(" AND ").join(empty),
             gone_cols=gone_cols, wt=ident(META_WT))
    if columns is None:
        return sql.SQL("WITH gone AS ({}) SELECT count(*) FROM gone").format(deleted)
    return sql.SQL(
        "WITH gone AS ({deleted}) INSERT INTO {tomb} ({key_cols}, {kind}, {column}, {at}) "
        "SELECT {gone_keys}, 'cell', c.name, (g.{wt})[c.pos] FROM gone AS g CROSS JOIN {columns} "
        "WHERE (g.{wt})[c.pos] IS NOT NULL"
    ).format(deleted=deleted, tomb=ident(STATE_SCHEMA, tomb_table), key_cols=_cols(keys), kind=ident(T_KIND),
             column=ident(T_COLUMN), at=ident(T_DELETED_AT),
             gone_keys=sql.SQL(", ").join(sql.SQL("g.{}").format(ident(c)) for c in keys),
             wt=ident(META_WT), columns=columns)


SAVE_OFFSETS = sql.SQL(
    "INSERT INTO _c2pg.offsets (pipeline, topic, kafka_partition, next_offset) VALUES %s "
    "ON CONFLICT (pipeline, topic, kafka_partition) DO UPDATE SET "
    "next_offset = GREATEST(_c2pg.offsets.next_offset, EXCLUDED.next_offset), updated_at = now()")


# --- the TTL sweep and the tombstone purge (engine.sweep) -------------------------------------
#
# Times are rendered as integer literals, not parameters: these statements carry
# identifiers (column names), and a name containing "%" would clash with psycopg2's
# parameter markers. An int literal cannot inject anything.


def expire_cells(schema: TableSchema, target_schema: str, target_table: str, tomb_table: str,
                 now_us: int) -> sql.Composed | None:
    """Expire the cells whose TTL ran out at ``now_us``, in one statement (None: the table
    has no live regular column, so nothing can expire).

    - ``due``: the rows with a live regular cell whose ``_c2pg_exp`` is ``<= now_us``
      (Cassandra: a cell is live while ``now < localDeletionTime``), locked ``FOR UPDATE
      SKIP LOCKED``: a row a sync batch holds is left for the next sweep, so the sweep never
      waits on a row lock (and cannot deadlock with a batch);
    - ``kept``: rows that keep a live cell or a row marker: each expired cell becomes NULL
      with its write time kept in ``_c2pg_wt`` (an expired cell is a deletion at its write
      time: an older or equal-time write still loses in the merge, a newer one wins) and its
      ``_c2pg_exp`` cleared;
    - ``gone``: rows left with no live cell and no row marker are deleted, and every cell
      with a known write time is kept as a ``cell`` tombstone at that time — exactly what
      :func:`remove_empty_rows` does for the sync writer, scoped to these rows.

    The row sets of ``kept`` and ``gone`` are disjoint by construction, so the two
    data-modifying parts never touch the same row. Result: one row ``(cells expired, rows
    removed)``. Dropped columns are neither expired nor counted (they are no longer written).
    """
    target = ident(target_schema, target_table)
    keys = [c.name for c in schema.primary_key]
    live = [(i, c.name) for i, c in enumerate(schema.regular, start=1) if not c.dropped]
    if not live:
        return None
    now = sql.Literal(int(now_us))
    t = sql.Identifier("t")

    def due(i: int) -> sql.Composed:
        return sql.SQL("COALESCE({t}.{e}[{i}] <= {now}, false)").format(
            t=t, e=ident(META_EXP), i=sql.Literal(i), now=now)

    any_due = sql.SQL("({})").format(sql.SQL(" OR ").join(due(i) for i, _ in live))
    empty_after = sql.SQL("({} AND {}.{} IS NULL)").format(
        sql.SQL(" AND ").join(sql.SQL("({t}.{c} IS NULL OR {due})").format(t=t, c=ident(name), due=due(i))
                              for i, name in live), t, ident(META_ROW_TS))
    n_due = sql.SQL(" + ").join(sql.SQL("CASE WHEN {} THEN 1 ELSE 0 END").format(due(i)) for i, _ in live)
    live_pos = {i for i, _ in live}
    sets = [sql.SQL("{c} = CASE WHEN {due} THEN NULL ELSE {t}.{c} END").format(c=ident(name), due=due(i), t=t)
            for i, name in live]
    exps = [sql.SQL("CASE WHEN {due} THEN NULL ELSE {t}.{e}[{i}] END").format(
                due=due(i), t=t, e=ident(META_EXP), i=sql.Literal(i))
            if i in live_pos else sql.SQL("{}.{}[{}]").format(t, ident(META_EXP), sql.Literal(i))
            for i in range(1, len(schema.regular) + 1)]
    sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_EXP), sql.SQL(", ").join(exps)))
    t_keys = sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in keys)
    same_key = sql.SQL(" AND ").join(sql.SQL("t.{c} = d.{c}").format(c=ident(c)) for c in keys)
    columns = sql.SQL("(VALUES {}) AS c(name, pos)").format(sql.SQL(", ").join(
        sql.SQL("({}, {})").format(sql.Literal(c.name), sql.Literal(i))
        for i, c in enumerate(schema.regular, start=1)))
    return sql.SQL(
        "WITH due AS (SELECT {t_keys}, {n_due} AS n FROM {target} AS t WHERE {any_due} "
        "FOR UPDATE SKIP LOCKED), "
        "kept AS (UPDATE {target} AS t SET {sets} FROM due AS d "
        "WHERE {same_key} AND {any_due} AND NOT {empty} RETURNING d.n), "
        "gone AS (DELETE FROM {target} AS t USING due AS d WHERE {same_key} AND {any_due} AND {empty} "
        "RETURNING {t_keys}, t.{wt}, d.n), "
        "tombs AS (INSERT INTO {tomb} ({key_cols}, {kind}, {column}, {at}) "
        "SELECT {g_keys}, 'cell', c.name, (g.{wt})[c.pos] FROM gone AS g CROSS JOIN {columns} "
        "WHERE (g.{wt})[c.pos] IS NOT NULL) "
        "SELECT (SELECT COALESCE(sum(n), 0) FROM kept) + (SELECT COALESCE(sum(n), 0) FROM gone), "
        "(SELECT count(*) FROM gone)"
    ).format(t_keys=t_keys, n_due=n_due, target=target, any_due=any_due, sets=sql.SQL(", ").join(sets),
             same_key=same_key, empty=empty_after, wt=ident(META_WT), tomb=ident(STATE_SCHEMA, tomb_table),
             key_cols=_cols(keys), kind=ident(T_KIND), column=ident(T_COLUMN), at=ident(T_DELETED_AT),
             g_keys=sql.SQL(", ").join(sql.SQL("g.{}").format(ident(c)) for c in keys), columns=columns)


def purge_tombstones(tomb_table: str, older_than_us: int) -> sql.Composed:
    """Delete the tombstones older than ``older_than_us`` (every kind) — by their deletion
    time AND by when c2pg recorded them: a deletion written with an old ``USING TIMESTAMP``
    still waits out the retention from its arrival (like Cassandra's gc_grace, which counts
    from the local deletion time), so late older writes stay shadowed."""
    return sql.SQL("DELETE FROM {} WHERE {} < {} AND {} < to_timestamp({} / 1e6)").format(
        ident(STATE_SCHEMA, tomb_table), ident(T_DELETED_AT), sql.Literal(int(older_than_us)),
        ident("_c2pg_recorded_at"), sql.Literal(int(older_than_us)))


# --- dead letters: listing and replay (engine.dlq) ---------------------------------------------

DEAD_LETTER_FIELDS = ("id", "pipeline", "origin", "run_id", "keyspace", "source_table", "topic",
                      "kafka_partition", "kafka_offset", "row_key", "error_class", "error", "created_at",
                      "replayed_at")
DEAD_LETTER_RAW = ("raw_key", "raw_value")


def select_dead_letters(pipeline: str, *, origin: str | None = None, keyspace: str | None = None,
                        table: str | None = None, since=None, include_replayed: bool = False,
                        limit: int = 50) -> tuple[sql.Composed, tuple]:
    """Dead letters of ``pipeline``, newest first, without their raw key and value.

    ``since`` is a ``datetime`` (created at or after it) or a ``timedelta`` (that long ago).
    """
    where: list[sql.Composable] = [sql.SQL("pipeline = %s")]
    params: list[object] = [pipeline]
    for column, value in (("origin", origin), ("keyspace", keyspace), ("source_table", table)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(ident(column)))
            params.append(value)
    if since is not None:
        from datetime import timedelta

        where.append(sql.SQL("created_at >= now() - %s") if isinstance(since, timedelta)
                     else sql.SQL("created_at >= %s"))
        params.append(since)
    if not include_replayed:
        where.append(sql.SQL("replayed_at IS NULL"))
    params.append(limit)
    return (sql.SQL("SELECT {} FROM _c2pg.dead_letters WHERE {} ORDER BY id DESC LIMIT %s").format(
        _cols(DEAD_LETTER_FIELDS), sql.SQL(" AND ").join(where)), tuple(params))


def show_dead_letter() -> sql.Composed:
    """One dead letter by id (parameter), raw key and value included."""
    return sql.SQL("SELECT {} FROM _c2pg.dead_letters WHERE id = %s").format(
        _cols(DEAD_LETTER_FIELDS + DEAD_LETTER_RAW))


def select_replay_by_ids() -> sql.Composed:
    """The dead letters with the given ids (parameter: a list), whatever their state: replay
    says why it skips one."""
    return sql.SQL("SELECT {} FROM _c2pg.dead_letters WHERE id = ANY(%s) ORDER BY id").format(
        _cols(DEAD_LETTER_FIELDS + DEAD_LETTER_RAW))


def select_replay_pending() -> sql.Composed:
    """A page of the pipeline's sync dead letters not yet replayed (parameters: pipeline,
    the last id of the previous page, page size)."""
    return sql.SQL("SELECT {} FROM _c2pg.dead_letters WHERE pipeline = %s AND origin = 'sync' "
                   "AND replayed_at IS NULL AND id > %s ORDER BY id LIMIT %s").format(
        _cols(DEAD_LETTER_FIELDS + DEAD_LETTER_RAW))


LOCK_DEAD_LETTERS = sql.SQL(
    "SELECT id FROM _c2pg.dead_letters WHERE id = ANY(%s) AND replayed_at IS NULL FOR UPDATE SKIP LOCKED")
MARK_REPLAYED = sql.SQL("UPDATE _c2pg.dead_letters SET replayed_at = now() WHERE id = ANY(%s)")
# execute_values: (id, error_class, error) per dead letter that failed again.
RECORD_REPLAY_FAILURES = sql.SQL(
    "UPDATE _c2pg.dead_letters AS d SET error_class = v.error_class, error = v.error "
    "FROM (VALUES %s) AS v(id, error_class, error) WHERE d.id = v.id")


# --- reconcile (engine.reconcile) --------------------------------------------------------------

def digest_by_bucket(schema: TableSchema, target_schema: str, target_table: str) -> sql.Composed:
    """Per sub-range of one token range: row count and the sum of row digests
    (:mod:`engine.digest`). Parameters: ``start``/``end`` (the range, start exclusive),
    ``first`` (start + 1), ``width`` (tokens per sub-range), ``now`` (µs, for expiry)."""
    from engine.digest import row_digest_sql

    lateral, digest = row_digest_sql(schema, "t", sql.Placeholder("now"))
    token = sql.SQL("t.{}").format(ident(META_TOKEN))
    return sql.SQL(
        "SELECT div({token}::numeric - %(first)s, %(width)s)::bigint AS bucket, count(*), sum({digest}) "
        "FROM {target} AS t {lateral} WHERE {token} > %(start)s AND {token} <= %(end)s GROUP BY 1"
    ).format(token=token, digest=digest, target=ident(target_schema, target_table), lateral=lateral)


def _reconcile_select(schema: TableSchema) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("t.{}").format(ident(n)) for n in target_columns(schema))


def select_rows_in_ranges(schema: TableSchema, target_schema: str, target_table: str) -> sql.Composed:
    """Stored rows (target column order) of the token ranges ``(lo, hi]`` given as two
    arrays ``%(los)s``/``%(his)s``: one index range scan per range."""
    return sql.SQL(
        "SELECT {cols} FROM unnest(%(los)s::bigint[], %(his)s::bigint[]) AS r(lo, hi) "
        "JOIN {target} AS t ON t.{token} > r.lo AND t.{token} <= r.hi"
    ).format(cols=_reconcile_select(schema), target=ident(target_schema, target_table), token=ident(META_TOKEN))


def select_rows_by_tokens(schema: TableSchema, target_schema: str, target_table: str) -> sql.Composed:
    """Stored rows of the partition tokens ``%(tokens)s`` (a bigint array)."""
    return sql.SQL("SELECT {cols} FROM {target} AS t WHERE t.{token} = ANY(%(tokens)s::bigint[])").format(
        cols=_reconcile_select(schema), target=ident(target_schema, target_table), token=ident(META_TOKEN))


def estimated_rows(target_schema: str, target_table: str) -> tuple[str, tuple[str, str]]:
    """The planner's row estimate (-1 or 0 before the first ANALYZE; no row: no table)."""
    return ("SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s", (target_schema, target_table))


RECONCILE_SESSION = sql.SQL(
    # The digest compares PostgreSQL's text output: pin every setting that changes it.
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 1; SET bytea_output = 'hex'")

INSERT_RUN = sql.SQL(
    "INSERT INTO _c2pg.runs (run_id, kind, pipeline, keyspace, source_table, target, status, args) "
    "VALUES (%s, %s, %s, %s, %s, %s, 'running', %s)")
INSERT_RUN_SPLITS = sql.SQL(
    "INSERT INTO _c2pg.run_splits (run_id, split_index, start_token, end_token) VALUES %s")
FINISH_RUN_SPLIT = sql.SQL(
    "UPDATE _c2pg.run_splits SET status = 'done', rows = %s, retries = %s, finished_at = now() "
    "WHERE run_id = %s AND split_index = %s")
UPDATE_RUN_STATS = sql.SQL("UPDATE _c2pg.runs SET stats = %s WHERE run_id = %s")
FINISH_RUN = sql.SQL(
    "UPDATE _c2pg.runs SET status = %s, finished_at = now(), stats = %s, error = %s WHERE run_id = %s")
INSERT_RECONCILE_DIFFS = sql.SQL(
    "INSERT INTO _c2pg.reconcile_diffs (run_id, split_index, start_token, end_token, token, key, kind, "
    "columns, detail) VALUES %s RETURNING id")
# The drift each table's last completed reconcile found (the metric, exported by the sync
# supervisor: a job's own gauge ends with its process, before Ray exports it).
LATEST_RECONCILE_DRIFT = sql.SQL(
    "SELECT DISTINCT ON (keyspace, source_table) keyspace || '.' || source_table, stats -> 'differences' "
    "FROM _c2pg.runs WHERE kind = 'reconcile' AND status = 'completed' AND pipeline = %s "
    "ORDER BY keyspace, source_table, finished_at DESC")
MARK_REPAIRED = sql.SQL(
    "UPDATE _c2pg.reconcile_diffs AS d SET repaired = v.repaired, repair_note = v.note "
    "FROM (VALUES %s) AS v(id, repaired, note) WHERE d.id = v.id")
