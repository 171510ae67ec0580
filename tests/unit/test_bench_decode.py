"""benchmarks.decode and benchmarks.reduce_columns on a few hundred events: every columnar
decode candidate gives the per-event decoder's columns and dead letters, and every
columnar reduce candidate gives engine.sync.reduce.reduce_events's result (ADR 0010's
measurement is only worth its figures if these hold)."""

from __future__ import annotations

import random
import time

import pytest

pytest.importorskip("msgspec")
pytest.importorskip("polars")

from benchmarks import decode as bench  # noqa: E402
from benchmarks import reduce_columns  # noqa: E402
from engine.sync.decode import EventDecoder  # noqa: E402
from engine.types import codec, parse_cql_type  # noqa: E402

BATCH = 100


def _sets():
    fixture_schema, fixtures = bench.fixture_values(2 * 28)
    values = bench.bench_values(400)
    bad, _ = bench.with_bad_records(values, BATCH)
    return {"bench": (bench.bench_schema(), values), "fixtures": (fixture_schema, fixtures),
            "bad": (bench.bench_schema(), bad)}


@pytest.mark.parametrize("name", ["bench", "fixtures", "bad"])
def test_every_columnar_decoder_equals_the_per_event_decoder(name):
    schema, values = _sets()[name]
    lanes, skipped = bench.make_lanes(schema)
    decoder = EventDecoder(schema)
    for lane in lanes.values():
        if lane is not None:
            assert bench.check_equal(schema, decoder, lane, values, BATCH) == len(values)
    # pyarrow.json cannot read the fixture table's map and UDT columns; nothing else is skipped.
    assert set(skipped) == ({"C_pyarrow_json"} if name == "fixtures" else set())


def test_bad_records_are_dead_letters_with_the_decoders_reason():
    schema, values = _sets()["bad"]
    decoder = EventDecoder(schema)
    for lane in bench.make_lanes(schema)[0].values():
        if lane is None:
            continue
        for _, chunk, origins in bench.batches(values, BATCH):
            table, dead = bench.decode_batch(lane, decoder, chunk, origins)
            assert len(dead) == 1 and table.num_rows == len(chunk) - 1
            assert dead[0][1].startswith("DecodeError: cannot decode record bench partition 0 offset ")


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, 5.0, 1e15, 999999999999999.0, 1e16, 9.5e15, 1e-4, 1e-5,
                                   0.1, 123456.5, -2.25e300, 0.14285714285714285, float("nan"), float("inf"), None])
def test_column_wise_doubles_are_the_codecs_text(value):
    cd = codec(parse_cql_type("double"))
    texts, bad = bench.convert(cd, [value])
    assert texts.to_pylist() == [cd.from_debezium(value)] and not bad.any()


def test_column_wise_doubles_over_many_magnitudes():
    rnd = random.Random(5)
    values = [rnd.choice([-1, 1]) * rnd.random() * 10.0 ** rnd.randrange(-8, 20) for _ in range(3000)]
    values += [float(rnd.randrange(-10**17, 10**17)) for _ in range(1000)]
    cd = codec(parse_cql_type("double"))
    texts, _ = bench.convert(cd, values)
    assert texts.to_pylist() == [cd.from_debezium(v) for v in values]


def test_every_columnar_reducer_equals_reduce_events():
    schema = bench.bench_schema()
    now_us = int(time.time() * 1_000_000)
    for seed in range(8):
        events = reduce_columns.tie_events(schema, 200, now_us, seed)
        reduce_columns.check(schema, bench.events_table(schema, list(enumerate(events))), events, now_us)
    decoder = EventDecoder(schema)
    for _, chunk, origins in bench.batches(bench.bench_values(600), 300):
        events, _ = bench.decode_per_event(decoder, chunk, origins)
        reduce_columns.check(schema, bench.events_table(schema, events), [e for _, e in events], now_us)
