"""Every SQL statement c2pg sends to PostgreSQL is composed here, and nowhere else.

Identifiers always go through :class:`psycopg2.sql.Identifier`; values are parameters.
Callers (the snapshot Datasink, the sync writer, reconcile) get :class:`psycopg2.sql.Composed`
objects and run them in their own transactions (:mod:`engine.pg_writer`).

The merge statement is the heart of the replication contract (docs/architecture.md, "The
replication contract", rules 2 and 3): a staged cell replaces the stored one only when its
write time is newer, with ties broken as Cassandra breaks them (a deletion beats a live
value, then TTL and expiry, then the greater serialized value: :func:`_wins`); a cell
written at or before a recorded row or partition deletion is dropped; a cell whose TTL has
run out by the merge's clock is a deletion at its write time. The statement is
idempotent and commutative: applying the same staged rows twice, or batches in any order,
leaves the same table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg2 import sql

from engine.cassandra_bytes import FIXED_SIZE_KINDS
from engine.schema import META_EXP, META_ROW_EXP, META_ROW_TS, META_TOKEN, META_WT, Column, TableSchema
from engine.types import CqlType, copy_unescape, pg_type

STATE_SCHEMA = "_c2pg"
STAGE = "_c2pg_stage"

# Cassandra's tie rule in SQL (``_wins``, :func:`cassandra_bytes`): functions that compute a
# stored value's Cassandra serialization where PostgreSQL has no built-in for it. Created
# (or replaced: the definitions are versioned with the code) with the rest of the state.
_TIE_RULE_FUNCTIONS = [
    # big-endian unsigned ``u`` in ``n`` bytes (mod 256^n)
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_be(u numeric, n int) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $f$
DECLARE
    b bytea := decode(repeat('00', n), 'hex');
BEGIN
    FOR i IN REVERSE n - 1..0 LOOP
        b := set_byte(b, i, mod(u, 256)::int);
        u := div(u, 256);
    END LOOP;
    RETURN b;
END
$f$""",
    # big-endian two's complement bytes → numeric
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_signed(b bytea) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $f$
DECLARE
    n numeric := 0;
BEGIN
    FOR i IN 0..length(b) - 1 LOOP
        n := n * 256 + get_byte(b, i);
    END LOOP;
    IF length(b) > 0 AND get_byte(b, 0) >= 128 THEN
        n := n - 256::numeric ^ length(b);
    END IF;
    RETURN n;
END
$f$""",
    # varint: minimal two's complement (Java's BigInteger.toByteArray)
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_varint(n numeric) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $f$
DECLARE
    k int := 1;
    lim numeric := 128;
BEGIN
    WHILE n >= lim OR n < -lim LOOP
        k := k + 1;
        lim := lim * 256;
    END LOOP;
    RETURN _c2pg.cass_be(CASE WHEN n < 0 THEN n + lim * 2 ELSE n END, k);
END
$f$""",
    # decimal: int32 scale, then the unscaled value as a varint
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_decimal(d numeric) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$
    SELECT CASE WHEN d = 'NaN' OR d = 'Infinity' OR d = '-Infinity' THEN convert_to(d::text, 'UTF8')
                ELSE int4send(scale(d)) || _c2pg.cass_varint(trunc(d * 10::numeric ^ scale(d))) END
$f$""",
    # Cassandra's unsigned vint (VIntCoding): leading one bits count the extra bytes
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_uvint(u numeric) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $f$
DECLARE
    extra int := 0;
    b bytea;
BEGIN
    IF u < 0 OR u >= 18446744073709551616 THEN
        RAISE EXCEPTION 'c2pg: % does not fit an unsigned vint', u;
    END IF;
    WHILE extra < 8 AND u >= 2::numeric ^ (7 * (extra + 1)) LOOP
        extra := extra + 1;
    END LOOP;
    b := _c2pg.cass_be(u, extra + 1);
    RETURN set_byte(b, 0, get_byte(b, 0) | ((255 << (8 - extra)) & 255));
END
$f$""",
    # signed vint: zig-zag, then unsigned vint
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_vint(n numeric) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$
    SELECT _c2pg.cass_uvint(CASE WHEN n >= 0 THEN 2 * n ELSE -2 * n - 1 END)
$f$""",
    # duration: months, days, nanoseconds as three signed vints
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_duration(months numeric, days numeric, ns numeric) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$
    SELECT _c2pg.cass_vint(months) || _c2pg.cass_vint(days) || _c2pg.cass_vint(ns)
$f$""",
    # an interval's months, days and µs (interval_send: int8 µs, int4 days, int4 months)
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_interval(v interval) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$
    SELECT _c2pg.cass_duration(_c2pg.cass_signed(substring(b FROM 13 FOR 4)),
                               _c2pg.cass_signed(substring(b FROM 9 FOR 4)),
                               _c2pg.cass_signed(substring(b FROM 1 FOR 8)) * 1000)
    FROM (SELECT interval_send(v) AS b) AS s
$f$""",
    # date: days since 1970 + 2^31 as an unsigned int32
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_date(days bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$
    SELECT _c2pg.cass_be(days + 2147483648, 4)
$f$""",
    # days since 1970 of a proleptic Gregorian date, any year (Hinnant's days_from_civil)
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_days(y bigint, m int, d int) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $f$
    SELECT era * 146097 + doe - 719468
    FROM (SELECT CASE WHEN m <= 2 THEN y - 1 ELSE y END AS yy) AS a,
         LATERAL (SELECT floor(yy / 400.0)::bigint AS era) AS b,
         LATERAL (SELECT yy - era * 400 AS yoe) AS c,
         LATERAL (SELECT (153 * (CASE WHEN m > 2 THEN m - 3 ELSE m + 9 END) + 2) / 5 + d - 1 AS doy) AS e,
         LATERAL (SELECT yoe * 365 + yoe / 4 - yoe / 100 + doy AS doe) AS f
$f$""",
    # uuid/timeuuid rearranged as UUIDType/TimeUUIDType order them (used by cass_order_key)
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_order_bytes(b bytea, kind text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $f$
DECLARE
    h text := encode(b, 'hex');
    hi bytea;
    lo bytea := substring(b FROM 9);
BEGIN
    IF kind NOT IN ('uuid', 'timeuuid') THEN
        RETURN b;
    END IF;
    IF substr(h, 13, 1) = '1' THEN
        hi := decode(substr(h, 13, 4) || substr(h, 9, 4) || substr(h, 1, 8), 'hex');
    ELSE
        hi := decode(substr(h, 13, 1) || substr(h, 1, 12) || substr(h, 14, 3), 'hex');
    END IF;
    IF kind = 'timeuuid' THEN
        FOR i IN 0..7 LOOP
            lo := set_byte(lo, i, get_byte(lo, i) # 128);
        END LOOP;
    END IF;
    RETURN hi || lo;
END
$f$""",
    # Cassandra's order of serialized values of the CQL type ``t`` as bytes PostgreSQL can
    # compare (bytea order = Cassandra's comparator; engine.cassandra_bytes.order_bytes has
    # the same encoding and says why each part is what it is)
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_order_key(b bytea, t jsonb) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $f$
DECLARE
    k text := t ->> 'k';
    out bytea := '\x';
    at int := 4;
    cnt int;
    len int;
    item bytea;
    kept int := 0;
    scale numeric;
    unscaled numeric;
    digits text;
    e numeric;
BEGIN
    IF k IN ('tinyint', 'smallint', 'int', 'bigint', 'counter', 'timestamp', 'time') THEN
        RETURN set_byte(b, 0, get_byte(b, 0) # 128);
    ELSIF k = 'varint' THEN
        RETURN CASE WHEN get_byte(b, 0) < 128 THEN _c2pg.cass_be(2147483648 + length(b), 4)
                    ELSE _c2pg.cass_be(2147483647 - length(b), 4) END || b;
    ELSIF k = 'decimal' THEN
        scale := _c2pg.cass_signed(substring(b FROM 1 FOR 4));
        unscaled := _c2pg.cass_signed(substring(b FROM 5));
        IF unscaled = 0 THEN
            RETURN '\x01'::bytea;
        END IF;
        digits := abs(unscaled)::text;
        e := length(digits) - scale;
        digits := rtrim(digits, '0');
        out := decode(repeat('00', length(digits)), 'hex');
        FOR i IN 1..length(digits) LOOP
            out := set_byte(out, i - 1, CASE WHEN unscaled > 0 THEN substr(digits, i, 1)::int + 1
                                             ELSE 254 - substr(digits, i, 1)::int END);
        END LOOP;
        IF unscaled > 0 THEN
            RETURN '\x02'::bytea || _c2pg.cass_be(e + 9223372036854775808, 8) || out || '\x00'::bytea;
        END IF;
        RETURN '\x00'::bytea || _c2pg.cass_be(9223372036854775808 - e, 8) || out || '\xff'::bytea;
    ELSIF k IN ('float', 'double') THEN
        IF get_byte(b, 0) >= 128 THEN
            FOR i IN 0..length(b) - 1 LOOP
                b := set_byte(b, i, get_byte(b, i) # 255);
            END LOOP;
            RETURN b;
        END IF;
        RETURN set_byte(b, 0, get_byte(b, 0) | 128);
    ELSIF k IN ('uuid', 'timeuuid') THEN
        RETURN _c2pg.cass_order_bytes(b, k);
    ELSIF k IN ('boolean', 'date') THEN
        RETURN b;
    ELSIF k IN ('text', 'ascii', 'blob', 'inet') THEN
        IF position('\x00'::bytea IN b) = 0 THEN
            RETURN b || '\x0000'::bytea;
        END IF;
        FOR i IN 0..length(b) - 1 LOOP
            out := out || CASE WHEN get_byte(b, i) = 0 THEN '\x00ff'::bytea ELSE substring(b FROM i + 1 FOR 1) END;
        END LOOP;
        RETURN out || '\x0000'::bytea;
    ELSIF k IN ('list', 'set', 'map') THEN
        cnt := _c2pg.cass_signed(substring(b FROM 1 FOR 4))::int;
        FOR i IN 0..cnt * (CASE WHEN k = 'map' THEN 2 ELSE 1 END) - 1 LOOP
            len := _c2pg.cass_signed(substring(b FROM at + 1 FOR 4))::int;
            item := CASE WHEN len < 0 THEN '\x'::bytea ELSE substring(b FROM at + 5 FOR len) END;
            at := at + 4 + greatest(len, 0);
            out := out || CASE WHEN k <> 'map' OR i % 2 = 0 THEN '\x01'::bytea ELSE '\x'::bytea END
                       || _c2pg.cass_order_key(item, t -> 'p' -> (CASE WHEN k = 'map' THEN i % 2 ELSE 0 END));
        END LOOP;
        RETURN out || '\x00'::bytea;
    ELSIF k IN ('tuple', 'udt') THEN
        at := 0;
        FOR i IN 0..jsonb_array_length(t -> 'p') - 1 LOOP
            EXIT WHEN at >= length(b);
            len := _c2pg.cass_signed(substring(b FROM at + 1 FOR 4))::int;
            IF len < 0 THEN
                out := out || '\x01'::bytea;
            ELSE
                out := out || '\x02'::bytea || _c2pg.cass_order_key(substring(b FROM at + 5 FOR len), t -> 'p' -> i);
                kept := length(out);  -- trailing nulls are dropped: they equal absent fields
            END IF;
            at := at + 4 + greatest(len, 0);
        END LOOP;
        RETURN substring(out FROM 1 FOR kept) || '\x00'::bytea;
    END IF;
    RAISE EXCEPTION 'c2pg: CQL type % has no order', t;
END
$f$""",
    # a value held in jsonb (c2pg's canonical JSON) of the CQL type described by ``t``
    r"""CREATE OR REPLACE FUNCTION _c2pg.cass_json(v jsonb, t jsonb) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
DECLARE
    k text := t ->> 'k';
    s text;
    m text[];
    et jsonb;
    out bytea := '\x';
    n int;
    ek text;
    fixed boolean;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    s := v #>> '{}';
    CASE k
    WHEN 'int' THEN RETURN int4send(s::numeric::int);
    WHEN 'bigint', 'counter' THEN RETURN int8send(s::numeric::bigint);
    WHEN 'smallint' THEN RETURN int2send(s::numeric::smallint);
    WHEN 'tinyint' THEN RETURN substring(int2send(s::numeric::smallint) FROM 2);
    WHEN 'varint' THEN RETURN _c2pg.cass_varint(s::numeric);
    WHEN 'decimal' THEN RETURN _c2pg.cass_decimal(s::numeric);
    WHEN 'float' THEN RETURN float4send(s::real);
    WHEN 'double' THEN RETURN float8send(s::float8);
    WHEN 'boolean' THEN RETURN boolsend(s::boolean);
    WHEN 'text', 'ascii' THEN RETURN convert_to(s, 'UTF8');
    WHEN 'blob' THEN RETURN decode(substr(s, 3), 'hex');
    WHEN 'uuid', 'timeuuid' THEN RETURN uuid_send(s::uuid);
    WHEN 'inet' THEN RETURN substring(inet_send(s::inet) FROM 5);
    WHEN 'timestamp' THEN
        m := regexp_match(s, '^([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$');
        RETURN int8send(floor(((((_c2pg.cass_days(m[1]::bigint, m[2]::int, m[3]::int) * 24 + m[4]::int) * 60
                        + m[5]::int) * 60 + m[6]::int) * 1000000::numeric
                        + rpad(left(coalesce(m[7], '0'), 6), 6, '0')::int) / 1000)::bigint);
    WHEN 'date' THEN
        m := regexp_match(s, '^([+-]?\d{4,})-(\d\d)-(\d\d)$');
        RETURN _c2pg.cass_date(_c2pg.cass_days(m[1]::bigint, m[2]::int, m[3]::int));
    WHEN 'time' THEN
        m := regexp_match(s, '^(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?$');
        RETURN int8send(((m[1]::bigint * 60 + m[2]::int) * 60 + m[3]::int) * 1000000000
                        + rpad(coalesce(m[4], '0'), 9, '0')::bigint);
    WHEN 'duration' THEN
        m := regexp_match(s, '^P(?:(-?\d+)M)?(?:(-?\d+)D)?'
                             '(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?)(\d+)(?:\.(\d{1,9}))?S)?)?$');
        RETURN _c2pg.cass_duration(coalesce(m[1], '0')::numeric, coalesce(m[2], '0')::numeric,
            (coalesce(m[3], '0')::numeric * 60 + coalesce(m[4], '0')::numeric) * 60000000000
            + CASE WHEN m[5] = '-' THEN -1 ELSE 1 END
              * (coalesce(m[6], '0')::numeric * 1000000000 + rpad(coalesce(m[7], '0'), 9, '0')::numeric));
    WHEN 'list', 'set', 'vector' THEN
        et := t -> 'p' -> 0;
        ek := et ->> 'k';
        fixed := ek IN ('int', 'bigint', 'counter', 'float', 'double', 'boolean', 'uuid', 'timeuuid', 'timestamp');
        SELECT count(*)::int,
               coalesce(string_agg(CASE WHEN k = 'vector' AND fixed THEN b
                                        WHEN k = 'vector' THEN _c2pg.cass_uvint(length(b)) || b
                                        WHEN b IS NULL THEN '\xffffffff'::bytea
                                        ELSE int4send(length(b)) || b END, '\x'::bytea
                                   ORDER BY CASE WHEN k = 'set' THEN b IS NOT NULL END,
                                            CASE WHEN k = 'set' THEN _c2pg.cass_order_key(b, et) END, o),
                        '\x'::bytea)
          INTO n, out
          FROM jsonb_array_elements(v) WITH ORDINALITY AS a(e, o),
               LATERAL (SELECT _c2pg.cass_json(a.e, et) AS b) AS x;
        RETURN CASE WHEN k = 'vector' THEN out ELSE int4send(n) || out END;
    WHEN 'map' THEN
        et := t -> 'p' -> 0;
        ek := et ->> 'k';
        SELECT count(*)::int,
               coalesce(string_agg(int4send(length(kb)) || kb
                                   || coalesce(int4send(length(vb)) || vb, '\xffffffff'::bytea),
                                   '\x'::bytea ORDER BY _c2pg.cass_order_key(kb, et)),
                        '\x'::bytea)
          INTO n, out
          FROM jsonb_each(v) AS a(key, value),
               LATERAL (SELECT _c2pg.cass_json(CASE WHEN et ? 'p' THEN a.key::jsonb ELSE to_jsonb(a.key) END, et) AS kb,
                               _c2pg.cass_json(a.value, t -> 'p' -> 1) AS vb) AS x;
        RETURN int4send(n) || out;
    WHEN 'tuple' THEN
        SELECT coalesce(string_agg(coalesce(int4send(length(b)) || b, '\xffffffff'::bytea), '\x'::bytea ORDER BY o),
                        '\x'::bytea)
          INTO out
          FROM jsonb_array_elements(t -> 'p') WITH ORDINALITY AS p(pt, o),
               LATERAL (SELECT _c2pg.cass_json(v -> (o::int - 1), p.pt) AS b) AS x;
        RETURN out;
    WHEN 'udt' THEN
        SELECT coalesce(string_agg(coalesce(int4send(length(b)) || b, '\xffffffff'::bytea), '\x'::bytea ORDER BY o),
                        '\x'::bytea)
          INTO out
          FROM jsonb_array_elements(t -> 'p') WITH ORDINALITY AS p(pt, o),
               LATERAL (SELECT _c2pg.cass_json(v -> (t -> 'f' ->> (o::int - 1)), p.pt) AS b) AS x;
        RETURN out;
    ELSE
        RAISE EXCEPTION 'c2pg: no Cassandra serialization for CQL type %', t;
    END CASE;
END
$f$""",
]


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
    # Collections (UDTs) whose elements (fields) expire one by one: when to read each again
    # (engine.recheck). ``key`` is the row's primary key as canonical COPY text, ``wt`` the
    # cell's write time when it was registered (a newer write makes the entry stale).
    """CREATE TABLE IF NOT EXISTS _c2pg.rechecks (
        target_schema text NOT NULL,
        target_table text NOT NULL,
        key text[] NOT NULL,
        col text NOT NULL,
        at_us bigint NOT NULL,
        wt bigint NOT NULL,
        PRIMARY KEY (target_schema, target_table, key, col))""",
    "CREATE INDEX IF NOT EXISTS rechecks_due ON _c2pg.rechecks (target_schema, target_table, at_us)",
    # The capture heartbeat (engine.capture): one row per pipeline and Cassandra node.
    """CREATE TABLE IF NOT EXISTS _c2pg.capture (
        pipeline text NOT NULL,
        node text NOT NULL,
        address text,
        since timestamptz,
        written_us bigint,
        written_at timestamptz,
        write_error text,
        seen_us bigint,
        seen_at timestamptz,
        PRIMARY KEY (pipeline, node))""",
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
    *_TIE_RULE_FUNCTIONS,
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
    return [c.name for c in schema.columns] + [META_TOKEN, META_WT, META_EXP, META_ROW_TS, META_ROW_EXP]


def create_target(schema: TableSchema, target_schema: str, target_table: str,
                  *, with_token_index: bool = True) -> list[sql.Composed]:
    """The target table (and its schema) with Cassandra's primary key and c2pg's metadata.
    With static columns the clustering columns may be NULL (a partition's static row) and the
    key is ``UNIQUE NULLS NOT DISTINCT`` (:func:`table_key`)."""
    not_null = schema.partition_key if schema.has_statics else schema.primary_key
    defs = [sql.SQL("{} {}{}").format(ident(c.name), sql.SQL(c.pg_sql_type),
                                      sql.SQL(" NOT NULL") if c in not_null else sql.SQL(""))
            for c in schema.columns]
    defs += [sql.SQL("{} bigint NOT NULL").format(ident(META_TOKEN)),
             sql.SQL("{} bigint[] NOT NULL").format(ident(META_WT)),
             sql.SQL("{} bigint[]").format(ident(META_EXP)),
             sql.SQL("{} bigint").format(ident(META_ROW_TS)),
             sql.SQL("{} bigint").format(ident(META_ROW_EXP))]
    defs.append(table_key(schema))
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
    types = [c.cql_type for c in schema.clustering]

    def after(prefix: str, k: int, forward: bool) -> sql.Composed:
        """Row before/after the bound's first ``k`` values in clustering order (a DESC column
        reverses its values' order), strictly; lexicographic over the prefix."""
        alts = []
        for j in range(k):
            equal = [sql.SQL("{r}.{c} = {d}.{b}").format(r=r, c=ident(cks[i]), d=d, b=ident(prefix + cks[i]))
                     for i in range(j)]
            op = ">" if forward != desc[j] else "<"
            step = sql.SQL("{rk} {op} {dk}").format(
                rk=clustering_order_key(sql.SQL("{}.{}").format(r, ident(cks[j])), types[j]), op=sql.SQL(op),
                dk=clustering_order_key(sql.SQL("{}.{}").format(d, ident(prefix + cks[j])), types[j]))
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


# Clustering types whose PostgreSQL order (of the mapped type) is Cassandra's: numbers by value
# (a decimal's 1.0 equals 1.00 in both), timestamp/date/time by value, false before true,
# bytea by unsigned bytes with a proper prefix first.
_NATIVE_ORDER = frozenset({"tinyint", "smallint", "int", "bigint", "counter", "varint", "decimal",
                           "timestamp", "date", "time", "boolean", "blob"})


def clustering_order_key(value: sql.Composable, t: CqlType) -> sql.Composable:
    """An expression PostgreSQL orders the way Cassandra orders a clustering column of
    CQL type ``t`` (the order ``engine.sync.reduce.typed_compare`` uses within one batch):

    - numbers, timestamp, date, time, boolean and blob by PostgreSQL's own order;
    - text/ascii by UTF-8 bytes, whatever the column's or database's collation
      (``COLLATE "C"``; an ICU or ``en_US`` collation would put ``a`` before ``B``);
    - inet by its address bytes, unsigned (``inet_send`` past its 4-byte header):
      PostgreSQL orders every IPv4 address before every IPv6 one, Cassandra by bytes;
    - everything else — float/double (``-0.0`` before ``0.0``), uuid (version first),
      timeuuid (time, then signed bytes), frozen collections, tuples and UDTs (element by
      element) — by ``_c2pg.cass_order_key`` of the value's Cassandra bytes.
    """
    if t.kind in _NATIVE_ORDER:
        return value
    if t.kind == "inet":
        return sql.SQL("substring(inet_send({}) FROM 5)").format(value)
    if t.kind in ("text", "ascii"):
        return sql.SQL('({} COLLATE "C")').format(value)
    return sql.SQL("_c2pg.cass_order_key({}, {}::jsonb)").format(
        cassandra_bytes(value, t), sql.Literal(json.dumps(_type_description(t))))


def cell_killed(schema: TableSchema, row: str, tomb: str, column: str) -> sql.Composed:
    """SQL: is ``tomb`` a deletion of ``column`` of the row ``row`` (kind ``cell``)?"""
    r, d = sql.Identifier(row), sql.Identifier(tomb)
    same = sql.SQL(" AND ").join(sql.SQL("{d}.{c} = {r}.{c}").format(d=d, r=r, c=ident(c.name))
                                 for c in schema.primary_key)
    return sql.SQL("({d}._c2pg_kind = 'cell' AND {d}._c2pg_column = {col} AND {same})").format(
        d=d, col=sql.Literal(column), same=same)


def table_key(schema: TableSchema) -> sql.Composed:
    """The target's key constraint: Cassandra's primary key; with static columns a unique
    key under which NULL clustering values are equal (PostgreSQL 15), so a partition has at
    most one static row and ``ON CONFLICT`` finds it (ADR 0007)."""
    cols = _cols(c.name for c in schema.primary_key)
    if schema.has_statics:
        return sql.SQL("UNIQUE NULLS NOT DISTINCT ({})").format(cols)
    return sql.SQL("PRIMARY KEY ({})").format(cols)


def primary_key_constraint(target_schema: str, target_table: str) -> tuple[sql.Composable, tuple]:
    """The name of the table's primary-key constraint (no row: it has none)."""
    return (sql.SQL("SELECT con.conname FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND con.contype = 'p'"), (target_schema, target_table))


def allow_static_rows(schema: TableSchema, target_schema: str, target_table: str, pkey: str) -> sql.Composed:
    """Turn a target created with a primary key into the static-row layout (ADR 0007): the
    clustering columns become nullable and the key ``UNIQUE NULLS NOT DISTINCT``. One
    statement; PostgreSQL builds the new unique index while it holds the table."""
    parts = [sql.SQL("DROP CONSTRAINT {}").format(ident(pkey))]
    parts += [sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(ident(c.name)) for c in schema.clustering]
    parts.append(sql.SQL("ADD ") + table_key(schema))
    return sql.SQL("ALTER TABLE {} {}").format(ident(target_schema, target_table), sql.SQL(", ").join(parts))


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


# The clock the merge judges expiries by, in µs: the instant the sync writer set for its
# transaction (``set_config('c2pg.now_us', …, true)``, :data:`SET_MERGE_NOW`: the same
# instant the batch was reduced at, so reducer and merge agree on which cells are dead), or
# else PostgreSQL's statement time (snapshot's and repair's merges). ``NULLIF``: once set in
# a session, an unset transaction-local setting reads as '' rather than NULL.
NOW_SETTING = "c2pg.now_us"
KILLS = "_c2pg_kills"  # the merge's per-batch deletions of the staged rows (temporary)

# For the merge's gathering of the staged rows' deletions (a just-filled stage of a few
# thousand rows, never analyzed, joined with a tombstone table that only grows): with hash
# and merge joins allowed PostgreSQL read the whole tombstone table into a hash for every
# batch (385 ms per 5,000 staged rows against 405k tombstones, against 45 ms probing its
# primary-key index once per staged row), so a batch's cost grew with the table. Off for
# that one statement, restored right after (SET LOCAL: also gone at the transaction's end).
# Sequential scans stay allowed: disabling them makes every plan's cost huge, and the JIT
# compiler (jit_above_cost) then spends ~150 ms compiling it.
INDEX_PLANS_ON = sql.SQL("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; ")
INDEX_PLANS_OFF = sql.SQL("; SET LOCAL enable_hashjoin = DEFAULT; SET LOCAL enable_mergejoin = DEFAULT")


def by_key_index(statement: sql.Composable) -> sql.Composed:
    """``statement`` (the writer's removal of emptied rows) run so that it finds the batch's
    keys in the target through the primary-key index, never by reading the whole target:
    with the default costs PostgreSQL scanned the target filtered by emptiness for every
    batch (8 ms at 18k rows, growing with the table). Sequential scans are discouraged for
    that statement and the JIT compiler is off for it (the discouraging cost would
    otherwise trigger ~150 ms of compilation); both restored right after. Several
    statements in one text, for ``cursor.execute``; nothing to fetch."""
    return sql.Composed([sql.SQL("SET LOCAL jit = off; SET LOCAL enable_seqscan = off; "), statement,
                         sql.SQL("; SET LOCAL enable_seqscan = DEFAULT; SET LOCAL jit = DEFAULT")])
MERGE_NOW_US = sql.SQL(
    "COALESCE(NULLIF(current_setting({setting}, true), '')::bigint, "
    "(extract(epoch FROM statement_timestamp()) * 1000000)::bigint)").format(setting=sql.Literal(NOW_SETTING))
SET_MERGE_NOW = sql.SQL("SELECT set_config({}, %s, true)").format(sql.Literal(NOW_SETTING))
# The same clock as an uncorrelated scalar subquery: PostgreSQL computes it once per statement
# (an InitPlan) instead of once per cell — the merge judges every staged cell's expiry by it.
MERGE_NOW = sql.SQL("(SELECT {})").format(MERGE_NOW_US)

# The sync writer's per-table apply lock (engine.pg_writer): two int4 keys, a lock space apart
# from ensure_target's one-key lock. Held to the end of the batch's transaction.
APPLY_LOCK = "SELECT pg_advisory_xact_lock(hashtext('c2pg.apply'), hashtext(%s))"
APPLY_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtext('c2pg.apply'), hashtext(%s))"


def merge(schema: TableSchema, target_schema: str, target_table: str, tomb_table: str, *,
          source_wins_ties: bool = False, collect_empty: bool = False) -> sql.Composed:
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

    ``collect_empty`` (the sync writer, tables without static columns): the keys of the rows
    this statement inserted or changed that are left with no live cell and no live marker
    go into :data:`EMPTY` (:func:`create_empty_keys`), for :func:`remove_empty_rows` — the
    only rows of the batch that can have become empty, found without probing the others.

    A staged cell **dead on arrival** — its ``_c2pg_exp`` at or before the merge's clock
    (:data:`MERGE_NOW_US`) — is applied as a deletion at its write time, never as a live
    value (Cassandra reads an expired cell as a tombstone of the same timestamp): its value
    becomes NULL and it keeps ``_c2pg_wt``, so it shadows older stored cells, loses to newer
    ones and, at an equal time, beats a live one (:func:`_wins`). It also keeps its
    ``_c2pg_exp``: the TTL sweep (:func:`expire_cells`) then clears it and removes the row if
    nothing else keeps it alive — the sync writer removes such rows in the same transaction
    already (:func:`remove_empty_rows`), snapshot's merge has no such step. Sync's reducer has
    turned the cells dead at the same instant into deletions before staging, so this
    matters for cells the reducer saw live, for snapshot and for repair.
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
        if col.kind == "static":
            # A static cell belongs to the partition: only a partition deletion covers it
            # (Cassandra's row and range deletions leave statics), and it has no cell tombstones.
            alive = sql.SQL("(k.pkill_ts IS NULL OR {wt} > k.pkill_ts)").format(wt=at(s, META_WT, i))
        else:
            ckill = sql.Identifier(f"kill_{i}")
            alive = sql.SQL("(({kill} IS NULL OR {wt} > {kill}) AND (k.{ck} IS NULL OR {wt} > k.{ck}))").format(
                kill=kill, wt=at(s, META_WT, i), ck=ckill)
        # Dead on arrival (expired at the merge's clock): a deletion at its write time.
        live = sql.SQL("({alive} AND NOT COALESCE({e} <= {now}, false))").format(
            alive=alive, e=at(s, META_EXP, i), now=MERGE_NOW)
        select_cols.append(sql.SQL("CASE WHEN {live} THEN {s}.{c} END").format(
            live=live, s=s, c=ident(col.name)))
        wt_items.append(sql.SQL("CASE WHEN {alive} THEN {wt} END").format(alive=alive, wt=at(s, META_WT, i)))
        exp_items.append(sql.SQL("CASE WHEN {alive} THEN {e} END").format(alive=alive, e=at(s, META_EXP, i)))
    select_cols.append(sql.SQL("{}.{}").format(s, ident(META_TOKEN)))
    select_cols.append(sql.SQL("ARRAY[{}]::bigint[]").format(sql.SQL(", ").join(wt_items))
                       if n else sql.SQL("'{}'::bigint[]"))
    select_cols.append(sql.SQL("ARRAY[{}]::bigint[]").format(sql.SQL(", ").join(exp_items))
                       if n else sql.SQL("NULL::bigint[]"))
    # The row marker survives the row's deletions and its own tombstone (``kill_m``: a dead
    # marker the sweep or the writer recorded when it removed or cleared it). At the dead
    # marker's own time a live marker with a TTL still wins (its expiry is later:
    # LivenessInfo.supersedes); one without a TTL loses.
    marker_alive = sql.SQL(
        "(({kill} IS NULL OR {s}.{rt} > {kill}) AND (k.kill_m IS NULL OR {s}.{rt} > k.kill_m "
        "OR ({s}.{rt} = k.kill_m AND {s}.{re} > {now})))"
    ).format(kill=kill, s=s, rt=ident(META_ROW_TS), re=ident(META_ROW_EXP), now=MERGE_NOW)
    select_cols.append(sql.SQL("CASE WHEN {a} THEN {s}.{rt} END").format(a=marker_alive, s=s, rt=ident(META_ROW_TS)))
    select_cols.append(sql.SQL("CASE WHEN {a} THEN {s}.{re} END").format(a=marker_alive, s=s, re=ident(META_ROW_EXP)))

    sets, wins_any, new_wt, new_exp = [], [], [], []
    for i, col in enumerate(schema.regular, start=1):
        wins = _wins(x, t, col, i, source_wins_ties)
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
    marker_wins = marker_supersedes(x, t)
    for meta in (META_ROW_TS, META_ROW_EXP):
        sets.append(sql.SQL("{m} = CASE WHEN {w} THEN {x}.{m} ELSE {t}.{m} END").format(
            m=ident(meta), w=marker_wins, x=x, t=t))
    wins_any.append(marker_wins)

    cell_kills: list[sql.Composable] = [sql.SQL("max(d._c2pg_deleted_at) FILTER (WHERE {}) AS {}").format(
        cell_killed(schema, "s", "d", col.name), sql.Identifier(f"kill_{i}"))
        for i, col in enumerate(schema.regular, start=1) if col.kind != "static"]
    if any(col.kind == "static" for col in schema.regular):
        cell_kills.append(sql.SQL("max(d._c2pg_deleted_at) FILTER (WHERE d._c2pg_kind = 'partition') AS pkill_ts"))
    cell_kills.append(sql.SQL("max(d._c2pg_deleted_at) FILTER (WHERE {}) AS kill_m").format(
        cell_killed(schema, "s", "d", META_ROW_TS)))
    same_partition = sql.SQL(" AND ").join(sql.SQL("d.{c} = s.{c}").format(c=ident(c.name))
                                           for c in schema.partition_key)
    # The deletions are gathered first, only for the staged rows whose partition has any,
    # into a small temporary table: an inner join that probes the tombstone table's index
    # once per staged row (hash and merge joins are off for that statement alone: the
    # planner knows nothing of the just-filled stage and would read the whole tombstone
    # table, which only grows, for every batch), aggregated over the few it finds; then
    # hash-joined back by the staged row's ctid (a static row's clustering values are NULL,
    # which an equality join would miss). A LATERAL aggregate per staged row did the same
    # with one aggregate node per row: most of the merge's time.
    upsert = sql.SQL(
        "INSERT INTO {target} AS t ({cols}) "
        "SELECT {select} FROM {stage} AS s LEFT JOIN {kills} AS k ON k.sid = s.ctid "
        "ON CONFLICT ({pk}) DO UPDATE SET {sets} WHERE {any_wins}"
    ).format(target=target, cols=_cols(target_columns(schema)), select=sql.SQL(", ").join(select_cols),
             stage=ident(STAGE), kills=ident(KILLS), pk=_cols(pk), sets=sql.SQL(", ").join(sets),
             any_wins=sql.SQL(" OR ").join(wins_any))
    if collect_empty:
        upsert = _collect_empty(schema, upsert)
    return sql.SQL(
        "{on}CREATE TEMP TABLE {kills} ON COMMIT DROP AS "
        "SELECT s.ctid AS sid, max(d._c2pg_deleted_at) FILTER (WHERE {covers}) AS kill_ts{cell_kills} "
        "FROM {stage} AS s JOIN {tomb} AS d ON {same_partition} GROUP BY s.ctid{off}; "
        "{upsert}; "
        "DROP TABLE {kills}"
    ).format(upsert=upsert, stage=ident(STAGE), tomb=ident(STATE_SCHEMA, tomb_table), covers=covers(schema, "s", "d"),
             cell_kills=sql.SQL("").join(sql.SQL(", ") + c for c in cell_kills), same_partition=same_partition,
             kills=ident(KILLS), on=INDEX_PLANS_ON, off=INDEX_PLANS_OFF)


def marker_supersedes(x: sql.Composable, t: sql.Composable) -> sql.Composed:
    """Does the staged row marker (``x``) replace the stored one (``t``)? Cassandra's
    ``LivenessInfo.supersedes`` (``org.apache.cassandra.db.LivenessInfo``): the newer write
    time wins; at an equal time a marker with a TTL beats one without, and of two with a TTL
    the later expiry (whole seconds, Cassandra's ``localExpirationTime``) wins. A marker past
    its expiry is still compared this way — Cassandra keeps it until compaction purges it,
    and it shadows older markers meanwhile."""
    xt, tt = (sql.SQL("{}.{}").format(a, ident(META_ROW_TS)) for a in (x, t))
    xe, te = (sql.SQL("{}.{}").format(a, ident(META_ROW_EXP)) for a in (x, t))
    return sql.SQL(
        "({xt} IS NOT NULL AND ({tt} IS NULL OR {xt} > {tt} OR ({xt} = {tt} AND {xe} IS NOT NULL "
        "AND ({te} IS NULL OR {xe} / 1000000 > {te} / 1000000))))").format(xt=xt, tt=tt, xe=xe, te=te)


def marker_dead(t: sql.Composable, now: sql.Composable) -> sql.Composed:
    """SQL: the stored row ``t`` has no live row marker at ``now`` (none, or past its expiry)."""
    return sql.SQL("({t}.{rt} IS NULL OR COALESCE({t}.{re} <= {now}, false))").format(
        t=t, rt=ident(META_ROW_TS), re=ident(META_ROW_EXP), now=now)


EMPTY = "_c2pg_empty"  # the keys of the rows a sync batch left empty (temporary, per batch)


def create_empty_keys(schema: TableSchema, target_schema: str, target_table: str) -> sql.Composed:
    """The sync writer's per-batch table of emptied keys (:data:`EMPTY`), filled by the
    merge and the shadowing (``collect_empty``) and read by :func:`remove_empty_rows`."""
    return sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
        ident(EMPTY), _cols(c.name for c in schema.primary_key), ident(target_schema, target_table))


def row_empty(schema: TableSchema, alias: str) -> sql.Composable:
    """SQL: the row ``alias`` has no live cell and no live row marker at the merge's clock
    (:data:`MERGE_NOW`) — Cassandra has no such row. A static cell does not keep a
    clustering row alive (a row exists by its marker or a live regular cell); a partition's
    static row (ADR 0007) is empty when every static cell is."""
    a = sql.Identifier(alias)
    cells: list[sql.Composable] = [sql.SQL("{}.{} IS NULL").format(a, ident(c.name)) for c in schema.regular
                                   if not c.dropped and (c.kind != "static" or not schema.clustering)]
    cells.append(marker_dead(a, MERGE_NOW))
    return _row_or_static_row_empty(schema, alias, sql.SQL(" AND ").join(cells),
                                    [sql.SQL("{}.{} IS NULL").format(a, ident(c.name)) for c in schema.regular
                                     if c.kind == "static" and not c.dropped])


def _collect_empty(schema: TableSchema, statement: sql.Composable) -> sql.Composed:
    """``statement`` (an INSERT or UPDATE of the target aliased ``t``) made to record the
    keys of the rows it leaves empty in :data:`EMPTY` (its RETURNING sees the new rows)."""
    keys = _cols(c.name for c in schema.primary_key)
    t_keys = sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c.name)) for c in schema.primary_key)
    return sql.SQL(
        "WITH changed AS ({statement} RETURNING {t_keys}, {empty} AS _c2pg_is_empty) "
        "INSERT INTO {table} ({keys}) SELECT {keys} FROM changed WHERE _c2pg_is_empty"
    ).format(statement=statement, t_keys=t_keys, empty=row_empty(schema, "t"), table=ident(EMPTY), keys=keys)


def _wins(x: sql.Composable, t: sql.Composable, col: Column, i: int, source_wins_ties: bool = False) -> sql.Composed:
    """Does the staged cell (``EXCLUDED``) beat the stored one (``t``) at position ``i``?

    Cassandra's rule (``org.apache.cassandra.db.rows.Cells.resolveRegular``, the same as
    :func:`engine.sync.reduce.wins` inside a batch): the newer write time wins; at an equal time
    a deletion (NULL value) beats a live value, a value with a TTL (``_c2pg_exp``) beats one
    without, of two with a TTL the later expiry (in whole seconds) wins, and then the
    greater serialized value, compared as unsigned bytes (``bytea`` order) — Cassandra's
    bytes of the stored value, computed by :func:`cassandra_bytes` from the column's CQL
    type. The ``CASE`` computes them only for two live values of the same time and expiry.
    A stored value whose ``_c2pg_exp`` has passed (:data:`MERGE_NOW_US`; not swept yet) is a
    deletion at its write time, as the sweep will make it: at an equal time a live staged
    value does not beat it, whatever its expiry. (A staged value dead on arrival was made
    NULL by :func:`merge` already.) With ``source_wins_ties`` (repair) the staged cell wins
    any tie.
    """
    xw = sql.SQL("{}.{}[{}]").format(x, ident(META_WT), sql.Literal(i))
    tw = sql.SQL("{}.{}[{}]").format(t, ident(META_WT), sql.Literal(i))
    if source_wins_ties:
        return sql.SQL("({xw} IS NOT NULL AND ({tw} IS NULL OR {xw} >= {tw}))").format(xw=xw, tw=tw)
    xe = sql.SQL("{}.{}[{}]").format(x, ident(META_EXP), sql.Literal(i))
    te = sql.SQL("{}.{}[{}]").format(t, ident(META_EXP), sql.Literal(i))
    xv = sql.SQL("{}.{}").format(x, ident(col.name))
    tv = sql.SQL("{}.{}").format(t, ident(col.name))
    live_tie = sql.SQL(
        "CASE WHEN ({xe} IS NULL) <> ({te} IS NULL) THEN {xe} IS NOT NULL "
        "WHEN {xe} / 1000000 <> {te} / 1000000 THEN {xe} / 1000000 > {te} / 1000000 "
        "ELSE {xb} > {tb} END"
    ).format(xe=xe, te=te, xb=cassandra_bytes(xv, col.cql_type), tb=cassandra_bytes(tv, col.cql_type))
    return sql.SQL(
        "({xw} IS NOT NULL AND ({tw} IS NULL OR {xw} > {tw} OR ({xw} = {tw} AND ("
        "({xv} IS NULL AND {tv} IS NOT NULL) OR "
        "({xv} IS NOT NULL AND {tv} IS NOT NULL AND NOT COALESCE({te} <= {now}, false) AND {live_tie})))))"
    ).format(xw=xw, tw=tw, xv=xv, tv=tv, te=te, now=MERGE_NOW, live_tie=live_tie)


# A stored value → Cassandra's serialized bytes (engine.cassandra_bytes computes the same in
# Python; docs/types.md, "Cassandra's tie rule", has the table). PostgreSQL's send functions
# already write Cassandra's big-endian forms for the fixed-width types.
_SCALAR_BYTES = {
    "int": "int4send({v})",
    "bigint": "int8send({v})",
    "counter": "int8send({v})",
    "smallint": "int2send({v})",
    "tinyint": "substring(int2send({v}) FROM 2)",  # stored as smallint: its low byte
    "varint": "_c2pg.cass_varint({v})",
    "decimal": "_c2pg.cass_decimal({v})",
    "float": "float4send({v})",
    "double": "float8send({v})",
    "boolean": "boolsend({v})",
    "text": "convert_to({v}, 'UTF8')",
    "ascii": "convert_to({v}, 'UTF8')",
    "blob": "{v}",
    "uuid": "uuid_send({v})",
    "timeuuid": "uuid_send({v})",
    "inet": "substring(inet_send({v}) FROM 5)",  # inet_send: family, bits, is_cidr, length, address
    "timestamp": "int8send(floor(EXTRACT(EPOCH FROM {v}) * 1000)::bigint)",  # epoch ms (numeric: exact)
    "date": "_c2pg.cass_date({v} - DATE '1970-01-01')",
    "time": "int8send((EXTRACT(EPOCH FROM {v}) * 1000000000)::bigint)",  # ns of the day
    "duration": "_c2pg.cass_interval({v})",
}


def cassandra_bytes(value: sql.Composable, t: CqlType, *, time_as: str = "time") -> sql.Composable:
    """SQL: Cassandra's serialized bytes (``bytea``) of ``value``, a stored value of CQL type
    ``t`` in its mapped PostgreSQL type (docs/types.md). Used by :func:`_wins` at ties.

    Scalars use the send functions (adjusted for ``tinyint``, ``date``, ``timestamp``,
    ``time``, ``inet``) or ``_c2pg`` functions (``varint``, ``decimal``, ``duration``);
    ``T[]`` columns (list/set/vector of a scalar) are packed here from their elements, a
    set in Cassandra's element order; ``jsonb`` columns (map, UDT, tuple, nested) go through
    ``_c2pg.cass_json`` with a description of the type.
    """
    pg = pg_type(t, time_as=time_as)  # type: ignore[arg-type]
    if t.is_scalar:
        return _scalar_bytes(value, t.kind, pg.sql)
    if pg.is_array:
        return _array_bytes(value, t, pg.sql[:-2])
    return sql.SQL("_c2pg.cass_json({}, {}::jsonb)").format(value, sql.Literal(json.dumps(_type_description(t))))


def _scalar_bytes(value: sql.Composable, kind: str, pg_sql: str) -> sql.Composable:
    if kind == "time" and pg_sql == "bigint":  # time_as='bigint': nanoseconds already
        return sql.SQL("int8send({})").format(value)
    return sql.SQL(_SCALAR_BYTES[kind]).format(v=value)


def _array_bytes(value: sql.Composable, t: CqlType, element_pg_sql: str) -> sql.Composable:
    """A list/set: int32 count, then each element as int32 length + bytes (-1: NULL), a set
    sorted as Cassandra sorts its elements; a vector: the elements alone when their size is
    fixed, else each after an unsigned-vint length."""
    kind = t.params[0].kind
    b = sql.SQL("_c2pg_b.b")
    if t.kind == "vector":
        head: sql.Composable = sql.SQL("''::bytea")
        item: sql.Composable = (b if kind in FIXED_SIZE_KINDS
                                else sql.SQL("_c2pg.cass_uvint(length({b})) || {b}").format(b=b))
    else:
        head = sql.SQL("int4send(count(*)::int)")
        item = sql.SQL("CASE WHEN {b} IS NULL THEN decode('ffffffff', 'hex') ELSE int4send(length({b})) || {b} END"
                       ).format(b=b)
    order: sql.Composable
    if t.kind == "set":
        order = sql.SQL("{b} IS NOT NULL, _c2pg.cass_order_key({b}, {t}::jsonb), _c2pg_e.n").format(
            b=b, t=sql.Literal(json.dumps(_type_description(t.params[0]))))
    else:
        order = sql.SQL("_c2pg_e.n")
    return sql.SQL(
        "(SELECT {head} || COALESCE(string_agg({item}, ''::bytea ORDER BY {order}), ''::bytea) "
        "FROM unnest({v}) WITH ORDINALITY AS _c2pg_e(e, n), LATERAL (SELECT {scalar} AS b) AS _c2pg_b)"
    ).format(head=head, item=item, order=order, v=value,
             scalar=_scalar_bytes(sql.SQL("_c2pg_e.e"), kind, element_pg_sql))


def _type_description(t: CqlType) -> dict:
    """``_c2pg.cass_json``'s description of a CQL type: kind, parameters, UDT field names."""
    d: dict = {"k": t.kind}
    if t.params:
        d["p"] = [_type_description(p) for p in t.params]
    if t.field_names:
        d["f"] = list(t.field_names)
    return d


# A cell's recheck (engine.recheck): a newer registration replaces an older one; one of an
# older write (a cell the merge rejected) never replaces the entry of the cell it lost to.
REGISTER_RECHECKS = sql.SQL(
    "INSERT INTO _c2pg.rechecks AS r (target_schema, target_table, key, col, at_us, wt) VALUES %s "
    "ON CONFLICT (target_schema, target_table, key, col) DO UPDATE SET at_us = EXCLUDED.at_us, wt = EXCLUDED.wt "
    "WHERE r.wt <= EXCLUDED.wt")


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


def shadow_rows(schema: TableSchema, target_schema: str, target_table: str, *,
                collect_empty: bool = False) -> sql.Composed:
    """Apply the batch's deletions to the rows already stored: a cell written at or before
    the newest covering deletion becomes NULL with that deletion's time; an older row marker
    goes. Rows the deletions do not cover are not touched. ``collect_empty``: record the
    keys of the rows left empty in :data:`EMPTY` (as :func:`merge` does)."""
    target = ident(target_schema, target_table)
    pk = [c.name for c in schema.primary_key]
    sets, wts, exps = [], [], []
    for i, col in enumerate(schema.regular, start=1):
        # A static cell is covered by partition deletions only (``k.pkill``); Cassandra's row
        # and range deletions leave a partition's statics.
        k = sql.SQL("k.pkill") if col.kind == "static" else sql.SQL("k.kill")
        # A value without a write time was not written by c2pg (a hand-made row that
        # reconcile deletes): any covering deletion kills it.
        dead = sql.SQL("(t.{wt}[{i}] <= {k} OR ({k} IS NOT NULL AND t.{wt}[{i}] IS NULL AND t.{c} IS NOT NULL))"
                       ).format(wt=ident(META_WT), i=sql.Literal(i), c=ident(col.name), k=k)
        sets.append(sql.SQL("{c} = CASE WHEN {dead} THEN NULL ELSE t.{c} END").format(c=ident(col.name), dead=dead))
        wts.append(sql.SQL("CASE WHEN {dead} THEN {k} ELSE t.{wt}[{i}] END").format(
            dead=dead, wt=ident(META_WT), i=sql.Literal(i), k=k))
        exps.append(sql.SQL("CASE WHEN {dead} THEN NULL ELSE t.{e}[{i}] END").format(
            dead=dead, e=ident(META_EXP), i=sql.Literal(i)))
    if schema.regular:
        sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_WT), sql.SQL(", ").join(wts)))
        sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_EXP), sql.SQL(", ").join(exps)))
    sets.append(sql.SQL("{rt} = CASE WHEN t.{rt} <= k.kill THEN NULL ELSE t.{rt} END").format(rt=ident(META_ROW_TS)))
    sets.append(sql.SQL("{re} = CASE WHEN t.{rt} <= k.kill THEN NULL ELSE t.{re} END").format(
        rt=ident(META_ROW_TS), re=ident(META_ROW_EXP)))
    key_cols = sql.SQL(", ").join(sql.SQL("r.{}").format(ident(c)) for c in pk)
    join_key = same_key(schema, "t", "k")
    update = sql.SQL(
        "UPDATE {target} AS t SET {sets} FROM ("
        "SELECT {key_cols}, max(d.{deleted}) AS kill, max(d.{deleted}) FILTER (WHERE d._c2pg_kind = 'partition') "
        "AS pkill FROM {target} AS r JOIN {tstage} AS d ON {covers} "
        "GROUP BY {key_cols}) AS k WHERE {join_key}"
    ).format(target=target, sets=sql.SQL(", ").join(sets), key_cols=key_cols, deleted=ident(T_DELETED_AT),
             tstage=ident(TSTAGE), covers=covers(schema, "r", "d"), join_key=join_key)
    return _collect_empty(schema, update) if collect_empty else update


def remove_empty_rows(schema: TableSchema, target_schema: str, target_table: str, tomb_table: str, *,
                      from_empty_keys: bool = False) -> sql.Composed:
    """Delete the rows of the touched partitions that have no live cell and no live row
    marker (:func:`row_empty`: Cassandra has no such row; a marker past its expiry at the
    merge's clock is dead), keeping their cell deletions as ``cell`` tombstones and a dead
    marker as a ``cell`` tombstone of the pseudo-column ``_c2pg_row_ts`` at its write time —
    so an older INSERT arriving later cannot bring the row back.

    The candidates: with ``from_empty_keys``, the keys the batch's merge and shadowing
    recorded as emptied (:data:`EMPTY`, tables without static columns); else every row of
    the partitions the batch staged or deleted in (a table with statics, whose static row
    settles with its partition, ADR 0007).

    A cell tombstone is not written when a row, partition or range deletion recorded for
    the row is at least as new (it already shadows that cell, and lives at least as long:
    the sweep purges by deletion time and arrival alike) — a row deletion would otherwise
    leave one tombstone per column beside its own, and every later batch touching the key
    would read them all."""
    target = ident(target_schema, target_table)
    pk = [c.name for c in schema.partition_key]
    keys = [c.name for c in schema.primary_key]
    part = sql.SQL(", ").join(map(ident, pk))
    gone_cols = sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in keys)
    if from_empty_keys:
        candidates = sql.SQL("({t_keys}) IN (SELECT {keys} FROM {empty})").format(
            t_keys=gone_cols, keys=_cols(keys), empty=ident(EMPTY))
    else:
        candidates = sql.SQL("({t_part}) IN (SELECT {part} FROM {stage} UNION SELECT {part} FROM {tstage})").format(
            t_part=sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in pk), part=part,
            stage=ident(STAGE), tstage=ident(TSTAGE))
    deleted = sql.SQL(
        "DELETE FROM {target} AS t WHERE {candidates} AND {empty} RETURNING {gone_cols}, t.{wt}, t.{rt}"
    ).format(target=target, candidates=candidates, empty=row_empty(schema, "t"),
             gone_cols=gone_cols, wt=ident(META_WT), rt=ident(META_ROW_TS))
    return sql.SQL(
        "WITH gone AS ({deleted}) INSERT INTO {tomb} ({key_cols}, {kind}, {column}, {at}) "
        "SELECT * FROM (SELECT {gone_keys}, 'cell', c.name, {time} AS at FROM gone AS g CROSS JOIN {columns}) AS x "
        "WHERE x.at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {tomb} AS d WHERE {covers} AND d.{at} >= x.at)"
    ).format(deleted=deleted, tomb=ident(STATE_SCHEMA, tomb_table), key_cols=_cols(keys), kind=ident(T_KIND),
             column=ident(T_COLUMN), at=ident(T_DELETED_AT),
             gone_keys=sql.SQL(", ").join(sql.SQL("g.{}").format(ident(c)) for c in keys),
             time=_tombstone_time(schema, "g"), columns=_tombstone_positions(schema), covers=covers(schema, "x", "d"))


def _row_or_static_row_empty(schema: TableSchema, alias: str, row_empty: sql.Composable,
                             statics_empty: list[sql.Composable]) -> sql.Composable:
    """Emptiness of a row, told apart from a partition's static row (ADR 0007): a
    clustering row is empty by ``row_empty``; the static row (clustering columns NULL) when
    every static cell is (``statics_empty``)."""
    if not schema.has_statics or not schema.clustering:
        return row_empty
    ck = sql.SQL("{}.{}").format(sql.Identifier(alias), ident(schema.clustering[0].name))
    return sql.SQL("(({ck} IS NULL AND {s}) OR ({ck} IS NOT NULL AND {r}))").format(
        ck=ck, s=sql.SQL(" AND ").join(statics_empty) if statics_empty else sql.SQL("true"), r=row_empty)


def same_key(schema: TableSchema, a: str, b: str) -> sql.Composed:
    """SQL: rows ``a`` and ``b`` have the same primary key. With static columns a clustering
    value may be NULL (a static row, ADR 0007), and two NULLs are the same key there, as
    under the table's ``UNIQUE NULLS NOT DISTINCT``; partition keys are never NULL."""
    x, y = sql.Identifier(a), sql.Identifier(b)
    parts = [sql.SQL("{x}.{c} = {y}.{c}").format(x=x, y=y, c=ident(c.name)) for c in schema.partition_key]
    for c in schema.clustering:
        if schema.has_statics:
            parts.append(sql.SQL("({x}.{c} = {y}.{c} OR ({x}.{c} IS NULL AND {y}.{c} IS NULL))").format(
                x=x, y=y, c=ident(c.name)))
        else:
            parts.append(sql.SQL("{x}.{c} = {y}.{c}").format(x=x, y=y, c=ident(c.name)))
    return sql.SQL(" AND ").join(parts)


def settle_static_rows(schema: TableSchema, target_schema: str, target_table: str,
                       sources: Sequence[str] = (STAGE,)) -> sql.Composed | None:
    """Delete the static row of each partition (of the tables ``sources``, staged keys) that
    also holds a clustering row: Cassandra returns a partition's statics on its rows, and a
    row with null clustering columns only when it has none (ADR 0007). None: the table has
    no static columns."""
    if not schema.has_statics or not schema.clustering:
        return None
    target = ident(target_schema, target_table)
    pk = [c.name for c in schema.partition_key]
    ck = ident(schema.clustering[0].name)
    part = sql.SQL(", ").join(map(ident, pk))
    staged = sql.SQL(" UNION ").join(sql.SQL("SELECT {} FROM {}").format(part, ident(s)) for s in sources)
    same = sql.SQL(" AND ").join(sql.SQL("r.{c} = t.{c}").format(c=ident(c)) for c in pk)
    return sql.SQL(
        "DELETE FROM {target} AS t WHERE t.{ck} IS NULL AND ({t_part}) IN ({staged}) "
        "AND EXISTS (SELECT 1 FROM {target} AS r WHERE {same} AND r.{ck} IS NOT NULL)"
    ).format(target=target, ck=ck, t_part=sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in pk),
             staged=staged, same=same)


def _tombstone_positions(schema: TableSchema) -> sql.Composed:
    """``(VALUES …) AS c(name, pos)``: the columns a removed row leaves ``cell`` tombstones
    for, with their position for :func:`_tombstone_time` — the regular columns (not
    statics: they are the partition's) and the row marker, after them."""
    entries = [(c.name, i) for i, c in enumerate(schema.regular, start=1) if c.kind != "static"]
    entries.append((META_ROW_TS, len(schema.regular) + 1))
    return sql.SQL("(VALUES {}) AS c(name, pos)").format(sql.SQL(", ").join(
        sql.SQL("({}::text, {}::int)").format(sql.Literal(n), sql.Literal(i)) for n, i in entries))


def _tombstone_time(schema: TableSchema, alias: str) -> sql.Composed:
    """The write time at position ``c.pos`` of :func:`_tombstone_positions` for the row
    ``alias``: a cell's from ``_c2pg_wt`` (shorter in rows older than an added column:
    NULL), the marker's from ``_c2pg_row_ts``."""
    return sql.SQL("CASE WHEN c.pos = {m} THEN {a}.{rt} ELSE ({a}.{wt})[c.pos] END").format(
        m=sql.Literal(len(schema.regular) + 1), a=sql.Identifier(alias), wt=ident(META_WT), rt=ident(META_ROW_TS))


def overwrite_cells(schema: TableSchema, target_schema: str, target_table: str, token: int,
                    key: Sequence[str | None], cells: Mapping[str, Any], stored_wts: Mapping[str, int | None]
                    ) -> tuple[sql.Composed, dict[str, Any]]:
    """Reconcile's authoritative overwrite of one row (``engine.reconcile.apply_repair``):
    ``UPDATE`` the ``cells`` (column → live :class:`~engine.events.Cell`, COPY text) to
    Cassandra's values, write times and expiries where the row's ``key`` (canonical text)
    and ``token`` match and every one of those cells still holds the write time the repair
    read (``stored_wts``) — a compare-and-set, so a sync write landing in between wins and
    the statement changes nothing. ``_c2pg_wt`` positions follow the catalog order, as in
    the merge. Values travel as parameters cast to the column type, the text the COPY of the
    merge would carry, unescaped. Returns the statement and its parameters."""
    regular = [c.name for c in schema.regular]
    kinds = {c.name: c.pg_sql_type for c in schema.columns}
    params: dict[str, Any] = {"token": token}

    def stored(meta: str, i: int) -> sql.Composable:
        return sql.SQL("t.{}[{}]").format(ident(meta), sql.Literal(i))

    sets: list[sql.Composable] = []
    wts: list[sql.Composable] = []
    exps: list[sql.Composable] = []
    where: list[sql.Composable] = [sql.SQL("t.{} = %(token)s").format(ident(META_TOKEN))]
    for i, (column, text) in enumerate(zip(schema.primary_key, key, strict=True)):
        if text is None:  # a static row's clustering column (ADR 0007)
            where.append(sql.SQL("t.{} IS NULL").format(ident(column.name)))
            continue
        params[f"k{i}"] = copy_unescape(text)
        where.append(sql.SQL("t.{} = {}::{}").format(ident(column.name), sql.Placeholder(f"k{i}"),
                                                     sql.SQL(kinds[column.name])))
    for i, name in enumerate(regular, start=1):
        cell = cells.get(name)
        if cell is None:
            wts.append(stored(META_WT, i))
            exps.append(stored(META_EXP, i))
            continue
        assert cell.value is not None  # only live Cassandra cells are overwritten
        params.update({f"v{i}": copy_unescape(cell.value), f"wt{i}": cell.ts, f"exp{i}": cell.expires_us,
                       f"was{i}": stored_wts[name]})
        sets.append(sql.SQL("{} = {}::{}").format(ident(name), sql.Placeholder(f"v{i}"), sql.SQL(kinds[name])))
        wts.append(sql.SQL("{}::bigint").format(sql.Placeholder(f"wt{i}")))
        exps.append(sql.SQL("{}::bigint").format(sql.Placeholder(f"exp{i}")))
        where.append(sql.SQL("{} = {}").format(stored(META_WT, i), sql.Placeholder(f"was{i}")))
    sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_WT), sql.SQL(", ").join(wts)))
    sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_EXP), sql.SQL(", ").join(exps)))
    statement = sql.SQL("UPDATE {} AS t SET {} WHERE {}").format(
        ident(target_schema, target_table), sql.SQL(", ").join(sets), sql.SQL(" AND ").join(where))
    return statement, params


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
                 now_us: int) -> sql.Composed:
    """Expire the cells and row markers whose TTL ran out at ``now_us``, in one statement.

    - ``due``: the rows with a live regular cell whose ``_c2pg_exp`` is ``<= now_us``
      (Cassandra: a cell is live while ``now < localDeletionTime``) or a row marker whose
      ``_c2pg_row_exp`` is, locked ``FOR UPDATE SKIP LOCKED``: a row a sync batch holds is
      left for the next sweep, so the sweep never waits on a row lock (and cannot deadlock
      with a batch);
    - ``kept``: rows that keep a live cell or a live row marker: each expired cell becomes
      NULL with its write time kept in ``_c2pg_wt`` (an expired cell is a deletion at its
      write time: an older or equal-time write still loses in the merge, a newer one wins)
      and its ``_c2pg_exp`` cleared; an expired marker is cleared and recorded as a ``cell``
      tombstone of ``_c2pg_row_ts`` at its write time (so it still shadows older markers);
    - ``gone``: rows left with no live cell and no live row marker are deleted, and every
      cell (and the marker) with a known write time is kept as a ``cell`` tombstone at that
      time — exactly what :func:`remove_empty_rows` does for the sync writer, scoped to
      these rows.

    The row sets of ``kept`` and ``gone`` are disjoint by construction, so the two
    data-modifying parts never touch the same row. Result: one row ``(cells expired, rows
    removed)``. Dropped columns are neither expired nor counted (they are no longer written).
    """
    target = ident(target_schema, target_table)
    keys = [c.name for c in schema.primary_key]
    live = [(i, c.name) for i, c in enumerate(schema.regular, start=1) if not c.dropped]
    now = sql.Literal(int(now_us))
    t = sql.Identifier("t")

    def due(i: int) -> sql.Composed:
        return sql.SQL("COALESCE({t}.{e}[{i}] <= {now}, false)").format(
            t=t, e=ident(META_EXP), i=sql.Literal(i), now=now)

    marker_due = sql.SQL("COALESCE({t}.{re} <= {now}, false)").format(t=t, re=ident(META_ROW_EXP), now=now)
    any_due = sql.SQL("({})").format(sql.SQL(" OR ").join([*(due(i) for i, _ in live), marker_due]))
    # As in remove_empty_rows: a static cell does not keep a clustering row alive.
    statics = {c.name for c in schema.regular if c.kind == "static"} if schema.clustering else set()
    row_cells = [(i, name) for i, name in live if name not in statics]
    empty_after = _row_or_static_row_empty(schema, "t", sql.SQL("({})").format(sql.SQL(" AND ").join([
        *(sql.SQL("({t}.{c} IS NULL OR {due})").format(t=t, c=ident(name), due=due(i)) for i, name in row_cells),
        marker_dead(t, now)])), [sql.SQL("({t}.{c} IS NULL OR {due})").format(t=t, c=ident(name), due=due(i))
                                 for i, name in live if name in statics])
    n_due = sql.SQL(" + ").join([sql.SQL("CASE WHEN {} THEN 1 ELSE 0 END").format(due(i)) for i, _ in live]
                                or [sql.SQL("0")])
    live_pos = {i for i, _ in live}
    sets = [sql.SQL("{c} = CASE WHEN {due} THEN NULL ELSE {t}.{c} END").format(c=ident(name), due=due(i), t=t)
            for i, name in live]
    exps = [sql.SQL("CASE WHEN {due} THEN NULL ELSE {t}.{e}[{i}] END").format(
                due=due(i), t=t, e=ident(META_EXP), i=sql.Literal(i))
            if i in live_pos else sql.SQL("{}.{}[{}]").format(t, ident(META_EXP), sql.Literal(i))
            for i in range(1, len(schema.regular) + 1)]
    if exps:
        sets.append(sql.SQL("{} = ARRAY[{}]::bigint[]").format(ident(META_EXP), sql.SQL(", ").join(exps)))
    for meta in (META_ROW_TS, META_ROW_EXP):
        sets.append(sql.SQL("{m} = CASE WHEN {due} THEN NULL ELSE {t}.{m} END").format(
            m=ident(meta), due=marker_due, t=t))
    t_keys = sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in keys)
    same = same_key(schema, "t", "d")
    return sql.SQL(
        "WITH due AS (SELECT {t_keys}, {n_due} AS n, t.{rt} AS rt, {marker_due} AS mdue FROM {target} AS t "
        "WHERE {any_due} FOR UPDATE SKIP LOCKED), "
        "kept AS (UPDATE {target} AS t SET {sets} FROM due AS d "
        "WHERE {same} AND {any_due} AND NOT {empty} RETURNING {d_keys}, d.rt, d.mdue, d.n), "
        "gone AS (DELETE FROM {target} AS t USING due AS d WHERE {same} AND {any_due} AND {empty} "
        "RETURNING {t_keys}, t.{wt}, t.{rt}, d.n), "
        "tombs AS (INSERT INTO {tomb} ({key_cols}, {kind}, {column}, {at}) "
        "SELECT * FROM (SELECT {g_keys}, 'cell', c.name, {time} AS at FROM gone AS g CROSS JOIN {columns}) AS x "
        "WHERE x.at IS NOT NULL "
        "UNION ALL SELECT {k_keys}, 'cell', {marker}, k.rt FROM kept AS k WHERE k.mdue) "
        "SELECT (SELECT COALESCE(sum(n), 0) FROM kept) + (SELECT COALESCE(sum(n), 0) FROM gone), "
        "(SELECT count(*) FROM gone)"
    ).format(t_keys=t_keys, n_due=n_due, rt=ident(META_ROW_TS), marker_due=marker_due, target=target,
             any_due=any_due, sets=sql.SQL(", ").join(sets), same=same, empty=empty_after,
             d_keys=sql.SQL(", ").join(sql.SQL("d.{}").format(ident(c)) for c in keys),
             wt=ident(META_WT), tomb=ident(STATE_SCHEMA, tomb_table),
             key_cols=_cols(keys), kind=ident(T_KIND), column=ident(T_COLUMN), at=ident(T_DELETED_AT),
             g_keys=sql.SQL(", ").join(sql.SQL("g.{}").format(ident(c)) for c in keys),
             k_keys=sql.SQL(", ").join(sql.SQL("k.{}").format(ident(c)) for c in keys),
             marker=sql.Literal(META_ROW_TS), time=_tombstone_time(schema, "g"),
             columns=_tombstone_positions(schema))


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
