"""The columnar path (engine.sync: decode_columns + reduce_columns) against the per-event one
(EventDecoder → reduce_events → the writer's COPY lines), its oracle: for any batch of
Debezium records — inserts, partial updates, row, partition and range deletions, TTLs
expired and not, equal write times with different values, duplicates, bad records, in any
order — both give the same staged rows (line for line), the same deletions and the same
dead records. The per-event reducer is itself tested against the reference model
(tests/unit/test_reduce.py, tests/unit/lww_model.py)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cassandra_bytes import column_serializers
from engine.sync.decode import DecodeError, EventDecoder, SchemaChanged
from engine.events import Op, Origin
from engine.murmur import token_function
from engine.pg_writer import SyncWriter
from engine.sync.reduce import reduce_events, typed_compare
from engine.schema import Column, TableSchema
from engine.sync.decode_columns import ColumnDecoder, convert
from engine.sync.reduce_columns import ColumnReducer, columnar_fits
from engine.types import codec, parse_cql_type

NOW = 1_700_000_000_000_000
TEXTS = ["a", "b", "ab", "é", "tab\there", "back\\slash", "line\nbreak", ""]
TYPES = {"t": "text", "i": "int", "d": "double", "big": "bigint", "ok": "boolean", "at": "timestamp",
         "u": "uuid", "dec": "decimal", "s": "smallint"}
UUIDS = ["00000000-0000-0000-0000-000000000001", "ffffffff-0000-0000-0000-000000000000"]


def _schema(clustering: bool) -> TableSchema:
    t = parse_cql_type
    ck = (Column("ck", "clustering", 0, t("int")),) if clustering else ()
    return TableSchema("ks", "t", (Column("pk", "partition_key", 0, t("bigint")),), ck,
                       tuple(Column(n, "regular", -1, t(k)) for n, k in sorted(TYPES.items())), True)


SCHEMAS = {False: _schema(False), True: _schema(True)}


def _value(col: str, rnd: random.Random):
    kind = TYPES[col]
    if kind == "text":
        return rnd.choice(TEXTS)
    if kind in ("int", "bigint", "smallint"):
        return rnd.choice([0, 1, -1, 7, 300, -300])
    if kind == "double":
        return rnd.choice([0.0, -0.0, 1.5, 1e20, 2.0, 1e-7, 7])
    if kind == "boolean":
        return rnd.choice([True, False])
    if kind == "timestamp":
        return rnd.choice([0, 1_700_000_000_123, -5])
    if kind == "uuid":
        return rnd.choice(UUIDS)
    return rnd.choice(["1.50", "-3", "1E+3"])


def _cell(value, expires=None):
    return {"value": value, "deletion_ts": expires, "set": True}


@st.composite
def batches(draw):
    clustering = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 60))
    rnd = random.Random(seed)
    times = [NOW - 10, NOW - 5, NOW]                  # few write times: many ties
    expiries = [None, None, NOW - 3_000_000, NOW - 1, NOW + 1, NOW + 2_000_000, NOW + 2_400_000]
    records = []
    for _ in range(n):
        pk, ck = rnd.randrange(3), rnd.randrange(3)
        key = {"pk": _cell(pk)} | ({"ck": _cell(ck)} if clustering else {})
        op = rnd.choices("iudrx", weights=[4, 6, 2, 1 if clustering else 0, 1])[0]
        ts = rnd.choice(times)
        after: dict = dict(key)
        if op in "iu":
            for col in rnd.sample(sorted(TYPES), rnd.randrange(0, len(TYPES) + 1)):
                value = None if rnd.random() < 0.2 else _value(col, rnd)
                after[col] = _cell(value, rnd.choice(expiries) if value is not None else None)
        elif op == "d" and clustering and rnd.random() < 0.4:
            after["ck"] = _cell(None)                 # a partition deletion
        elif op == "r":
            lo, hi = sorted(rnd.sample(range(3), 2))
            after["_range_start"] = {"method": rnd.choice(["INCL_START_BOUND", "EXCL_START_BOUND"]),
                                     "values": [{"name": "ck", "value": str(lo), "type": "int"}]}
            after["_range_end"] = {"method": rnd.choice(["INCL_END_BOUND", "EXCL_END_BOUND"]),
                                   "values": [{"name": "ck", "value": str(hi), "type": "int"}]}
        value = {"op": "u" if op == "x" else op, "source": {"keyspace": "ks", "table": "t", "ts_us": ts,
                                                           "db": "NULL"}, "after": after}
        raw = orjson.dumps(value)
        if op == "x":                                 # a bad record of one kind or another
            raw = rnd.choice([raw[:-3], raw.replace(b'"ts_us"', b'"ts_ux"'),
                              orjson.dumps({**value, "after": {**after, "i": _cell("NaN?")}}),
                              orjson.dumps({**value, "after": {**after, "t": _cell("nul\x00")}}),
                              orjson.dumps({**value, "after": {**after, "zz": _cell(1)}}),
                              orjson.dumps({**value, "after": {**after, "i": _cell(2**40)}}), b"null"])
        records.append(raw)
        if rnd.random() < 0.25:                       # the same record again (RF copies, replays)
            records.append(raw)
    rnd.shuffle(records)
    if rnd.random() < 0.1:
        records.append(None)                          # a Kafka tombstone
    return SCHEMAS[clustering], records


def _per_event(schema, records):
    decoder = EventDecoder(schema)
    events, dead = [], []
    for i, raw in enumerate(records):
        try:
            ev = decoder.decode(None, raw, Origin("t", 0, i))
        except (DecodeError, SchemaChanged) as exc:
            dead.append((i, str(exc)))
            continue
        if ev is not None:
            events.append(ev)
    reduced = reduce_events(events, 1, typed_compare(schema), column_serializers(schema), now_us=NOW)
    writer = SimpleNamespace(schema=schema, token=token_function(schema), n_pk=1)
    lines = SyncWriter._row_lines(writer, reduced)  # type: ignore[arg-type]
    return sorted(lines.splitlines()), reduced.tombstones, dead


def _columnar(schema, records):
    cols, slow = ColumnDecoder(schema).decode(records)
    decoder = EventDecoder(schema)
    events, dead = [], []
    for i in slow:
        try:
            ev = decoder.decode(None, records[i], Origin("t", 0, i))
        except (DecodeError, SchemaChanged) as exc:
            dead.append((i, str(exc)))
            continue
        if ev is not None:
            events.append((i, ev))
    reducer = ColumnReducer(schema, typed_compare(schema), column_serializers(schema), token_function(schema))
    staged = reducer.reduce(cols, events, NOW)
    lines = sorted(staged.copy_text.decode().splitlines())
    assert staged.rows == len(lines)
    return lines, staged.tombstones, dead


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_the_columnar_path_stages_what_the_per_event_path_stages(batch):
    schema, records = batch
    assert _columnar(schema, records) == _per_event(schema, records)


def test_ties_at_one_write_time_are_decided_by_cassandras_bytes_in_both_paths():
    schema = SCHEMAS[False]
    records = [orjson.dumps({"op": "u", "source": {"keyspace": "ks", "table": "t", "ts_us": NOW - 5},
                             "after": {"pk": _cell(1), "i": _cell(v), "t": _cell(s)}})
               for v, s in [(1, "b"), (-1, "a"), (7, "ab"), (1, "b")]]
    lines, _, _ = _columnar(schema, records)
    assert lines == _per_event(schema, records)[0]
    fields = lines[0].split("\t")
    names = [c.name for c in schema.regular]
    # -1 is 0xffffffff: the greatest unsigned bytes; "b" > "ab" as UTF-8 bytes.
    assert fields[1 + names.index("i")] == "-1" and fields[1 + names.index("t")] == "b"


def test_tables_the_columnar_path_leaves_to_the_per_event_one():
    t = parse_cql_type
    pk = (Column("pk", "partition_key", 0, t("int")),)
    assert columnar_fits(SCHEMAS[True])
    for col in (Column("l", "regular", -1, t("list<int>")), Column("d", "regular", -1, t("duration")),
                Column("s", "static", -1, t("int"))):
        assert not columnar_fits(TableSchema("ks", "t", pk, (Column("c", "clustering", 0, t("int")),), (col,), True))
    assert columnar_fits(TableSchema("ks", "t", pk, (), (Column("f", "regular", -1, t("frozen<list<int>>")),), True))


KINDS = {"int": st.integers(-2**70, 2**70), "bigint": st.integers(-2**70, 2**70),
         "smallint": st.integers(-2**20, 2**20), "tinyint": st.integers(-300, 300),
         "double": st.one_of(st.floats(allow_nan=True), st.integers(-2**60, 2**60)),
         "text": st.text(max_size=8), "ascii": st.text(max_size=8)}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(KINDS)).flatmap(lambda k: st.tuples(st.just(k), st.lists(st.one_of(st.none(), KINDS[k]),
                                                                                        max_size=12))))
def test_column_wise_conversion_is_the_codecs_per_value(kind_values):
    # The values a column gets are what the decoder's Structs let through for its kind
    # (int for the integer kinds, float or int for double, str for text): a JSON value of
    # another type fails the record's parse and goes to the slow lane (next test).
    kind, values = kind_values
    cd = codec(parse_cql_type(kind))
    texts, bad = convert(cd, values)
    for v, text, b in zip(values, texts.to_pylist(), bad, strict=True):
        try:
            want = cd.from_debezium(v)
        except Exception:  # noqa: BLE001 - whatever the codec refuses must be marked bad
            assert b, (v, text)
            continue
        assert not b and text == want, (v, text, want)


def test_a_value_of_another_json_type_sends_its_record_to_the_slow_lane():
    schema = SCHEMAS[False]
    good = {"op": "u", "source": {"keyspace": "ks", "table": "t", "ts_us": NOW}, "after": {"pk": _cell(1)}}
    odd = [{"i": _cell(True)}, {"d": _cell(False)}, {"d": _cell("1.5")}, {"t": _cell(3)}, {"big": _cell(1.0)},
           {"i": _cell(2**40)}, {"s": _cell(2**15)}]
    records = [orjson.dumps(good)] + [orjson.dumps({**good, "after": {**good["after"], **o}}) for o in odd]
    cols, slow = ColumnDecoder(schema).decode(records)
    assert list(cols.pos) == [0] and slow == list(range(1, len(records)))


def test_an_op_other_than_an_upsert_goes_to_the_slow_lane():
    schema = SCHEMAS[True]
    up = {"op": "i", "source": {"keyspace": "ks", "table": "t", "ts_us": NOW},
          "after": {"pk": _cell(1), "ck": _cell(2)}}
    records = [orjson.dumps(up), orjson.dumps({**up, "op": "d"}), None,
               orjson.dumps({**up, "source": {**up["source"], "table": "other"}})]
    cols, slow = ColumnDecoder(schema).decode(records)
    assert list(cols.pos) == [0] and slow == [1, 2, 3]
    assert Op.UPSERT  # the slow lane's events carry their own ops
