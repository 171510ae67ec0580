"""Avro events through the real schema registry (Apicurio, Confluent-compatible API).

The writer schema has the connector's event shape for a small table (the cell_value record
per column: value/deletion_ts/set); records are written in the Confluent wire format with
fastavro, read back by :class:`engine.sync.decode.EventDecoder` with a real
``SchemaRegistryClient``, and must equal the JSON decode of the same event.
"""

from __future__ import annotations

import json
import uuid

import pytest

from engine.sync.decode import DecodeError, EventDecoder, RegistryUnavailable
from engine.events import Bound, Cell, Op, Origin
from tests.unit.test_decode import (avro_key_schema, avro_value_schema, cell, event, make_schema,
                                    to_avro_record, wire)

REGISTRY_URL = "http://127.0.0.1:8081/apis/ccompat/v7"
SCHEMA = make_schema("CREATE TABLE ks.t (pk int, ck text, v bigint, b blob, at timestamp, day date, "
                     "tags set<text>, PRIMARY KEY (pk, ck))")
TOPIC = "c2pg.ks.t"


@pytest.fixture(scope="module")
def registry(stack):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient({"url": REGISTRY_URL})


@pytest.fixture(scope="module")
def schema_ids(registry):
    from confluent_kafka.schema_registry import Schema

    run = uuid.uuid4().hex[:8]                      # the registry is in memory, but shared by runs
    value_id = registry.register_schema(f"c2pg-test-decode-{run}-value",
                                        Schema(json.dumps(avro_value_schema(SCHEMA)), "AVRO"))
    key_id = registry.register_schema(f"c2pg-test-decode-{run}-key",
                                      Schema(json.dumps(avro_key_schema(SCHEMA)), "AVRO"))
    return value_id, key_id


EVENTS = [
    ("insert", None, event("i", {
        "pk": cell(1), "ck": cell("a"), "v": cell(9223372036854775807, 1795678725000000), "b": cell("yv4="),
        "at": cell(-14182939877), "day": cell(-25567), "tags": cell(["y", "x"])})),
    ("update", None, event("u", {"pk": cell(1), "ck": cell("a"), "v": cell(None), "tags": cell(["z"])})),
    ("row delete", {"pk": 1, "ck": "a"}, event("d", {
        "pk": cell(1), "ck": cell("a"), "v": cell(None, 100), "b": cell(None, 100), "at": cell(None, 100),
        "day": cell(None, 100), "tags": cell(None, 100)})),
    ("partition delete", {"pk": 1, "ck": None}, event("d", {
        "pk": cell(1), "ck": cell(None, 100), "v": cell(None, 100), "b": cell(None, 100),
        "at": cell(None, 100), "day": cell(None, 100), "tags": cell(None, 100)})),
]
_range = event("r", {"pk": cell(1)})
_range["after"]["_range_start"] = {"method": "EXCL_START_BOUND",
                                   "values": [{"name": "ck", "value": "a", "type": "UTF8Type"}]}
_range["after"]["_range_end"] = {"method": "INCL_END_BOUND",
                                 "values": [{"name": "ck", "value": "m", "type": "UTF8Type"}]}
EVENTS.append(("range delete", {"pk": 1, "ck": None}, _range))


@pytest.mark.parametrize("name, key, value", EVENTS, ids=[e[0] for e in EVENTS])
def test_avro_through_the_registry_decodes_like_json(registry, schema_ids, name, key, value):
    value_id, key_id = schema_ids
    o = Origin(TOPIC, 0, 42)
    expected = EventDecoder(SCHEMA).decode(None if key is None else json.dumps(key).encode(),
                                           json.dumps(value).encode(), o)
    dec = EventDecoder(SCHEMA, value_format="avro", registry=registry)
    raw_key = None if key is None else wire(key_id, avro_key_schema(SCHEMA), key)
    got = dec.decode(raw_key, wire(value_id, avro_value_schema(SCHEMA), to_avro_record(SCHEMA, value)), o)
    assert got == expected
    if name == "insert":
        assert got.cell_map() == {
            "at": Cell("1969-07-20 20:17:40.123+00", 100), "b": Cell("\\\\xcafe", 100),
            "day": Cell("1900-01-01", 100), "tags": Cell("{x,y}", 100),
            "v": Cell("9223372036854775807", 100, 1795678725000000)}
    if name == "range delete":
        assert (got.op, got.key, got.range_start, got.range_end) == (
            Op.RANGE_DELETE, ("1",), Bound(("a",), False), Bound(("m",), True))


def test_schema_is_fetched_once_per_id(registry, schema_ids):
    value_id, _ = schema_ids
    dec = EventDecoder(SCHEMA, value_format="avro", registry=registry)
    raw = wire(value_id, avro_value_schema(SCHEMA), to_avro_record(SCHEMA, EVENTS[0][2]))
    for offset in range(3):
        assert dec.decode(None, raw, Origin(TOPIC, 0, offset)).op is Op.UPSERT
    assert list(dec._avro_schemas) == [value_id]


def test_unknown_schema_id_is_a_decode_error(registry, schema_ids):
    dec = EventDecoder(SCHEMA, value_format="avro", registry=registry)
    unknown = 2**31 - 7                             # far beyond any id this registry hands out
    raw = wire(unknown, avro_value_schema(SCHEMA), to_avro_record(SCHEMA, EVENTS[0][2]))
    with pytest.raises(DecodeError) as info:
        dec.decode(None, raw, Origin(TOPIC, 2, 7))
    assert f"schema id {unknown} is unknown" in str(info.value)
    assert "partition 2 offset 7" in str(info.value)


def test_unreachable_registry_is_not_a_decode_error():
    from confluent_kafka.schema_registry import SchemaRegistryClient

    dead = SchemaRegistryClient({"url": "http://127.0.0.1:9/apis/ccompat/v7", "max.retries": 0})
    dec = EventDecoder(SCHEMA, value_format="avro", registry=dead)
    with pytest.raises(RegistryUnavailable):
        dec.decode(None, b"\x00\x00\x00\x00\x01\x02", Origin(TOPIC, 0, 1))
