"""engine.cassandra_bytes against an independent oracle: the cassandra-driver's serializers.

For every CQL type c2pg maps: a value as the driver hands it over → c2pg's canonical COPY
text (``Codec.from_driver``) → :func:`engine.cassandra_bytes.serializer` must give exactly
the bytes the driver itself sends to Cassandra for that value (``cqltypes.*.serialize``).
Values are drawn where the canonical text keeps everything (time and duration in whole
microseconds, decimals without a negative scale, one NaN); sets and maps are handed to the
driver already in Cassandra's order, computed here from Python's own order of the values.
"""

from __future__ import annotations

import ipaddress
import uuid
from decimal import Decimal

from cassandra import cqltypes as ct
from cassandra.util import Date, Duration, Time
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cassandra_bytes import order_bytes, serializer, uvint, vint
from engine.types import codec, parse_cql_type

V = 4  # native protocol version: int32 sizes in collections (v3 and later)

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
ASCII = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=12)
# PostgreSQL's ranges (docs/types.md): timestamps in epoch ms, dates in days since 1970.
EPOCH_MS = st.integers(-210_866_803_200_000, 9_224_318_015_999_999)
DAYS = st.integers(-2_440_588, 2_145_042_905)
DECIMALS = st.builds(lambda sign, digits, scale: Decimal((sign, tuple(int(c) for c in str(digits)), -scale)),
                     st.integers(0, 1), st.integers(0, 10**40), st.integers(0, 40))
FLOAT32 = st.floats(width=32, allow_nan=False)
FLOAT64 = st.floats(allow_nan=False)
DURATIONS = st.builds(lambda m, d, us: Duration(m, d, us * 1000), INT32, INT32,
                      st.integers(-(2**63 // 1000), (2**63 - 1) // 1000))
INETS = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))

# CQL type → (driver type, strategy of driver values)
SCALARS = {
    "int": (ct.Int32Type, INT32),
    "bigint": (ct.LongType, INT64),
    "counter": (ct.CounterColumnType, INT64),
    "smallint": (ct.ShortType, st.integers(-(2**15), 2**15 - 1)),
    "tinyint": (ct.ByteType, st.integers(-128, 127)),
    "varint": (ct.IntegerType, st.integers(-(10**60), 10**60)),
    "decimal": (ct.DecimalType, DECIMALS),
    "float": (ct.FloatType, FLOAT32),
    "double": (ct.DoubleType, FLOAT64),
    "boolean": (ct.BooleanType, st.booleans()),
    "text": (ct.UTF8Type, TEXT),
    "ascii": (ct.AsciiType, ASCII),
    "varchar": (ct.VarcharType, TEXT),
    "blob": (ct.BytesType, st.binary(max_size=16)),
    "uuid": (ct.UUIDType, st.uuids()),
    "timeuuid": (ct.TimeUUIDType, st.uuids(version=1)),
    "timestamp": (ct.DateType, EPOCH_MS),
    "date": (ct.SimpleDateType, DAYS.map(Date)),
    "time": (ct.TimeType, st.integers(0, 86_399_999_999).map(lambda us: Time(us * 1000))),
    "inet": (ct.InetAddressType, INETS),
    "duration": (ct.DurationType, DURATIONS),
}


def ours(cql: str, value, udts=None) -> bytes:
    t = parse_cql_type(cql, udts)
    text = codec(t).from_driver(value)
    assert text is not None
    return serializer(t)(text)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_scalar_type_serializes_like_the_driver(data):
    for cql, (driver, values) in SCALARS.items():
        v = data.draw(values, label=cql)
        assert ours(cql, v) == driver.serialize(v, V), (cql, v)


def test_nan_and_the_special_floats():
    for v in (float("nan"), float("inf"), float("-inf"), -0.0, 5e-324):
        assert ours("double", v) == ct.DoubleType.serialize(v, V)
    for v in (float("nan"), float("inf"), -0.0, 1e-45, 3.4028234663852886e38):
        assert ours("float", v) == ct.FloatType.serialize(v, V)


def test_the_issue_examples_order_as_cassandra_kept_them():
    # Cassandra kept 10 over 9 and -1 over 1 (written at the same USING TIMESTAMP).
    assert ours("int", 10) > ours("int", 9)
    assert ours("int", -1) > ours("int", 1)
    assert ours("bigint", -1) > ours("bigint", 1) and ours("varint", -1) > ours("varint", 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**63), 2**63 - 1))
def test_vints_are_the_drivers(n):
    from cassandra.marshal import uvint_pack, vints_pack

    assert vint(n) == vints_pack([n])
    assert uvint(abs(n)) == uvint_pack(abs(n))


def _param(cls, *params):
    return cls.apply_parameters(params)


@settings(max_examples=60, deadline=None)
@given(st.lists(INT32, max_size=5), st.lists(TEXT, max_size=4), st.lists(st.one_of(st.none(), INT32), max_size=4))
def test_lists_and_vectors(ints, texts, nullable):
    assert ours("frozen<list<int>>", ints) == _param(ct.ListType, ct.Int32Type).serialize(ints, V)
    assert ours("list<text>", texts or ["x"]) == _param(ct.ListType, ct.UTF8Type).serialize(texts or ["x"], V)
    assert ours("frozen<list<frozen<list<int>>>>", [ints, ints[:1]]) == _param(
        ct.ListType, _param(ct.ListType, ct.Int32Type)).serialize([ints, ints[:1]], V)
    vec = ct.lookup_casstype("org.apache.cassandra.db.marshal.VectorType(org.apache.cassandra.db.marshal.FloatType, 3)")
    floats = [float(x) for x in (ints + [0, 1, 2])[:3]]
    assert ours("vector<float, 3>", floats) == vec.serialize(floats, V)
    tvec = ct.lookup_casstype("org.apache.cassandra.db.marshal.VectorType(org.apache.cassandra.db.marshal.UTF8Type, 2)")
    pair = (texts + ["a", "b"])[:2]
    assert ours("vector<text, 2>", pair) == tvec.serialize(pair, V)


@settings(max_examples=60, deadline=None)
@given(st.sets(INT32, max_size=6), st.sets(TEXT, max_size=5), st.sets(st.integers(-(10**30), 10**30), max_size=4),
       st.sets(FLOAT64, max_size=4))
def test_sets_are_written_in_cassandras_element_order(ints, texts, big, floats):
    # Cassandra keeps a set sorted by its element type: numbers by value, text by UTF-8
    # bytes (= Python's code point order). The driver writes what it is given, in order.
    assert ours("frozen<set<int>>", ints) == _param(ct.SetType, ct.Int32Type).serialize(sorted(ints), V)
    assert ours("set<text>", texts or {"x"}) == _param(ct.SetType, ct.UTF8Type).serialize(sorted(texts or {"x"}), V)
    assert ours("set<varint>", big or {1}) == _param(ct.SetType, ct.IntegerType).serialize(sorted(big or {1}), V)
    floats = {f for f in floats if f != 0.0}  # -0.0 == 0.0 in Python: one set element
    assert ours("set<double>", floats or {1.0}) == _param(ct.SetType, ct.DoubleType).serialize(
        sorted(floats or {1.0}), V)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(INT32, TEXT, max_size=5), st.dictionaries(TEXT, st.lists(INT32, max_size=3), max_size=4),
       st.dictionaries(st.integers(-62135596800000, 253402300799999), DAYS.map(Date), max_size=3))
def test_maps_are_written_in_cassandras_key_order(by_int, by_text, by_ts):
    m1 = _param(ct.MapType, ct.Int32Type, ct.UTF8Type)
    by_int = by_int or {1: "a"}
    assert ours("frozen<map<int, text>>", by_int) == m1.serialize(dict(sorted(by_int.items())), V)
    m2 = _param(ct.MapType, ct.UTF8Type, _param(ct.ListType, ct.Int32Type))
    assert ours("map<text, frozen<list<int>>>", by_text or {"a": []}) == m2.serialize(
        dict(sorted((by_text or {"a": []}).items())), V)
    import datetime

    m3 = _param(ct.MapType, ct.DateType, ct.SimpleDateType)
    as_dt = {datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=k): v for k, v in by_ts.items()}
    assert ours("frozen<map<timestamp, date>>", as_dt or {datetime.datetime(2000, 1, 1): Date(1)}) == m3.serialize(
        dict(sorted((as_dt or {datetime.datetime(2000, 1, 1): Date(1)}).items())), V)


UDTS = {"address": (("street", "text"), ("zip", "int"), ("tags", "frozen<set<text>>"), ("at", "timestamp"),
                    ("span", "duration"), ("price", "decimal"), ("at_time", "time"))}


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), TEXT), st.one_of(st.none(), INT32), st.sets(TEXT, max_size=3),
       st.one_of(st.none(), EPOCH_MS.filter(lambda ms: -62135596800000 <= ms < 253402300800000)),
       st.one_of(st.none(), DURATIONS), st.one_of(st.none(), DECIMALS),
       st.one_of(st.none(), st.integers(0, 86_399_999_999_999)))
def test_udts_and_tuples(street, zip_, tags, at_ms, span, price, at_ns):
    import datetime
    from collections import namedtuple

    at = None if at_ms is None else datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=at_ms)
    address = namedtuple("address", [f for f, _ in UDTS["address"]])(street, zip_, tags, at, span, price,
                                                                      None if at_ns is None else Time(at_ns))
    driver_udt = ct.UserType.make_udt_class("ks", "address", [f for f, _ in UDTS["address"]],
                                            [ct.UTF8Type, ct.Int32Type, _param(ct.SetType, ct.UTF8Type), ct.DateType,
                                             ct.DurationType, ct.DecimalType, ct.TimeType])
    as_driver = address._replace(tags=sorted(tags))
    assert ours("frozen<address>", address, UDTS) == driver_udt.serialize(as_driver, V)
    tup = _param(ct.TupleType, ct.Int32Type, ct.UTF8Type, ct.DurationType)
    assert ours("tuple<int, text, duration>", (zip_, street, span)) == tup.serialize((zip_, street, span), V)


def test_set_order_of_uuids_follows_uuidtype_and_timeuuidtype():
    """Cassandra's UUIDType: version first, a version-1 uuid by its timestamp, any other by
    its unsigned high half; then the low half unsigned. TimeUUIDType: timestamp, then the
    low half as signed bytes (the oracle below is written from those rules, not the code)."""
    u1 = [uuid.UUID(f"{low:08x}-0000-1{hi:03x}-{clk:04x}-000000000000")
          for low, hi, clk in ((5, 0, 0x8000), (1, 1, 0x0000), (0, 0, 0xff00), (0, 0, 0x0100))]
    u4 = [uuid.UUID("f0000000-0000-4000-8000-000000000000"), uuid.UUID("00000000-0000-4000-0000-000000000001")]

    def uuidtype(u):
        version = (u.int >> 76) & 0xF
        return (version, u.time if version == 1 else u.int >> 64, u.int & (2**64 - 1))

    def timeuuidtype(u):
        low = (u.int & (2**64 - 1)).to_bytes(8, "big")
        return (u.time, [b - 256 if b >= 128 else b for b in low])

    for cql, key, values in (("uuid", uuidtype, u1 + u4), ("timeuuid", timeuuidtype, u1)):
        t = parse_cql_type(cql)
        k = order_bytes(t)
        assert sorted(values, key=lambda u: k(u.bytes)) == sorted(values, key=key), cql


def test_inet_sets_follow_address_bytes_and_floats_put_negative_zero_first():
    key = order_bytes(parse_cql_type("inet"))
    addrs = ["10.0.0.1", "9.255.0.0", "::1", "255.0.0.0"]
    assert sorted(addrs, key=lambda a: key(ipaddress.ip_address(a).packed)) == ["::1", "9.255.0.0", "10.0.0.1",
                                                                                  "255.0.0.0"]
    fkey = order_bytes(parse_cql_type("double"))
    values = [float("nan"), 1.0, -0.0, 0.0, float("-inf"), -2.5]
    got = sorted(values, key=lambda f: fkey(ct.DoubleType.serialize(f, V)))
    assert [repr(x) for x in got] == ["-inf", "-2.5", "-0.0", "0.0", "1.0", "nan"]


def test_negative_zero_inside_jsonb_is_the_zero_jsonb_stores():
    # jsonb keeps a JSON number as numeric, which has no -0: the merge sees 0.0, so must we.
    assert ours("tuple<double, int>", (-0.0, 1)) == ours("tuple<double, int>", (0.0, 1))
    assert ours("frozen<map<double, int>>", {-0.0: 1}) == _param(ct.MapType, ct.DoubleType, ct.Int32Type).serialize(
        {-0.0: 1}, V)
