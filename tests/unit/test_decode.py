"""engine.sync.decode without servers: every recorded Debezium event (tests/fixtures/debezium)
decodes to the ChangeEvent the replication contract expects; the envelope, Avro (with an
in-memory registry), range bounds, and every way a record can be bad; and, with hypothesis,
that nothing but DecodeError or SchemaChanged ever escapes ``decode``."""

from __future__ import annotations

import base64
import copy
import io
import json
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.sync.decode import DecodeError, EventDecoder, RegistryUnavailable, SchemaChanged
from engine.events import Bound, Cell, ChangeEvent, Op, Origin
from engine.schema import Column, TableSchema
from engine.types import CqlType, codec, parse_cql_type

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"
TOPIC = "c2pg.c2pg_fixtures.kitchen_sink"


# -- building a TableSchema from a fixture's CQL ---------------------------------------------

def _split_top(text: str) -> list[str]:
    """Split at commas outside <> and ()."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def schema_from_cql(statements: list[str]) -> TableSchema:
    """The TableSchema that engine.schema.read_table would return for these CREATE statements
    (regular columns by name, as system_schema lists them)."""
    udts: dict[str, tuple[tuple[str, str], ...]] = {}
    table = None
    for stmt in statements:
        if m := re.match(r"CREATE TYPE (?:IF NOT EXISTS )?(\w+)\.(\w+) \((.*)\)\s*\Z", stmt, re.S):
            udts[m[2]] = tuple(tuple(f.split(None, 1)) for f in _split_top(m[3]))  # type: ignore[misc]
        elif m := re.match(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)\.(\w+) \((.*)\)\s*(?:WITH (.*))?\Z",
                           stmt, re.S):
            table = m
    assert table is not None
    keyspace, name, body, options = table[1], table[2], table[3], table[4] or ""
    defs, pk, ck = [], [], []
    for item in _split_top(body):
        if item.upper().startswith("PRIMARY KEY"):
            keys = _split_top(item[item.index("(") + 1:item.rindex(")")])
            first = keys[0]
            pk = [k.strip() for k in first.strip("()").split(",")] if first.startswith("(") else [first]
            ck = keys[1:]
        else:
            col, typ = item.split(None, 1)
            defs.append((col, typ.strip()))
    types = {c: parse_cql_type(t, udts) for c, t in defs}
    return TableSchema(
        keyspace, name,
        tuple(Column(c, "partition_key", i, types[c]) for i, c in enumerate(pk)),
        tuple(Column(c, "clustering", i, types[c]) for i, c in enumerate(ck)),
        tuple(Column(c, "regular", -1, types[c]) for c, _ in sorted(defs) if c not in pk and c not in ck),
        "cdc = true" in options)


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
SCHEMA = schema_from_cql(load("insert_all_types")["schema"])
DEC = EventDecoder(SCHEMA)
CODECS = {c.name: codec(c.cql_type) for c in SCHEMA.columns}


def origin(ev: dict) -> Origin:
    return Origin(ev["topic"], ev["partition"], ev["offset"])


def enc(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def decode_fixture(name: str) -> list[ChangeEvent | None]:
    return [DEC.decode(enc(e["raw_key"]), enc(e["raw_value"]), origin(e)) for e in load(name)["events"]]


def events_of(name: str) -> list[dict]:
    return load(name)["events"]


def value_of(ev: dict) -> dict:
    return json.loads(ev["raw_value"])


def decode_value(value: dict, key: Any = None, decoder: EventDecoder = DEC, o: Origin | None = None):
    raw_key = None if key is None else json.dumps(key).encode()
    return decoder.decode(raw_key, json.dumps(value).encode(), o or Origin(TOPIC, 0, 1))


def cells_expected(after: dict, ts: int) -> tuple[tuple[str, Cell], ...]:
    """What the contract says an upsert's cells are, straight from the brief's rules."""
    out = []
    for col in SCHEMA.regular:
        cell = after.get(col.name)
        if cell is None:
            continue
        text = CODECS[col.name].from_debezium(cell["value"])
        out.append((col.name, Cell(text, ts, cell["deletion_ts"] if text is not None else None)))
    return tuple(out)


def test_schema_helper_matches_the_fixture_table():
    assert [c.name for c in SCHEMA.partition_key] == ["pk"]
    assert [c.name for c in SCHEMA.clustering] == ["ck"]
    assert [c.name for c in SCHEMA.regular][:4] == ["addr", "b", "big", "bo"]
    assert SCHEMA.cdc and len(SCHEMA.regular) == 24


# -- every recorded event -------------------------------------------------------------------

_OP = {"i": Op.UPSERT, "u": Op.UPSERT, "d": None, "r": Op.RANGE_DELETE}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_event_decodes_by_the_rules(name):
    doc = load(name)
    decoded = decode_fixture(name)
    assert [json.loads(e["raw_value"])["op"] for e in doc["events"]] == doc["expected_ops"] or \
        sorted(json.loads(e["raw_value"])["op"] for e in doc["events"]) == sorted(doc["expected_ops"])
    for raw, ev in zip(doc["events"], decoded, strict=True):
        value = value_of(raw)
        after, ts = value["after"], value["source"]["ts_us"]
        assert isinstance(ev, ChangeEvent)
        assert (ev.keyspace, ev.table, ev.ts, ev.origin) == ("c2pg_fixtures", "kitchen_sink", ts, origin(raw))
        assert ev.row_marker == (value["op"] == "i")
        pk = CODECS["pk"].from_debezium(after["pk"]["value"])
        if value["op"] in "iu":
            assert ev.op is Op.UPSERT
            assert ev.key == (pk, CODECS["ck"].from_debezium(after["ck"]["value"]))
            assert ev.cells == cells_expected(after, ts)
        else:
            assert ev.cells == ()
            if _OP[value["op"]] is not None:
                assert ev.op is _OP[value["op"]]
            assert ev.key[0] == pk


def test_insert_all_types():
    (ev,) = decode_fixture("insert_all_types")
    assert ev.op is Op.UPSERT and ev.row_marker and ev.key == ("1", "1") and ev.ts == 1795675083246960
    cells = ev.cell_map()
    assert [n for n, _ in ev.cells] == [c.name for c in SCHEMA.regular]        # schema order, all 24
    assert all(c.ts == ev.ts and c.expires_us is None for c in cells.values())
    expected = {
        "t": "héllo 🌍", "big": "9223372036854775807", "i": "-42", "sm": "7", "ti": "-3",
        "vi": "123456789012345678901234567890", "dec": "-12345.678901234567890123",
        "f": "1.5", "d": "-2.25e+300", "bo": "t", "b": "\\\\xcafe", "ip": "192.168.0.1",
        "ts": "1969-07-20 20:17:40.123+00", "dt": "1900-01-01", "tm": "23:59:59.123456",
        "dur": "01:02:03.004005", "u": "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab",
        "tu": "50554d6e-29bb-11e5-b345-feff819cdc9f", "l": "{1,2,3}", "s": "{a,b}",
        "m": '{"k1":1,"k2":2}', "fl": "{4,5}", "addr": '{"street":"Main","zip":12345}',
        "tup": '[7,"seven"]',
    }
    assert {n: c.value for n, c in cells.items()} == expected


def test_nulls_and_empties():
    first, second = decode_fixture("insert_nulls_and_empties")
    ts1 = first.ts
    # '' and 0x stay values; empty non-frozen collections are null in Cassandra.
    assert first.cells == (("b", Cell("\\\\x", ts1)), ("l", Cell(None, ts1)), ("m", Cell(None, ts1)),
                           ("s", Cell(None, ts1)), ("t", Cell("", ts1)))
    # An explicit null in an INSERT is a deleted cell; the row marker keeps the row.
    assert second.row_marker and second.key == ("2", "2")
    assert second.cells == (("big", Cell(None, second.ts)), ("t", Cell(None, second.ts)))


def test_partial_update_carries_only_the_touched_columns():
    insert, update = decode_fixture("partial_update")
    assert insert.row_marker and not update.row_marker
    assert update.op is Op.UPSERT and update.key == ("3", "1") and update.ts == 1795675095277733
    assert update.cells == (("i", Cell("1", 1795675095277733)), ("t", Cell("changed", 1795675095277733)))


def test_column_delete_is_a_null_cell():
    _, delete_cols, set_null = decode_fixture("column_delete")
    assert delete_cols.op is Op.UPSERT and not delete_cols.row_marker
    assert delete_cols.cells == (("big", Cell(None, 1795675101280405)), ("t", Cell(None, 1795675101280405)))
    assert set_null.cells == (("i", Cell(None, 1795675101284979)),)


def test_ttl_write_sets_expiry_from_deletion_ts():
    insert, update = decode_fixture("ttl_write")
    cells = insert.cell_map()
    assert cells["t"] == Cell("héllo 🌍", 1795675125313184, 1795678725000000)
    assert all(cells[n].expires_us == 1795678725000000 for n in cells if n not in ("l", "m", "s"))
    # Non-frozen collection cells carry no deletion_ts in the event (docs/local-stack.md fact 8).
    assert cells["l"] == Cell("{1,2,3}", 1795675125313184, None)
    assert update.cells == (("t", Cell("short", 1795675125319477, 1795675185000000)),)
    # The INSERT's row marker has the statement's TTL too: the decoder takes it from the cells.
    assert insert.row_marker and insert.marker_expires_us == 1795678725000000
    assert update.marker_expires_us is None


def test_row_delete():
    _, delete = decode_fixture("row_delete")
    assert delete == ChangeEvent("c2pg_fixtures", "kitchen_sink", Op.ROW_DELETE, 1795675107290465, ("5", "1"),
                                 origin=Origin(TOPIC, 1, 2))


def test_partition_delete_has_the_partition_key_only():
    *_, delete = decode_fixture("partition_delete")
    assert delete == ChangeEvent("c2pg_fixtures", "kitchen_sink", Op.PARTITION_DELETE, 1795675113318210,
                                 ("6",), origin=Origin(TOPIC, 0, 7))


def test_range_delete_bounds_and_inclusivity():
    _, rng, _ = decode_fixture("range_delete")       # arrival order i, r, i (fact 5)
    assert rng == ChangeEvent("c2pg_fixtures", "kitchen_sink", Op.RANGE_DELETE, 1795675119333610, ("7",),
                              range_start=Bound(("1",), inclusive=False),
                              range_end=Bound(("5",), inclusive=True), origin=Origin(TOPIC, 1, 5))


def test_collections_are_the_elements_given():
    _, add, remove, del_key, overwrite = decode_fixture("collections")
    assert {n: c.value for n, c in add.cells} == {"l": "{4}", "m": '{"k3":3}', "s": "{c}"}
    assert {n: c.value for n, c in remove.cells} == {"l": "{NULL}", "s": "{a}"}
    assert {n: c.value for n, c in del_key.cells} == {"m": '{"k1":null}'}
    assert {n: c.value for n, c in overwrite.cells} == {"l": "{9}", "m": '{"only":1}', "s": "{z}"}


def test_udt_and_tuple():
    _, update = decode_fixture("udt_and_tuple")
    assert update.cells == (("addr", Cell('{"street":"Elm","zip":1}', update.ts)),
                            ("tup", Cell('[8,"eight"]', update.ts)))


def test_explicit_timestamps_are_the_event_times():
    newer, older, delete = decode_fixture("explicit_timestamps")
    assert (newer.op, newer.ts, newer.cells) == (Op.UPSERT, 2000000, (("t", Cell("newer", 2000000)),))
    assert (older.op, older.ts, older.cells) == (Op.UPSERT, 1000000, (("t", Cell("older", 1000000)),))
    assert (delete.op, delete.ts, delete.key, delete.cells) == (Op.ROW_DELETE, 1500000, ("11", "1"), ())


# -- formats -------------------------------------------------------------------------------

def envelope(payload: Any) -> dict:
    # What JsonConverter with schemas.enable=true writes (the schema part abridged).
    return {"schema": {"type": "struct", "optional": False, "name": "io.debezium.connector.cassandra.x",
                       "fields": [{"field": "op", "type": "string", "optional": False}]},
            "payload": payload}


@pytest.mark.parametrize("name", ["insert_all_types", "partition_delete", "range_delete", "row_delete"])
def test_json_with_schema_envelope_decodes_the_same(name):
    for raw in events_of(name):
        key, value = json.loads(raw["raw_key"]), value_of(raw)
        plain = DEC.decode(enc(raw["raw_key"]), enc(raw["raw_value"]), origin(raw))
        wrapped = DEC.decode(json.dumps(envelope(key)).encode(), json.dumps(envelope(value)).encode(),
                             origin(raw))
        assert wrapped == plain


def test_kafka_tombstone_is_none():
    assert DEC.decode(b'{"pk":5,"ck":1}', None, Origin(TOPIC, 0, 3)) is None
    assert DEC.decode(None, b'{"schema":null,"payload":null}', Origin(TOPIC, 0, 3)) is None
    assert DEC.decode(None, b"null", Origin(TOPIC, 0, 3)) is None


def test_str_and_memoryview_values_are_accepted():
    raw = events_of("partial_update")[1]
    expected = DEC.decode(None, enc(raw["raw_value"]), origin(raw))
    assert DEC.decode(None, raw["raw_value"], origin(raw)) == expected
    assert DEC.decode(None, memoryview(enc(raw["raw_value"])), origin(raw)) == expected


# -- schema changes, dropped columns ---------------------------------------------------------

def test_extra_columns_raise_schema_changed_with_sorted_names():
    value = value_of(events_of("partial_update")[1])
    value["after"]["zz_new"] = {"value": 1, "deletion_ts": None, "set": True}
    value["after"]["a_new"] = None                       # named, even untouched: the table changed
    with pytest.raises(SchemaChanged) as info:
        decode_value(value, o=Origin(TOPIC, 2, 22))
    assert info.value.columns == ("a_new", "zz_new")
    assert "a_new" in str(info.value) and "partition 2 offset 22" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).columns == ("a_new", "zz_new")
    assert not isinstance(info.value, DecodeError)


def test_dropped_columns_are_ignored():
    regular = tuple(replace(c, dropped=True) if c.name == "t" else c for c in SCHEMA.regular)
    dec = EventDecoder(replace(SCHEMA, regular=regular))
    ev = decode_value(value_of(events_of("partial_update")[1]), decoder=dec)
    assert ev.cells == (("i", Cell("1", 1795675095277733)),)


# -- tables of other shapes (synthesized from the recorded events) ---------------------------

def make_schema(cql: str) -> TableSchema:
    return schema_from_cql([cql])


def event(op: str, after: dict, ts: int = 100, keyspace: str = "ks", table: str = "t") -> dict:
    return {"ts_ms": 1, "op": op, "after": dict(after, _range_start=None, _range_end=None),
            "source": {"version": "3.4.1.Final", "connector": "cassandra", "name": "c2pg", "ts_ms": 1,
                       "snapshot": "false", "db": "NULL", "sequence": None, "ts_us": ts, "ts_ns": ts * 1000,
                       "cluster": "c2pg-dev", "file": "CommitLog-7-1.log", "pos": 1,
                       "keyspace": keyspace, "table": table}}


def cell(value: Any, deletion_ts: int | None = None) -> dict:
    return {"value": value, "deletion_ts": deletion_ts, "set": True}


NO_CK = make_schema("CREATE TABLE ks.t (id int, v text, PRIMARY KEY (id))")
MULTI = make_schema("CREATE TABLE ks.t (p1 text, p2 int, c1 text, c2 timestamp, c3 uuid, v int, "
                    "PRIMARY KEY ((p1, p2), c1, c2, c3))")


def test_delete_without_clustering_columns_is_a_row_delete():
    dec = EventDecoder(NO_CK)
    ev = decode_value(event("d", {"id": cell(1), "v": cell(None, 100)}), key={"id": 1}, decoder=dec)
    assert (ev.op, ev.key, ev.cells) == (Op.ROW_DELETE, ("1",), ())
    ev = decode_value(event("i", {"id": cell(1), "v": cell("x")}), decoder=dec)
    assert (ev.op, ev.key, ev.cells, ev.row_marker) == (Op.UPSERT, ("1",), (("v", Cell("x", 100)),), True)


def test_composite_partition_key_and_clustering_row_delete():
    dec = EventDecoder(MULTI)
    after = {"p1": cell("a"), "p2": cell(2), "c1": cell("x"), "c2": cell(1500),
             "c3": cell("6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab"), "v": cell(None, 100)}
    ev = decode_value(event("d", after), key={"p1": "a", "p2": 2, "c1": "x", "c2": 1500,
                                              "c3": "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab"}, decoder=dec)
    assert ev.op is Op.ROW_DELETE
    assert ev.key == ("a", "2", "x", "1970-01-01 00:00:01.5+00", "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab")


def test_delete_without_a_key_is_decided_by_after():
    raw = events_of("partition_delete")[2]
    assert DEC.decode(None, enc(raw["raw_value"]), origin(raw)).op is Op.PARTITION_DELETE
    raw = events_of("row_delete")[1]
    assert DEC.decode(None, enc(raw["raw_value"]), origin(raw)).op is Op.ROW_DELETE


def test_range_bound_values_are_put_in_clustering_order_by_name():
    dec = EventDecoder(MULTI)
    value = event("r", {"p1": cell("a"), "p2": cell(2)})
    # The connector fills the values from a HashMap: any order.
    value["after"]["_range_start"] = {"method": "INCL_START_BOUND", "values": [
        {"name": "c2", "value": "2023-11-14T22:13:20.123Z",
         "type": "org.apache.cassandra.db.marshal.TimestampType"},
        {"name": "c1", "value": "x y", "type": "org.apache.cassandra.db.marshal.UTF8Type"}]}
    value["after"]["_range_end"] = {"method": "EXCL_END_BOUND", "values": [
        {"name": "c1", "value": "x y", "type": "org.apache.cassandra.db.marshal.UTF8Type"}]}
    ev = decode_value(value, key={"p1": "a", "p2": 2, "c1": None, "c2": None, "c3": None}, decoder=dec)
    assert ev.op is Op.RANGE_DELETE and ev.key == ("a", "2") and ev.cells == ()
    assert ev.range_start == Bound(("x y", "2023-11-14 22:13:20.123+00"), True)
    assert ev.range_end == Bound(("x y",), False)


@pytest.mark.parametrize("end", [None, {"method": "INCL_END_BOUND", "values": []}])
def test_missing_or_empty_bound_is_open_ended(end):
    value = value_of(events_of("range_delete")[1])
    value["after"]["_range_end"] = end
    ev = decode_value(value)
    assert ev.range_start == Bound(("1",), False) and ev.range_end is None


def test_quoted_clustering_names_in_bounds():
    schema = make_schema('CREATE TABLE ks.t (p int, "Ck" int, v int, PRIMARY KEY (p, "Ck"))')
    schema = replace(schema, clustering=(replace(schema.clustering[0], name="Ck"),))
    value = event("r", {"p": cell(1)})
    value["after"]["_range_start"] = {"method": "EXCL_START_BOUND",
                                      "values": [{"name": '"Ck"', "value": "3", "type": "Int32Type"}]}
    ev = decode_value(value, decoder=EventDecoder(schema))
    assert ev.range_start == Bound(("3",), False)


# What AbstractType.getString writes for each type (run against cassandra-all 5.0.9), the
# same value as a Debezium cell holds it, and the canonical text of both.
BOUND_CASES = [
    ("int", "1", 1, "1"),
    ("bigint", "-9223372036854775808", -9223372036854775808, "-9223372036854775808"),
    ("smallint", "-3", -3, "-3"),
    ("tinyint", "-3", -3, "-3"),
    ("varint", "123456789012345678901234567890", "123456789012345678901234567890",
     "123456789012345678901234567890"),
    ("decimal", "1E+3", "1E+3", "1000"),
    ("decimal", "1.50", "1.50", "1.50"),
    ("decimal", "-12345.678901234567890123", "-12345.678901234567890123", "-12345.678901234567890123"),
    ("double", "1.0E10", 1e10, "10000000000.0"),
    ("double", "-0.0", -0.0, "-0.0"),
    ("double", "NaN", "NaN", "NaN"),
    ("double", "Infinity", "Infinity", "Infinity"),
    ("float", "3.4028235E38", 3.4028235e38, "3.4028235e+38"),
    ("float", "0.1", 0.1, "0.1"),
    ("boolean", "true", True, "t"),
    ("boolean", "false", False, "f"),
    ("text", "a b\"c'\n", "a b\"c'\n", "a b\"c'\\n"),
    ("text", "", "", ""),
    ("ascii", "abc", "abc", "abc"),
    ("blob", "cafe", "yv4=", "\\\\xcafe"),
    ("blob", "", "", "\\\\x"),
    ("inet", "0:0:0:0:0:0:0:1", "/0:0:0:0:0:0:0:1", "::1"),
    ("inet", "192.168.0.1", "/192.168.0.1", "192.168.0.1"),
    ("uuid", "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab", "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab",
     "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab"),
    ("timeuuid", "50554d6e-29bb-11e5-b345-feff819cdc9f", "50554d6e-29bb-11e5-b345-feff819cdc9f",
     "50554d6e-29bb-11e5-b345-feff819cdc9f"),
    ("timestamp", "1969-07-20T20:17:40.123Z", -14182939877, "1969-07-20 20:17:40.123+00"),
    ("timestamp", "1970-01-01T00:00:01.500Z", 1500, "1970-01-01 00:00:01.5+00"),
    ("timestamp", "0001-01-01T00:00:00.000Z", -62135596800000, "0001-01-01 00:00:00+00"),
    ("timestamp", "+10000-01-01T00:00:00.000Z", 253402300800000, "10000-01-01 00:00:00+00"),
    ("date", "1900-01-01", -25567, "1900-01-01"),
    ("date", "-0001-12-31", -719529, "0002-12-31 BC"),
    ("date", "0000-06-01", -719376, "0001-06-01 BC"),
    ("time", "23:59:59.123456789", 86399123456789, "23:59:59.123456"),
    ("time", "00:00:00.000000000", 0, "00:00:00"),
]


@pytest.mark.parametrize("typ, text, cell_value, expected", BOUND_CASES)
def test_range_bound_values_of_every_scalar_type(typ, text, cell_value, expected):
    schema = make_schema(f"CREATE TABLE ks.t (p int, c {typ}, v int, PRIMARY KEY (p, c))")
    value = event("r", {"p": cell(1)})
    value["after"]["_range_start"] = {"method": "INCL_START_BOUND",
                                      "values": [{"name": "c", "value": text, "type": "x"}]}
    ev = decode_value(value, decoder=EventDecoder(schema))
    assert ev.range_start == Bound((expected,), True)
    # The bound has the same text as the same value in a cell.
    assert codec(schema.clustering[0].cql_type).from_debezium(cell_value) == expected


@pytest.mark.parametrize("typ, text", [
    ("int", "1.5"), ("int", ""), ("int", " 1"), ("bigint", "x"), ("boolean", "True"), ("blob", "xyz"),
    ("timestamp", "2023-11-14 22:13Z"), ("date", "2023-13-01"), ("time", "25:00"), ("uuid", "nope"),
    ("double", "1_0"), ("inet", "300.1.1.1"), ("text", "a\x00b")])
def test_bad_range_bound_values_are_decode_errors_naming_the_column(typ, text):
    schema = make_schema(f"CREATE TABLE ks.t (p int, c {typ}, v int, PRIMARY KEY (p, c))")
    value = event("r", {"p": cell(1)})
    value["after"]["_range_end"] = {"method": "EXCL_END_BOUND",
                                    "values": [{"name": "c", "value": text, "type": "x"}]}
    with pytest.raises(DecodeError) as info:
        decode_value(value, decoder=EventDecoder(schema))
    assert info.value.column == "c"


def test_range_bound_on_a_collection_clustering_column_is_refused_naming_the_type():
    schema = make_schema("CREATE TABLE ks.t (p int, c frozen<list<int>>, v int, PRIMARY KEY (p, c))")
    value = event("r", {"p": cell(1)})
    value["after"]["_range_start"] = {"method": "INCL_START_BOUND",
                                      "values": [{"name": "c", "value": "[1, 2]", "type": "x"}]}
    with pytest.raises(DecodeError, match=re.escape("frozen<list<int>>")) as info:
        decode_value(value, decoder=EventDecoder(schema))
    assert info.value.column == "c"


# -- bad records -----------------------------------------------------------------------------

def mutated(name: str, i: int, change) -> dict:
    value = value_of(events_of(name)[i])
    change(value)
    return value


def _set(path: str, v: Any):
    def change(doc: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        doc[last] = v
    return change


def _del(path: str):
    def change(doc: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        del doc[last]
    return change


BAD = [
    ("wrong table", _set("source.table", "other"), "'c2pg_fixtures'.'other'", None),
    ("wrong keyspace", _set("source.keyspace", "ks2"), "'ks2'.'kitchen_sink'", None),
    ("ts_us a string", _set("source.ts_us", "1795675095277733"), "ts_us", None),
    ("ts_us a float", _set("source.ts_us", 1.5), "ts_us", None),
    ("ts_us a bool", _set("source.ts_us", True), "ts_us", None),
    ("ts_us missing", _del("source.ts_us"), "ts_us", None),
    ("unknown op", _set("op", "c"), "unknown op 'c'", None),
    ("op not a string", _set("op", ["i"]), "unknown op", None),
    ("source missing", _del("source"), "'source' is missing", None),
    ("after missing", _del("after"), "'after' is missing", None),
    ("after a list", _set("after", []), "'after' is list", None),
    ("NUL in text", _set("after.t", cell("a\x00b")), "NUL", "t"),
    ("wrong value type", _set("after.i", cell("one")), "int value", "i"),
    ("cell not a record", _set("after.i", 5), "not a cell record", "i"),
    ("cell without value", _set("after.i", {"deletion_ts": None, "set": True}), "no field 'value'", "i"),
    ("deletion_ts a string", _set("after.i", cell(1, "soon")), "deletion_ts", "i"),
    ("partition key missing", _set("after.pk", None), "primary-key cell", "pk"),
    ("partition key null", _set("after.pk", cell(None)), "has no value", "pk"),
    ("clustering key bad", _set("after.ck", cell("x")), "int value", "ck"),
]


@pytest.mark.parametrize("why, change, match, column", BAD, ids=[b[0] for b in BAD])
def test_bad_records_are_decode_errors(why, change, match, column):
    value = mutated("partial_update", 1, change)
    with pytest.raises(DecodeError) as info:
        decode_value(value, o=Origin(TOPIC, 2, 22))
    exc = info.value
    assert match in str(exc)
    assert exc.column == column
    assert str(exc).startswith(f"cannot decode record {TOPIC} partition 2 offset 22: ")
    if column:
        assert f"column {column!r}: " in str(exc)
    assert pickle.loads(pickle.dumps(exc)).args == exc.args


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b"42", b'"text"',
                                 b'{"op": "i"}', b"\x00\x00\x00\x00\x01abc"])
def test_malformed_values_are_decode_errors(raw):
    with pytest.raises(DecodeError, match="cannot decode record c2pg"):
        DEC.decode(None, raw, Origin(TOPIC, 1, 9))


def test_delete_whose_key_and_after_disagree():
    raw = events_of("partition_delete")[2]
    with pytest.raises(DecodeError, match="disagree"):
        DEC.decode(b'{"pk":6,"ck":1}', enc(raw["raw_value"]), origin(raw))
    with pytest.raises(DecodeError, match="key is a list"):
        DEC.decode(b"[6]", enc(raw["raw_value"]), origin(raw))
    with pytest.raises(DecodeError, match="key is not valid JSON"):
        DEC.decode(b"{", enc(raw["raw_value"]), origin(raw))
    with pytest.raises(DecodeError, match="no schema registry"):
        DEC.decode(b"\x00\x00\x00\x00\x07xx", enc(raw["raw_value"]), origin(raw))


def test_delete_with_a_partial_clustering_key_is_refused():
    dec = EventDecoder(MULTI)
    after = {"p1": cell("a"), "p2": cell(2), "c1": cell("x"), "c2": cell(None, 100), "c3": cell(None, 100)}
    with pytest.raises(DecodeError, match="some clustering columns set"):
        decode_value(event("d", after), key={"p1": "a", "p2": 2, "c1": "x", "c2": None, "c3": None},
                     decoder=dec)


@pytest.mark.parametrize("start, match", [
    ({"method": "INCL_END_BOUND", "values": []}, "method 'INCL_END_BOUND'"),
    ({"method": None, "values": []}, "method None"),
    ("x", "not a range bound record"),
    ({"method": "INCL_START_BOUND", "values": "1"}, "not a list"),
    ({"method": "INCL_START_BOUND", "values": [{"name": "ck", "value": 1}]}, "record of strings"),
    ({"method": "INCL_START_BOUND", "values": [{"name": "t", "value": "1"}]}, "not a prefix"),
])
def test_malformed_range_bounds(start, match):
    value = value_of(events_of("range_delete")[1])
    value["after"]["_range_start"] = start
    with pytest.raises(DecodeError, match=re.escape(match)):
        decode_value(value)


def test_constructor_rejects_conflicting_options():
    with pytest.raises(ValueError, match="registry"):
        EventDecoder(SCHEMA, value_format="avro")
    with pytest.raises(ValueError, match="value_format"):
        EventDecoder(SCHEMA, value_format="protobuf")  # type: ignore[arg-type]


# -- Avro (an in-memory registry) ------------------------------------------------------------

def _avro_value_type(t: CqlType, name: str) -> Any:
    """The Avro type of a CQL type in the connector's event (logical types as the Confluent
    converter writes them for Connect's Timestamp and Date)."""
    k = t.kind
    if k in ("int", "smallint", "tinyint"):
        return "int"
    if k in ("bigint", "counter", "time", "duration"):
        return "long"
    if k in ("text", "ascii", "varint", "decimal", "inet", "uuid", "timeuuid"):
        return "string"
    if k == "timestamp":
        return {"type": "long", "logicalType": "timestamp-millis"}
    if k == "date":
        return {"type": "int", "logicalType": "date"}
    if k in ("boolean", "double", "float"):
        return k
    if k == "blob":
        return "bytes"
    if k in ("list", "set"):
        return {"type": "array", "items": ["null", _avro_value_type(t.params[0], name + "_e")]}
    if k == "map":
        return {"type": "map", "values": ["null", _avro_value_type(t.params[1], name + "_v")]}
    if k in ("udt", "tuple"):
        names = t.field_names if k == "udt" else tuple(f"field{i + 1}" for i in range(len(t.params)))
        return {"type": "record", "name": f"{name}_{k}",
                "fields": [{"name": f, "type": ["null", _avro_value_type(p, f"{name}_{f}")], "default": None}
                           for f, p in zip(names, t.params, strict=True)]}
    raise AssertionError(k)


def avro_value_schema(schema: TableSchema) -> dict:
    """An Avro schema of the connector's value for ``schema``: the connector's shape, with
    one distinctly named cell record per column (the Confluent converter names them all
    ``cell_value``, which breaks for differently typed columns — reference doc)."""
    fields = []
    for col in schema.columns:
        cell_record = {"type": "record", "name": f"cell_{col.name}", "fields": [
            {"name": "value", "type": ["null", _avro_value_type(col.cql_type, col.name)]},
            {"name": "deletion_ts", "type": ["null", "long"]},
            {"name": "set", "type": "boolean"}]}
        fields.append({"name": col.name, "type": ["null", cell_record], "default": None})
    bound = {"type": "record", "name": "range_bound", "fields": [
        {"name": "method", "type": "string"},
        {"name": "values", "type": {"type": "array", "items": {
            "type": "record", "name": "clustering_value",
            "fields": [{"name": n, "type": "string"} for n in ("name", "value", "type")]}}}]}
    fields += [{"name": "_range_start", "type": ["null", bound], "default": None},
               {"name": "_range_end", "type": ["null", "range_bound"], "default": None}]
    source = {"type": "record", "name": "source", "fields": [
        {"name": n, "type": t} for n, t in [
            ("version", "string"), ("connector", "string"), ("name", "string"), ("ts_ms", "long"),
            ("snapshot", "string"), ("db", "string"), ("sequence", ["null", "string"]), ("ts_us", "long"),
            ("ts_ns", "long"), ("cluster", "string"), ("file", "string"), ("pos", "int"),
            ("keyspace", "string"), ("table", "string")]]}
    return {"type": "record", "name": "Envelope", "namespace": f"c2pg.{schema.keyspace}.{schema.table}",
            "fields": [{"name": "ts_ms", "type": "long"}, {"name": "op", "type": "string"},
                       {"name": "source", "type": source},
                       {"name": "after", "type": {"type": "record", "name": "after", "fields": fields}}]}


def avro_key_schema(schema: TableSchema) -> dict:
    return {"type": "record", "name": "Key", "namespace": f"c2pg.{schema.keyspace}.{schema.table}",
            "fields": [{"name": c.name, "type": ["null", _avro_value_type(c.cql_type, "key_" + c.name)],
                        "default": None} for c in schema.primary_key]}


def _to_avro_value(t: CqlType, v: Any) -> Any:
    """A Debezium JSON value → what the Avro converter holds (blobs as bytes, tuples/UDTs as records)."""
    if v is None:
        return None
    if t.kind == "blob":
        return base64.b64decode(v)
    if t.kind in ("list", "set"):
        return [_to_avro_value(t.params[0], x) for x in v]
    if t.kind == "map":
        return {k: _to_avro_value(t.params[1], x) for k, x in v.items()}
    if t.kind in ("udt", "tuple"):
        names = t.field_names if t.kind == "udt" else tuple(f"field{i + 1}" for i in range(len(t.params)))
        return {f: _to_avro_value(p, v.get(f)) for f, p in zip(names, t.params, strict=True)}
    return v


def to_avro_record(schema: TableSchema, value: dict) -> dict:
    types = {c.name: c.cql_type for c in schema.columns}
    out = copy.deepcopy(value)
    for name, c in out["after"].items():
        if name in types and c is not None:
            c["value"] = _to_avro_value(types[name], c["value"])
    return out


def wire(schema_id: int, avro_schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(avro_schema), record)
    return buf.getvalue()


class FakeSchema:
    def __init__(self, schema_str: str, schema_type: str = "AVRO"):
        self.schema_str, self.schema_type = schema_str, schema_type


class FakeRegistry:
    """``get_schema(id)`` like confluent_kafka's SchemaRegistryClient; KeyError when unknown."""

    def __init__(self, schemas: dict[int, Any]):
        self.schemas, self.calls = schemas, 0

    def get_schema(self, schema_id: int) -> FakeSchema:
        self.calls += 1
        s = self.schemas[schema_id]
        if isinstance(s, BaseException):
            raise s
        return s if isinstance(s, FakeSchema) else FakeSchema(json.dumps(s))


AVRO_VALUE = avro_value_schema(SCHEMA)
AVRO_KEY = avro_key_schema(SCHEMA)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_avro_decodes_like_json(name):
    registry = FakeRegistry({7: AVRO_VALUE, 8: AVRO_KEY})
    dec = EventDecoder(SCHEMA, value_format="avro", registry=registry)
    for raw in events_of(name):
        raw_key = json.loads(raw["raw_key"])
        key = {c.name: _to_avro_value(c.cql_type, raw_key[c.name]) for c in SCHEMA.primary_key}
        raw_value = wire(7, AVRO_VALUE, to_avro_record(SCHEMA, value_of(raw)))
        expected = DEC.decode(enc(raw["raw_key"]), enc(raw["raw_value"]), origin(raw))
        assert dec.decode(wire(8, AVRO_KEY, key), raw_value, origin(raw)) == expected
    assert registry.calls <= 2                                   # parsed once per schema id


def test_avro_unknown_schema_id_and_bad_wire_format():
    registry = FakeRegistry({7: AVRO_VALUE, 9: FakeSchema("{}", "PROTOBUF"), 10: FakeSchema("{not json")})
    dec = EventDecoder(SCHEMA, value_format="avro", registry=registry)
    with pytest.raises(DecodeError, match="schema id 1234 is unknown"):
        dec.decode(None, b"\x00\x00\x00\x04\xd2\x02", Origin(TOPIC, 0, 1))
    with pytest.raises(DecodeError, match="not in the Confluent Avro wire format"):
        dec.decode(None, b'{"op":"i"}', Origin(TOPIC, 0, 1))
    with pytest.raises(DecodeError, match="PROTOBUF schema"):
        dec.decode(None, b"\x00\x00\x00\x00\x09\x02", Origin(TOPIC, 0, 1))
    with pytest.raises(DecodeError, match="cannot be parsed"):
        dec.decode(None, b"\x00\x00\x00\x00\x0a\x02", Origin(TOPIC, 0, 1))
    with pytest.raises(DecodeError, match="does not match its Avro writer schema 7"):
        dec.decode(None, b"\x00\x00\x00\x00\x07\x02", Origin(TOPIC, 0, 1))


def test_avro_registry_outage_is_not_a_dead_letter():
    down = FakeRegistry({7: ConnectionRefusedError(111, "refused")})
    dec = EventDecoder(SCHEMA, value_format="avro", registry=down)
    with pytest.raises(RegistryUnavailable, match="schema id 7") as info:
        dec.decode(None, b"\x00\x00\x00\x00\x07\x02", Origin(TOPIC, 0, 1))
    assert not isinstance(info.value, DecodeError)

    class NotFound(Exception):
        http_status_code = 404

    missing = FakeRegistry({7: NotFound("Schema 7 not found")})
    dec = EventDecoder(SCHEMA, value_format="avro", registry=missing)
    with pytest.raises(DecodeError, match="unknown to the schema registry"):
        dec.decode(None, b"\x00\x00\x00\x00\x07\x02", Origin(TOPIC, 0, 1))


# -- nothing else escapes (hypothesis) -------------------------------------------------------

ALLOWED = (DecodeError, SchemaChanged)
AVRO_DEC = EventDecoder(SCHEMA, value_format="avro", registry=FakeRegistry({7: AVRO_VALUE, 8: AVRO_KEY}))
RAW = [(e["raw_key"], e["raw_value"]) for n in FIXTURE_NAMES for e in events_of(n)]


def _decode_anything(dec: EventDecoder, raw_key: Any, raw_value: Any) -> None:
    try:
        ev = dec.decode(raw_key, raw_value, Origin(TOPIC, 0, 0))
    except ALLOWED:
        return
    assert ev is None or isinstance(ev, ChangeEvent)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=64)), st.binary(max_size=512))
def test_prop_arbitrary_bytes_never_escape(raw_key, raw_value):
    _decode_anything(DEC, raw_key, raw_value)
    _decode_anything(AVRO_DEC, raw_key, raw_value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256), st.sampled_from([7, 8, 99]))
def test_prop_avro_garbage_after_a_known_schema_id_never_escapes(body, schema_id):
    _decode_anything(AVRO_DEC, b"\x00\x00\x00\x00\x08" + body, b"\x00" + schema_id.to_bytes(4, "big") + body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_events(draw) -> tuple[bytes | None, bytes]:
    raw_key, raw_value = draw(st.sampled_from(RAW))
    doc = {"key": json.loads(raw_key), "value": json.loads(raw_value)}
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(doc)[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        action = draw(st.sampled_from(["delete", "replace", "replace", "retype"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "retype":
            old = parent[path[-1]]
            parent[path[-1]] = [old] if not isinstance(old, list) else {"x": old}
        else:
            parent[path[-1]] = draw(json_values)
    key = draw(st.sampled_from([None, json.dumps(doc.get("key")).encode()]))
    return key, json.dumps(doc.get("value")).encode()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_prop_structurally_mutated_events_never_escape(record):
    raw_key, raw_value = record
    _decode_anything(DEC, raw_key, raw_value)
    _decode_anything(DEC, raw_key, json.dumps(envelope(json.loads(raw_value))).encode())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(RAW), st.sampled_from(sorted(SCHEMA.regular, key=lambda c: c.name)), json_values)
def test_prop_any_cell_value_in_any_column_never_escapes(raw, col, v):
    value = json.loads(raw[1])
    value["after"][col.name] = cell(v, None)
    _decode_anything(DEC, enc(raw[0]), json.dumps(value).encode())


# -- DESC clustering: bounds in clustering order (recorded) ----------------------------------
#
# Recorded on the local stack (Debezium 3.4.1.Final, Cassandra 5.0.9) for
#   CREATE TABLE c2pg_decode_probe.desc_range (pk int, c1 int, c2 text, v int,
#       PRIMARY KEY (pk, c1, c2)) WITH CLUSTERING ORDER BY (c1 DESC, c2 ASC) AND cdc = true
# The last statement (a multi-column slice over mixed orders) became three range tombstones.
DESC_STATEMENTS = [
    "DELETE FROM T WHERE pk = 1 AND c1 > 1 AND c1 <= 5",
    "DELETE FROM T WHERE pk = 1 AND c1 = 3 AND c2 > 'a'",
    "DELETE FROM T WHERE pk = 1 AND c1 >= 2",
    "DELETE FROM T WHERE pk = 1 AND c1 = 4",
    "DELETE FROM T WHERE pk = 1 AND (c1, c2) > (2, 'b') AND (c1, c2) < (7, 'q')",
]
DESC_RECORDS = [
    (2, 0, '{"pk":1,"c1":null,"c2":null}',
     '{"ts_ms":1795678886391,"op":"r","source":{"version":"3.4.1.Final","connector":"cassandra","name":"c2pg","ts_ms":1795678885063,"snapshot":"false","db":"NULL","sequence":null,"ts_us":1795678885063450,"ts_ns":1795678885063450000,"cluster":"c2pg-dev","file":"CommitLog-7-1795675836353.log","pos":46755,"keyspace":"c2pg_decode_probe","table":"desc_range"},"after":{"pk":{"value":1,"deletion_ts":null,"set":true},"c1":null,"c2":null,"v":null,"_range_start":{"method":"INCL_START_BOUND","values":[{"name":"c1","value":"5","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]},"_range_end":{"method":"EXCL_END_BOUND","values":[{"name":"c1","value":"1","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]}}}'),
    (2, 1, '{"pk":1,"c1":null,"c2":null}',
     '{"ts_ms":1795678886391,"op":"r","source":{"version":"3.4.1.Final","connector":"cassandra","name":"c2pg","ts_ms":1795678885075,"snapshot":"false","db":"NULL","sequence":null,"ts_us":1795678885075199,"ts_ns":1795678885075199000,"cluster":"c2pg-dev","file":"CommitLog-7-1795675836353.log","pos":46830,"keyspace":"c2pg_decode_probe","table":"desc_range"},"after":{"pk":{"value":1,"deletion_ts":null,"set":true},"c1":null,"c2":null,"v":null,"_range_start":{"method":"EXCL_START_BOUND","values":[{"name":"c1","value":"3","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"},{"name":"c2","value":"a","type":"org.apache.cassandra.db.marshal.UTF8Type"}]},"_range_end":{"method":"INCL_END_BOUND","values":[{"name":"c1","value":"3","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]}}}'),
    (2, 2, '{"pk":1,"c1":null,"c2":null}',
     '{"ts_ms":1795678886392,"op":"r","source":{"version":"3.4.1.Final","connector":"cassandra","name":"c2pg","ts_ms":1795678885086,"snapshot":"false","db":"NULL","sequence":null,"ts_us":1795678885086699,"ts_ns":1795678885086699000,"cluster":"c2pg-dev","file":"CommitLog-7-1795675836353.log","pos":46898,"keyspace":"c2pg_decode_probe","table":"desc_range"},"after":{"pk":{"value":1,"deletion_ts":null,"set":true},"c1":null,"c2":null,"v":null,"_range_start":{"method":"INCL_START_BOUND","values":[]},"_range_end":{"method":"INCL_END_BOUND","values":[{"name":"c1","value":"2","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]}}}'),
    (2, 3, '{"pk":1,"c1":null,"c2":null}',
     '{"ts_ms":1795678886392,"op":"r","source":{"version":"3.4.1.Final","connector":"cassandra","name":"c2pg","ts_ms":1795678885099,"snapshot":"false","db":"NULL","sequence":null,"ts_us":1795678885099072,"ts_ns":1795678885099072000,"cluster":"c2pg-dev","file":"CommitLog-7-1795675836353.log","pos":46971,"keyspace":"c2pg_decode_probe","table":"desc_range"},"after":{"pk":{"value":1,"deletion_ts":null,"set":true},"c1":null,"c2":null,"v":null,"_range_start":{"method":"INCL_START_BOUND","values":[{"name":"c1","value":"4","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]},"_range_end":{"method":"INCL_END_BOUND","values":[{"name":"c1","value":"4","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]}}}'),
    (2, 4, '{"pk":1,"c1":null,"c2":null}',
     '{"ts_ms":1795678886393,"op":"r","source":{"version":"3.4.1.Final","connector":"cassandra","name":"c2pg","ts_ms":1795678885110,"snapshot":"false","db":"NULL","sequence":null,"ts_us":1795678885110440,"ts_ns":1795678885110440000,"cluster":"c2pg-dev","file":"CommitLog-7-1795675836353.log","pos":47100,"keyspace":"c2pg_decode_probe","table":"desc_range"},"after":{"pk":{"value":1,"deletion_ts":null,"set":true},"c1":null,"c2":null,"v":null,"_range_start":{"method":"INCL_START_BOUND","values":[{"name":"c1","value":"7","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]},"_range_end":{"method":"EXCL_END_BOUND","values":[{"name":"c1","value":"7","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"},{"name":"c2","value":"q","type":"org.apache.cassandra.db.marshal.UTF8Type"}]}}}'),
    (2, 5, '{"pk":1,"c1":null,"c2":null}',
     '{"ts_ms":1795678886393,"op":"r","source":{"version":"3.4.1.Final","connector":"cassandra","name":"c2pg","ts_ms":1795678885110,"snapshot":"false","db":"NULL","sequence":null,"ts_us":1795678885110440,"ts_ns":1795678885110440000,"cluster":"c2pg-dev","file":"CommitLog-7-1795675836353.log","pos":47100,"keyspace":"c2pg_decode_probe","table":"desc_range"},"after":{"pk":{"value":1,"deletion_ts":null,"set":true},"c1":null,"c2":null,"v":null,"_range_start":{"method":"EXCL_START_BOUND","values":[{"name":"c1","value":"7","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]},"_range_end":{"method":"EXCL_END_BOUND","values":[{"name":"c1","value":"2","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]}}}'),
    (2, 6, '{"pk":1,"c1":null,"c2":null}',
     '{"ts_ms":1795678886393,"op":"r","source":{"version":"3.4.1.Final","connector":"cassandra","name":"c2pg","ts_ms":1795678885110,"snapshot":"false","db":"NULL","sequence":null,"ts_us":1795678885110440,"ts_ns":1795678885110440000,"cluster":"c2pg-dev","file":"CommitLog-7-1795675836353.log","pos":47100,"keyspace":"c2pg_decode_probe","table":"desc_range"},"after":{"pk":{"value":1,"deletion_ts":null,"set":true},"c1":null,"c2":null,"v":null,"_range_start":{"method":"EXCL_START_BOUND","values":[{"name":"c1","value":"2","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"},{"name":"c2","value":"b","type":"org.apache.cassandra.db.marshal.UTF8Type"}]},"_range_end":{"method":"INCL_END_BOUND","values":[{"name":"c1","value":"2","type":"org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)"}]}}}'),
]


def test_desc_clustering_bounds_follow_clustering_order():
    schema = make_schema("CREATE TABLE c2pg_decode_probe.desc_range (pk int, c1 int, c2 text, v int, "
                         "PRIMARY KEY (pk, c1, c2))")
    c1, c2 = schema.clustering
    schema = replace(schema, clustering=(replace(c1, descending=True), c2))
    dec = EventDecoder(schema)
    got = [dec.decode(k.encode(), v.encode(), Origin("c2pg.c2pg_decode_probe.desc_range", p, o))
           for p, o, k, v in DESC_RECORDS]
    assert all(ev.op is Op.RANGE_DELETE and ev.key == ("1",) and ev.cells == () for ev in got)
    assert [(ev.range_start, ev.range_end) for ev in got] == [
        (Bound(("5",), True), Bound(("1",), False)),           # c1 > 1 AND c1 <= 5: start = the greater
        (Bound(("3", "a"), False), Bound(("3",), True)),       # c1 = 3 AND c2 > 'a'
        (None, Bound(("2",), True)),                           # c1 >= 2: open at the start (the top)
        (Bound(("4",), True), Bound(("4",), True)),            # c1 = 4
        (Bound(("7",), True), Bound(("7", "q"), False)),       # (c1, c2) > (2, 'b') AND < (7, 'q') ...
        (Bound(("7",), False), Bound(("2",), False)),
        (Bound(("2", "b"), False), Bound(("2",), True)),
    ]
    assert len({ev.ts for ev in got[4:]}) == 1                  # ... one mutation, three tombstones


def test_stdlib_json_fallback_decodes_the_same(monkeypatch):
    import engine.sync.decode as decode_module

    expected = {n: decode_fixture(n) for n in FIXTURE_NAMES}
    monkeypatch.setattr(decode_module, "_loads", json.loads)
    monkeypatch.setattr(decode_module, "_JSON_ERRORS", (ValueError, RecursionError))
    assert {n: decode_fixture(n) for n in FIXTURE_NAMES} == expected
    with pytest.raises(DecodeError, match="not valid JSON"):
        DEC.decode(None, b"[" * 100_000, Origin(TOPIC, 0, 0))


def test_an_insert_marker_takes_the_ttl_its_live_values_share_and_only_then():
    dec = EventDecoder(make_schema("CREATE TABLE ks.t (id int, a text, b int, l list<int>, PRIMARY KEY (id))"))

    def marker(after: dict) -> int | None:
        return decode_value(event("i", {"id": cell(1), **after}), decoder=dec).marker_expires_us

    assert marker({"a": cell("x", 900), "b": cell(2, 900), "l": cell([1])}) == 900  # a collection carries none
    assert marker({"a": cell("x", 900), "b": cell(None, 100)}) == 900  # a null is a deletion, not a TTL
    # One mutation from a BATCH of an INSERT without TTL and an UPDATE with one: no marker TTL.
    assert marker({"a": cell("x"), "b": cell(2, 900)}) is None
    assert marker({"a": cell("x", 900), "b": cell(2, 800)}) is None
    assert marker({}) is None  # the key alone: the event has no TTL to read
    assert decode_value(event("u", {"id": cell(1), "a": cell("x", 900)}), decoder=dec).marker_expires_us is None
