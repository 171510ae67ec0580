"""engine.types without servers: parsing, the mapping table, canonical COPY text for every
type and edge value, the Debezium and psycopg2 forms, and property tests that what
``from_driver`` writes reads back as the same value."""

from __future__ import annotations

import base64
import json
import math
import pickle
import struct
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from cassandra.util import Date, Duration, OrderedMapSerializedKey, SortedSet, Time
from hypothesis import assume, given, settings, strategies as st

from engine.errors import C2pgError
from engine.types import (COPY_NULL, Codec, CqlType, PgType, TypeMappingError, ValueConversionError,
                          codec, copy_line, parse_cql_type, pg_type)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"
ADDRESS = {"address": (("street", "text"), ("zip", "int"))}


def c(text: str, **kw) -> Codec:
    return codec(parse_cql_type(text, ADDRESS), **kw)


# -- a COPY text reader, independent of engine.types ----------------------------------------

_UNESC = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}


def copy_unescape(field: str | None) -> str | None:
    if field is None or field == "\\N":
        return None
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        assert ch not in "\t\n\r", "raw delimiter/newline in a COPY field"
        if ch == "\\":
            out.append(_UNESC[field[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def array_elements(literal: str) -> list[str | None]:
    """A one-dimensional PostgreSQL array literal → element texts (None for NULL): the
    comparison oracle's reader (``engine.compare``), which shares no code with engine.types."""
    from engine.compare import _pg_array

    return _pg_array(literal)


# PostgreSQL's array whitespace (arrayfuncs.c array_isspace): only these six, all ASCII.
PG_ARRAY_SPACE = " \t\n\r\v\f"


def array_out(elements: list[str | None]) -> str:
    """PostgreSQL's ``array_out`` of a one-dimensional text[]: an element is quoted when it is
    empty, reads as NULL, or holds ``"``, ``\\``, ``{``, ``}``, ``,`` or array whitespace;
    inside quotes ``"`` and ``\\`` are backslash-escaped."""
    def one(e: str | None) -> str:
        if e is None:
            return "NULL"
        if e == "" or e.upper() == "NULL" or any(ch in '"\\{},' + PG_ARRAY_SPACE for ch in e):
            return '"' + e.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return e
    return "{" + ",".join(one(e) for e in elements) + "}"


# -- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,kind", [
    ("int", "int"), ("varchar", "text"), ("text", "text"), ("ascii", "ascii"), ("counter", "counter"),
    ("timeuuid", "timeuuid"), ("duration", "duration"), ("  BIGINT ", "bigint"),
])
def test_parse_scalars(text, kind):
    assert parse_cql_type(text) == CqlType(kind)


def test_parse_nested_frozen_collections_freeze_everything_inside():
    t = parse_cql_type("frozen<list<map<text, int>>>")
    inner = CqlType("map", (CqlType("text"), CqlType("int")), frozen=True)
    assert t == CqlType("list", (inner,), frozen=True)
    assert t.cql() == "frozen<list<frozen<map<text, int>>>>"
    assert parse_cql_type("frozen<list<frozen<map<text, int>>>>") == t


def test_parse_vector_tuple_and_udts():
    v = parse_cql_type("vector<float, 3>")
    assert (v.kind, v.params, v.dimension, v.name) == ("vector", (CqlType("float"),), 3, None)
    assert v.cql() == "vector<float, 3>"
    tup = parse_cql_type("tuple<int, text>")
    assert tup == CqlType("tuple", (CqlType("int"), CqlType("text")), frozen=True)
    assert parse_cql_type(tup.cql()) == tup
    udts = {"address": (("street", "text"), ("zip", "int")),
            "Person": (("name", "text"), ("home", "frozen<address>"), ("tags", "frozen<set<text>>"))}
    a = parse_cql_type("frozen<address>", udts)
    assert (a.kind, a.name, a.field_names, a.frozen) == ("udt", "address", ("street", "zip"), True)
    assert parse_cql_type("address", udts).frozen is False
    p = parse_cql_type('frozen<"Person">', udts)
    assert p.name == "Person" and p.params[1] == a and p.params[2].frozen
    assert p.cql() == 'frozen<"Person">'
    assert parse_cql_type(p.cql(), udts) == p
    assert parse_cql_type('ks."Person"', udts) == parse_cql_type('"Person"', udts)


@pytest.mark.parametrize("text", ["nosuchtype", "frozen<nosuch>",
                                  "'org.apache.cassandra.db.marshal.DateType'", "list<int", "map<int>",
                                  "vector<float, 0>", "int int", "list<>"])
def test_unknown_or_malformed_types_raise_naming_the_text(text):
    with pytest.raises(TypeMappingError) as e:
        parse_cql_type(text)
    assert text in str(e.value) or repr(text) in str(e.value)
    assert isinstance(e.value, C2pgError)


# -- the mapping table -----------------------------------------------------------------------

@pytest.mark.parametrize("text,sql,is_array,is_json", [
    ("ascii", "text", False, False), ("text", "text", False, False), ("varchar", "text", False, False),
    ("tinyint", "smallint", False, False), ("smallint", "smallint", False, False),
    ("int", "integer", False, False), ("bigint", "bigint", False, False), ("counter", "bigint", False, False),
    ("varint", "numeric", False, False), ("decimal", "numeric", False, False),
    ("float", "real", False, False), ("double", "double precision", False, False),
    ("boolean", "boolean", False, False), ("blob", "bytea", False, False),
    ("uuid", "uuid", False, False), ("timeuuid", "uuid", False, False), ("inet", "inet", False, False),
    ("timestamp", "timestamp with time zone", False, False), ("date", "date", False, False),
    ("time", "time", False, False), ("duration", "interval", False, False),
    ("list<int>", "integer[]", True, False), ("set<text>", "text[]", True, False),
    ("frozen<list<timestamp>>", "timestamp with time zone[]", True, False),
    ("list<blob>", "bytea[]", True, False), ("list<duration>", "interval[]", True, False),
    ("vector<float, 3>", "real[]", True, False), ("vector<int, 2>", "integer[]", True, False),
    ("map<int, text>", "jsonb", False, True), ("frozen<address>", "jsonb", False, True),
    ("tuple<int, text>", "jsonb", False, True), ("list<frozen<list<int>>>", "jsonb", False, True),
    ("list<frozen<address>>", "jsonb", False, True), ("set<frozen<tuple<int, int>>>", "jsonb", False, True),
    ("vector<frozen<list<int>>, 2>", "jsonb", False, True),
])
def test_pg_type(text, sql, is_array, is_json):
    assert pg_type(parse_cql_type(text, ADDRESS)) == PgType(sql, is_array, is_json)


def test_time_as_bigint():
    assert pg_type(CqlType("time"), time_as="bigint").sql == "bigint"
    assert pg_type(parse_cql_type("list<time>"), time_as="bigint").sql == "bigint[]"
    assert c("time", time_as="bigint").from_driver(Time(86399123456789)) == "86399123456789"
    assert c("list<time>", time_as="bigint").from_driver([Time(1), Time(2)]) == "{1,2}"


# -- scalars through from_driver --------------------------------------------------------------

def test_text_empty_vs_null_escaping_and_unicode():
    t = c("text")
    assert t.from_driver("") == ""
    assert t.from_driver(None) is None
    assert t.from_driver("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert t.from_driver("\\N") == "\\\\N"                        # a text "\N" is not NULL
    assert t.from_driver("héllo 🌍") == "héllo 🌍"
    assert c("ascii").from_driver("plain") == "plain"


def test_text_with_nul_is_a_value_conversion_error():
    for codec_ in (c("text"), c("ascii"), c("list<text>"), c("map<text, int>"), c("frozen<address>")):
        value = {"text": "a\x00b", "ascii": "\x00", "list": ["ok", "\x00"], "map": {"\x00": 1},
                 "udt": ("\x00", 1)}[codec_.cql_type.kind]
        with pytest.raises(ValueConversionError,
                           match=r"NUL byte \(0x00\), which PostgreSQL text cannot store"):
            codec_.from_driver(value)


@pytest.mark.parametrize("text,value,expected", [
    ("tinyint", -128, "-128"), ("smallint", 32767, "32767"), ("int", -2147483648, "-2147483648"),
    ("bigint", 9223372036854775807, "9223372036854775807"), ("counter", -1, "-1"),
    ("varint", 10**40, "1" + "0" * 40), ("varint", -(10**40), "-1" + "0" * 40), ("varint", 0, "0"),
    ("decimal", Decimal("1.000000000000000000000000000001"), "1.000000000000000000000000000001"),
    ("decimal", Decimal("-0.00"), "0.00"), ("decimal", Decimal("1E+30"), "1" + "0" * 30),
    ("decimal", Decimal("1E+3"), "1000"), ("decimal", Decimal("1.50"), "1.50"),
    ("decimal", Decimal("-12345.678901234567890123"), "-12345.678901234567890123"),
    ("decimal", Decimal("1E-10"), "0.0000000001"), ("decimal", Decimal("0E+5"), "0"),
    ("float", 1.5, "1.5"), ("float", struct.unpack("f", struct.pack("f", 0.1))[0], "0.1"),
    ("float", float("nan"), "NaN"), ("float", float("inf"), "Infinity"),
    ("float", float("-inf"), "-Infinity"),
    ("float", 3.4028234663852886e38, "3.4028235e+38"), ("float", -0.0, "-0.0"),
    ("double", -2.25e300, "-2.25e+300"), ("double", 0.1, "0.1"), ("double", 5e-324, "5e-324"),
    ("double", float("nan"), "NaN"), ("double", float("inf"), "Infinity"),
    ("double", float("-inf"), "-Infinity"),
    ("boolean", True, "t"), ("boolean", False, "f"),
    ("blob", b"\xca\xfe", "\\\\xcafe"), ("blob", b"", "\\\\x"),
    ("uuid", uuid.UUID("6F1C6D2C-5B3C-4D1E-9F7A-0123456789AB"), "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab"),
    ("timeuuid", uuid.UUID("50554d6e-29bb-11e5-b345-feff819cdc9f"), "50554d6e-29bb-11e5-b345-feff819cdc9f"),
    ("inet", "192.168.0.1", "192.168.0.1"), ("inet", "::ffff:1.2.3.4", "::ffff:1.2.3.4"),
    ("timestamp", datetime(1969, 7, 20, 20, 17, 40, 123000), "1969-07-20 20:17:40.123+00"),
    ("timestamp", datetime(1900, 1, 1, 0, 0, 0, 1000), "1900-01-01 00:00:00.001+00"),
    ("timestamp", datetime(9999, 12, 31, 23, 59, 59, 999000), "9999-12-31 23:59:59.999+00"),
    ("timestamp", datetime(1, 1, 1), "0001-01-01 00:00:00+00"),
    ("timestamp", datetime(2024, 2, 29, 12, 0, 0, 120000, tzinfo=timezone(timedelta(hours=2))),
     "2024-02-29 10:00:00.12+00"),
    ("timestamp", 253402300800000, "10000-01-01 00:00:00+00"),          # epoch ms (toUnixTimestamp)
    ("timestamp", -62135596800001, "0001-12-31 23:59:59.999+00 BC"),
    ("date", Date(-25567), "1900-01-01"), ("date", Date(0), "1970-01-01"),
    ("date", date(2024, 2, 29), "2024-02-29"),
    ("date", Date(-719163), "0001-12-31 BC"), ("date", Date(-2440588), "4714-11-24 BC"),
    ("date", Date(2145042905), "5874897-12-31"), ("date", Date(2932897), "10000-01-01"),
    ("time", Time(86399123456789), "23:59:59.123456"), ("time", Time(0), "00:00:00"),
    ("time", Time(86399999999999), "23:59:59.999999"), ("time", time(1, 2, 3, 4), "01:02:03.000004"),
    ("duration", Duration(1, 2, 1000004006), "1 mon 2 days 00:00:01.000004"),
    ("duration", Duration(0, 0, 3723004005006), "01:02:03.004005"),
    ("duration", Duration(0, 0, 0), "00:00:00"), ("duration", Duration(12, 1, 0), "1 year 1 day"),
    ("duration", Duration(-14, -3, -14706000007999), "-1 years -2 mons -3 days -04:05:06.000007"),
    ("duration", Duration(0, 0, -999), "00:00:00"),
    ("duration", Duration(2147483647, 2147483647, 9223372036854775807),
     "178956970 years 7 mons 2147483647 days 2562047:47:16.854775"),
])
def test_scalar_from_driver(text, value, expected):
    assert c(text).from_driver(value) == expected


def test_timestamp_datetime_float_error_is_rounded_away():
    # The driver builds datetimes from ms / 1000.0: far from 1970 that is off by µs.
    ms = 253402300799999                                           # 9999-12-31 23:59:59.999
    drifted = datetime(1970, 1, 1) + timedelta(seconds=ms / 1000.0)
    assert drifted.microsecond != 999000
    assert c("timestamp").from_driver(drifted) == "9999-12-31 23:59:59.999+00"


@pytest.mark.parametrize("text,value,match", [
    ("timestamp", 9224318016000000, "timestamptz range"),
    ("timestamp", -210866803200001, "timestamptz range"),
    ("date", Date(-2440589), "date range"), ("date", Date(2145042906), "date range"),
    ("date", Date(2**31 - 1), "date range"), ("date", Date(-(2**31)), "date range"),
    ("decimal", Decimal((0, (1,), -16384)), "16383"), ("decimal", Decimal("1E+131072"), "numeric's range"),
    ("decimal", Decimal("1E-2147483648"), "numeric's range"), ("time", -1, "time of day"),
])
def test_values_postgres_cannot_store(text, value, match):
    with pytest.raises(ValueConversionError, match=match):
        c(text).from_driver(value)


@pytest.mark.parametrize("value", [10**12, 17, [1, 2], 1.5, True])
def test_a_blob_from_debezium_must_be_base64_text_and_a_number_never_allocates(value):
    # bytes(10**12) would ask for a terabyte: one bad event must not take the worker down.
    with pytest.raises(ValueConversionError, match="base64"):
        c("blob").from_debezium(value)


def test_decimal_numeric_limits_inclusive():
    assert len(c("decimal").from_driver(Decimal((0, (1,), -16383)))) == 16385
    assert c("decimal").from_driver(Decimal("1E+131071")) == "1" + "0" * 131071


def test_huge_varint_beyond_python_str_limit():
    v = 10**5000
    assert c("varint").from_driver(v) == "1" + "0" * 5000
    assert c("varint").from_debezium("-" + "9" * 5000) == "-" + "9" * 5000


# -- collections, UDTs, tuples, vectors ---------------------------------------------------------

def test_arrays_quote_and_escape_like_postgres():
    lt = c("list<text>")
    assert lt.from_driver(["a b", 'c"d', None]) == '{"a b","c\\\\"d",NULL}'
    assert copy_unescape(lt.from_driver(["a b", 'c"d', None])) == '{"a b","c\\"d",NULL}'
    assert copy_unescape(lt.from_driver(["", "NULL", "null", "x\\y", "{}", ",", "tab\t"])) == \
        '{"","NULL","null","x\\\\y","{}",",","tab\t"}'
    assert lt.from_driver(["plain", "🌍"]) == "{plain,🌍}"
    assert c("list<blob>").from_driver([b"\xca\xfe", b""]) == r'{"\\\\xcafe","\\\\x"}'
    assert copy_unescape(c("list<blob>").from_driver([b"\xca\xfe"])) == '{"\\\\xcafe"}'
    assert c("set<timestamp>").from_driver(SortedSet([datetime(2020, 1, 1), datetime(1900, 1, 1)])) == \
        '{"1900-01-01 00:00:00+00","2020-01-01 00:00:00+00"}'
    assert c("list<double>").from_driver([float("nan"), 1.5, float("-inf")]) == "{NaN,1.5,-Infinity}"
    assert c("list<duration>").from_driver([Duration(1, 0, 0)]) == '{"1 mon"}'


def test_empty_collections_frozen_vs_not():
    assert c("list<int>").from_driver([]) is None                 # what Cassandra returns anyway
    assert c("set<text>").from_driver(SortedSet()) is None
    assert c("map<text, int>").from_driver(OrderedMapSerializedKey(None, 0)) is None
    assert c("frozen<list<int>>").from_driver([]) == "{}"
    assert c("frozen<set<text>>").from_driver(SortedSet()) == "{}"
    assert c("frozen<map<text, int>>").from_driver({}) == "{}"
    assert c("frozen<list<frozen<list<int>>>>").from_driver([]) == "[]"
    assert c("list<frozen<list<int>>>").from_driver([[1], []]) == "[[1],[]]"


def test_sets_are_in_value_order():
    assert c("set<int>").from_driver([3, 1, 2]) == "{1,2,3}"
    assert c("set<double>").from_driver([float("nan"), 0.0, -0.0, float("-inf")]) == \
        "{-Infinity,-0.0,0.0,NaN}"
    # inet addresses sort as text, like the driver's SortedSet of str
    assert c("set<inet>").from_debezium(["/9.0.0.1", "/10.0.0.1"]) == "{10.0.0.1,9.0.0.1}"
    assert c("set<frozen<list<int>>>").from_driver([[2], [1, 5]]) == "[[1,5],[2]]"


def test_maps_as_jsonb_objects_in_jsonb_key_order():
    m = c("map<text, int>")
    assert m.pg.is_json
    assert m.from_driver({"k2": 2, "bb": 3, "a": 1, "é": 4}) == '{"a":1,"bb":3,"k2":2,"é":4}'
    assert c("map<int, text>").from_driver({10: "ten", 9: "nine", -1: ""}) == \
        '{"9":"nine","-1":"","10":"ten"}'
    assert c("map<timestamp, blob>").from_driver({datetime(1969, 7, 20, 20, 17, 40, 123000): b"\x00"}) == \
        '{"1969-07-20T20:17:40.123Z":"\\\\\\\\x00"}'
    assert copy_unescape(c("map<text, text>").from_driver({"a\tb": 'q"\\'})) == '{"a\\tb":"q\\"\\\\"}'
    assert c("map<frozen<list<int>>, int>").from_driver({(1, 2): 3}) == '{"[1,2]":3}'
    assert c("map<text, frozen<map<int, boolean>>>").from_driver({"x": {1: True}}) == '{"x":{"1":true}}'


def test_json_scalars():
    row = c("frozen<tuple<int, decimal, varint, double, float, blob, uuid, inet, timestamp, date, time, "
            "duration, boolean, text>>")
    value = (1, Decimal("1.000000000000000000000000000001"), 10**40, float("nan"), float("inf"), b"\xca",
             uuid.UUID(int=1), "::1", datetime(1969, 7, 20, 20, 17, 40, 123000), Date(-25567),
             Time(86399123456789), Duration(1, 2, 3_000_000_004), False, "🌍\n")
    got = copy_unescape(row.from_driver(value))
    assert got == ('[1,1.000000000000000000000000000001,1' + "0" * 40 + ',"NaN","Infinity","\\\\xca",'
                   '"00000000-0000-0000-0000-000000000001","::1","1969-07-20T20:17:40.123Z","1900-01-01",'
                   '"23:59:59.123456789","P1M2DT3.000000004S",false,"🌍\\n"]')
    assert json.loads(got, parse_float=Decimal)[1] == Decimal("1.000000000000000000000000000001")
    far = c("frozen<tuple<timestamp, date, double>>").from_driver((253402300800000, Date(-800000), -0.0))
    assert far == '["+10000-01-01T00:00:00.000Z","-0221-09-04",-0.0]'


def test_udt_and_tuple_nulls():
    addr = c("frozen<address>")
    assert addr.from_driver(("Main", 12345)) == '{"street":"Main","zip":12345}'
    assert addr.from_driver(("Main", None)) == '{"street":"Main","zip":null}'
    assert addr.from_driver((None, None)) == '{"street":null,"zip":null}'      # frozen: a value
    assert addr.from_driver(("Old",)) == '{"street":"Old","zip":null}'          # field added later
    assert c("address").from_driver((None, None)) is None                     # non-frozen: no cells
    assert c("tuple<int, text>").from_driver((None, "x")) == '[null,"x"]'
    assert c("list<frozen<address>>").from_driver([("A", 1), (None, None)]) == \
        '[{"street":"A","zip":1},{"street":null,"zip":null}]'

    class Registered:                          # a class given to cluster.register_user_type
        street, zip = "S", 2
    assert addr.from_driver(Registered()) == '{"street":"S","zip":2}'


def test_vector():
    v = c("vector<float, 3>")
    f32 = lambda x: struct.unpack("f", struct.pack("f", x))[0]  # noqa: E731
    assert v.from_driver([f32(0.1), -1.5, f32(3.4028234663852886e38)]) == "{0.1,-1.5,3.4028235e+38}"
    assert v.from_driver([float("nan"), float("inf"), -0.0]) == "{NaN,Infinity,-0.0}"


def test_copy_line():
    assert copy_line(["1", None, "", "a\\tb"]) == "1\t\\N\t\ta\\tb\n"
    assert COPY_NULL == "\\N"


def test_codec_pickles():
    k = c("map<text, frozen<list<frozen<address>>>>", time_as="bigint")
    k2 = pickle.loads(pickle.dumps(k))
    assert k2 == k and k2.time_as == "bigint"
    assert k2.from_driver({"a": [("x", 1)]}) == '{"a":[{"street":"x","zip":1}]}'


# -- the Debezium form --------------------------------------------------------------------------

def _fixture_cells(name: str) -> list[dict]:
    fx = json.loads((FIXTURES / f"{name}.json").read_text())
    return [json.loads(e["raw_value"])["after"] for e in fx["events"] if e["raw_value"]]


KITCHEN_SINK = {
    "t": ("text", "héllo 🌍"), "big": ("bigint", 9223372036854775807), "i": ("int", -42),
    "sm": ("smallint", 7),
    "ti": ("tinyint", -3), "vi": ("varint", 123456789012345678901234567890),
    "dec": ("decimal", Decimal("-12345.678901234567890123")), "f": ("float", 1.5), "d": ("double", -2.25e300),
    "bo": ("boolean", True), "b": ("blob", b"\xca\xfe"), "ip": ("inet", "192.168.0.1"),
    "ts": ("timestamp", datetime(1969, 7, 20, 20, 17, 40, 123000)), "dt": ("date", Date(-25567)),
    "tm": ("time", Time(86399123456789)), "dur": ("duration", Duration(0, 0, 3723004005006)),
    "u": ("uuid", uuid.UUID("6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab")),
    "tu": ("timeuuid", uuid.UUID("50554d6e-29bb-11e5-b345-feff819cdc9f")),
    "l": ("list<int>", [1, 2, 3]), "s": ("set<text>", SortedSet(["a", "b"])),
    "m": ("map<text, int>", {"k1": 1, "k2": 2}), "fl": ("frozen<list<int>>", [4, 5]),
    "addr": ("frozen<address>", ("Main", 12345)), "tup": ("frozen<tuple<int, text>>", (7, "seven")),
}


@pytest.mark.parametrize("column", sorted(KITCHEN_SINK))
def test_recorded_debezium_cells_match_the_driver_values(column):
    after = _fixture_cells("insert_all_types")[0]
    typ, driver_value = KITCHEN_SINK[column]
    k = c(typ)
    assert k.from_debezium(after[column]["value"]) == k.from_driver(driver_value)


def test_debezium_empties_and_nulls():
    empties, nulls = _fixture_cells("insert_nulls_and_empties")
    assert c("text").from_debezium(empties["t"]["value"]) == ""
    assert c("blob").from_debezium(empties["b"]["value"]) == "\\\\x"
    for col, typ in (("l", "list<int>"), ("s", "set<text>"), ("m", "map<text, int>")):
        assert c(typ).from_debezium(empties[col]["value"]) is None            # Cassandra reads null
    assert c("frozen<list<int>>").from_debezium([]) == "{}"
    assert c("bigint").from_debezium(nulls["big"]["value"]) is None
    assert c("address").from_debezium({"street": None, "zip": None}) is None
    assert c("frozen<address>").from_debezium({"street": None, "zip": None}) == '{"street":null,"zip":null}'


def test_debezium_forms():
    assert c("inet").from_debezium("/0:0:0:0:0:0:0:1") == "::1"
    assert c("inet").from_debezium("host.example/10.0.0.1") == "10.0.0.1"
    assert c("inet").from_debezium("/0:0:0:0:0:ffff:102:304") == "::ffff:1.2.3.4"
    assert c("uuid").from_debezium("6F1C6D2C-5B3C-4D1E-9F7A-0123456789AB") == \
        "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab"
    assert c("float").from_debezium("NaN") == "NaN" and c("double").from_debezium("-Infinity") == "-Infinity"
    assert c("float").from_debezium(0.1) == "0.1"
    assert c("decimal").from_debezium("1E+3") == "1000" and c("decimal").from_debezium("-0.00") == "0.00"
    scaled = {"scale": 2, "value": base64.b64encode((-150).to_bytes(2, "big", signed=True)).decode()}
    assert c("decimal").from_debezium(scaled) == "-1.50"
    assert c("varint").from_debezium("-" + "1" + "0" * 40) == "-1" + "0" * 40
    assert c("date").from_debezium(-25567) == "1900-01-01"
    assert c("time").from_debezium(86399123456789) == "23:59:59.123456"
    assert c("time", time_as="bigint").from_debezium(86399123456789) == "86399123456789"
    assert c("timestamp").from_debezium(-14182939877) == "1969-07-20 20:17:40.123+00"
    assert c("map<int, text>").from_debezium([[10, "ten"], [9, "nine"]]) == '{"9":"nine","10":"ten"}'
    assert c("map<int, text>").from_debezium({"10": "ten", "9": "nine"}) == '{"9":"nine","10":"ten"}'
    assert c("map<uuid, boolean>").from_debezium({"00000000-0000-0000-0000-00000000000A": True}) == \
        '{"00000000-0000-0000-0000-00000000000a":true}'
    assert c("map<boolean, int>").from_debezium({"false": 0}) == '{"false":0}'
    assert c("frozen<tuple<int, text>>").from_debezium({"field1": 8, "field2": None}) == "[8,null]"
    assert c("set<text>").from_debezium(["b", "a"]) == "{a,b}"
    assert c("list<int>").from_debezium([None]) == "{NULL}"        # a removed element, as sent
    assert c("list<frozen<address>>").from_debezium([{"street": "A", "zip": 1}]) == '[{"street":"A","zip":1}]'


def test_debezium_duration_months_and_days_are_folded():
    k = c("duration")
    folded = (1 * 30 + 2) * 86_400 * 10**9 + 1_000_004_006
    assert k.from_driver(Duration(1, 2, 1_000_004_006)) == "1 mon 2 days 00:00:01.000004"
    assert k.from_debezium(folded) == "768:00:01.000004"                # documented loss
    assert k.from_debezium(-3723004005006) == "-01:02:03.004005"
    assert c("frozen<tuple<duration>>").from_debezium({"field1": 3723004005006}) == '["PT1H2M3.004005006S"]'
    assert c("frozen<tuple<duration>>").from_driver((Duration(0, 0, 3723004005006),)) == \
        '["PT1H2M3.004005006S"]'


@pytest.mark.parametrize("typ,value", [
    ("decimal", -2.5), ("int", "x"), ("blob", "not base64!"), ("inet", "/999.1.1.1"), ("uuid", "nope"),
    ("boolean", "maybe"), ("timestamp", 10**17), ("text", 5), ("frozen<address>", 5),
])
def test_bad_debezium_values_are_value_errors(typ, value):
    with pytest.raises(ValueConversionError) as e:
        c(typ).from_debezium(value)
    assert "Debezium" in str(e.value) or "decimal.handling.mode" in str(e.value) or "range" in str(e.value)


# -- the PostgreSQL side ------------------------------------------------------------------------

def test_from_pg_psycopg2_objects():
    utc = UTC
    cases = [
        ("int", -42, -42), ("varint", Decimal("1" + "0" * 40), 10**40),
        ("decimal", Decimal("0.00"), Decimal("-0.00")),
        ("float", 0.1, struct.unpack("f", struct.pack("f", 0.1))[0]),
        ("double", float("nan"), float("nan")), ("boolean", True, True),
        ("blob", memoryview(b"\xca\xfe"), b"\xca\xfe"),
        ("uuid", "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab", uuid.UUID("6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab")),
        ("inet", "2001:db8:0:1::1", "2001:db8:0:1::1"),
        ("timestamp", datetime(1969, 7, 20, 20, 17, 40, 123000, tzinfo=utc),
         datetime(1969, 7, 20, 20, 17, 40, 123000)),
        ("timestamp", datetime(1969, 7, 20, 22, 17, 40, 123000, tzinfo=timezone(timedelta(hours=2))),
         datetime(1969, 7, 20, 20, 17, 40, 123000)),
        ("date", date(1900, 1, 1), Date(-25567)), ("time", time(23, 59, 59, 123456), Time(86399123456789)),
        ("list<int>", [1, None, 3], [1, None, 3]), ("set<uuid>", "{00000000-0000-0000-0000-000000000001}",
                                                     SortedSet([uuid.UUID(int=1)])),
        ("list<text>", ["a b", 'c"d', "NULL"], ["a b", 'c"d', "NULL"]),
        ("list<blob>", [memoryview(b"\x01")], [b"\x01"]),
        ("vector<float, 2>", [0.1, 1.5], [struct.unpack("f", struct.pack("f", 0.1))[0], 1.5]),
        ("frozen<address>", {"zip": 1, "street": "Main"}, ("Main", 1)),
    ]
    for typ, pg_value, driver_value in cases:
        k = c(typ)
        assert k.from_pg(pg_value) == k.from_driver(driver_value), typ
        assert k.same(k.from_driver(driver_value), pg_value)


def test_from_pg_text_output():
    cases = [
        ("timestamp", "1969-07-20 20:17:40.123+00", datetime(1969, 7, 20, 20, 17, 40, 123000)),
        ("timestamp", "4714-11-24 00:00:00+00 BC", -210866803200000),
        ("timestamp", "10000-01-01 02:00:00+02", 253402300800000),
        ("date", "0222-09-04 BC", Date(-800000)), ("date", "5874897-12-31", Date(2145042905)),
        ("duration", "-1 years -2 mons -3 days -04:05:06.000007", Duration(-14, -3, -14706000007000)),
        ("duration", "1 mon 2 days 00:00:01.000004", Duration(1, 2, 1000004006)),
        ("duration", "00:00:00", Duration(0, 0, 0)),
        ("blob", "\\xcafe", b"\xca\xfe"), ("float", "NaN", float("nan")),
        ("double", "-Infinity", float("-inf")),
        ("list<timestamp>", ["1900-01-01 00:00:00.001+00", None],
         [datetime(1900, 1, 1, 0, 0, 0, 1000), None]),
        ("list<inet>", "{10.0.0.1,::1}", ["10.0.0.1", "::1"]),
        ("list<text>", '{"a b","c\\"d",NULL,"\\\\"}', ["a b", 'c"d', None, "\\"]),
        ("list<duration>", ['1 mon', '00:00:00'], [Duration(1, 0, 0), Duration(0, 0, 0)]),
        ("map<text, decimal>", '{"a": 1.50, "bb": 1000000000000000000000000000000}',
         {"bb": Decimal("1E+30"), "a": Decimal("1.50")}),
        ("frozen<tuple<double, float, varint, timestamp>>",
         '[1000000000000000000000, "NaN", 12, "1970-01-01T00:00:00.000Z"]',
         (1e21, float("nan"), 12, datetime(1970, 1, 1))),
        ("frozen<address>", '{"zip": null, "street": "A"}', ("A", None)),
    ]
    for typ, pg_value, driver_value in cases:
        k = c(typ)
        assert k.from_pg(pg_value) == k.from_driver(driver_value), typ


def test_from_pg_shows_differences():
    k = c("frozen<address>")
    assert k.from_pg('{"street": "A", "zip": 1, "extra": 2}') != k.from_driver(("A", 1))
    assert c("timestamp").from_pg(datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == \
        "2000-01-01 00:00:00.000001+00"                            # µs PostgreSQL holds are shown
    assert not c("list<int>").same(None, [])                        # '{}' in PG, null in Cassandra
    assert c("duration").from_pg(timedelta(days=32, seconds=1)) == "768:00:01"   # psycopg2 folds months


def test_from_pg_text_array_trims_only_postgres_whitespace():
    """array_out leaves U+001F, U+00A0, U+0085, U+2028, U+3000 unquoted (they are not
    PostgreSQL's array whitespace): they belong to the element. array_in's own whitespace
    around an unquoted element is not part of it."""
    k = c("list<text>")
    literal = "{\x1fa\xa0,\u2028b\x85,\u3000,\x1c\x1d\x1e, \t\vc d\f\r\n,NULL}"
    expected = ["\x1fa\xa0", "\u2028b\x85", "\u3000", "\x1c\x1d\x1e", "c d", None]
    assert k.from_pg(literal) == k.from_driver(expected)
    assert array_elements(copy_unescape(k.from_pg(literal))) == expected


# -- property tests -------------------------------------------------------------------------------

def same_float(x: float, y: float) -> bool:
    """Equal bits, as far as a float can say: NaN equals NaN, -0.0 differs from 0.0."""
    return (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))


text_no_nul = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@given(text_no_nul)
def test_prop_text_round_trips(s):
    assert copy_unescape(c("text").from_driver(s)) == s


@pytest.mark.parametrize("typ,lo,hi", [("tinyint", -2**7, 2**7 - 1), ("smallint", -2**15, 2**15 - 1),
                                       ("int", -2**31, 2**31 - 1), ("bigint", -2**63, 2**63 - 1),
                                       ("varint", -10**60, 10**60)])
@settings(max_examples=60)
@given(data=st.data())
def test_prop_ints_round_trip(typ, lo, hi, data):
    v = data.draw(st.integers(lo, hi))
    assert int(copy_unescape(c(typ).from_driver(v))) == v


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_prop_double_round_trips(x):
    back = float(copy_unescape(c("double").from_driver(x)))
    assert same_float(x, back)


@given(st.floats(width=32, allow_nan=True, allow_infinity=True))
def test_prop_float32_round_trips_through_float32(x):
    text = copy_unescape(c("float").from_driver(x))
    back = struct.unpack("f", struct.pack("f", float(text)))[0]
    assert same_float(x, back)
    # and it is the shortest such text: one digit fewer no longer round-trips
    if not math.isnan(x) and not math.isinf(x) and x != 0:
        digits = len(Decimal(text).normalize().as_tuple().digits)     # "1.0" has one
        if digits > 1:
            shorter = f"{x:.{digits - 2}e}"
            assert struct.unpack("f", struct.pack("f", float(shorter)))[0] != x


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_prop_decimal_round_trips_exactly(d):
    assume(-16383 <= d.as_tuple().exponent and d.adjusted() <= 131071)
    text = copy_unescape(c("decimal").from_driver(d))
    assert "E" not in text and "e" not in text
    back = Decimal(text)
    assert back == d
    assert -back.as_tuple().exponent == max(0, -d.as_tuple().exponent)   # scale kept (no negative scale)


@given(st.lists(st.integers(-2**31, 2**31 - 1) | st.none(), min_size=1))
def test_prop_int_list_round_trips(xs):
    elems = array_elements(copy_unescape(c("list<int>").from_driver(xs)))
    assert [None if e is None else int(e) for e in elems] == xs


@given(st.lists(text_no_nul, min_size=1))
def test_prop_text_list_round_trips(xs):
    assert array_elements(copy_unescape(c("list<text>").from_driver(xs))) == xs


# Text rich in what str.strip() removes and PostgreSQL keeps, next to PostgreSQL's whitespace.
_edge_text = st.text(alphabet=st.sampled_from(
    list(PG_ARRAY_SPACE) + ["\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u2029", "\u3000", "a", '"', ",", "\\"]))


@given(st.lists(_edge_text | st.none(), min_size=1))
def test_prop_text_array_from_postgres_output_reads_back(xs):
    k = c("list<text>")
    literal = array_out(xs)
    assert array_elements(copy_unescape(k.from_pg(literal))) == xs
    assert k.from_pg(literal) == k.from_driver(xs)


@given(st.dictionaries(text_no_nul, st.integers(-2**31, 2**31 - 1) | st.none()))
def test_prop_map_is_json_object(m):
    k = c("frozen<map<text, int>>")
    assert json.loads(copy_unescape(k.from_driver(m))) == m


@given(st.integers(-210866803200000, 9224318015999999))
def test_prop_timestamp_text_round_trips(ms):
    k = c("timestamp")
    text = k.from_driver(ms)
    if 1 <= (year := int(text.split("-")[0])) <= 9999 and not text.endswith("BC"):
        dt = datetime.strptime(text.replace("+00", ""), "%Y-%m-%d %H:%M:%S" + (".%f" if "." in text else ""))
        assert (dt - datetime(1970, 1, 1)) // timedelta(milliseconds=1) == ms
        assert k.from_driver(datetime(1970, 1, 1) + timedelta(milliseconds=ms)) == text
    assert year >= 1
    assert k.from_pg(text) == text


@given(st.integers(-2440588, 2145042905))
def test_prop_date_text_round_trips(days):
    k = c("date")
    text = k.from_driver(Date(days))
    if -719162 <= days <= 2932896:
        assert text == (date(1970, 1, 1) + timedelta(days=days)).isoformat()
    assert k.from_pg(text) == text


@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1), st.booleans())
def test_prop_interval_text_round_trips(months, days, ns, negative):
    sign = -1 if negative else 1
    k = c("duration")
    text = k.from_driver(Duration(sign * months, sign * days, sign * ns))
    assert k.from_pg(text) == text


@given(st.integers(0, 86_399_999_999_999))
def test_prop_time_truncates_to_microseconds(ns):
    text = c("time").from_driver(Time(ns))
    t = time.fromisoformat(text)
    assert ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond == ns // 1000


_SCALAR_TYPES = ["int", "text", "varchar", "bigint", "blob", "uuid", "timestamp", "date", "time", "duration",
                 "decimal", "varint", "double", "float", "boolean", "inet", "ascii", "timeuuid", "smallint",
                 "tinyint", "counter", "address"]


def _type_texts():
    leaves = st.sampled_from(_SCALAR_TYPES)

    def extend(inner):
        return st.one_of(
            st.builds(lambda t: f"frozen<list<{t}>>", inner),
            st.builds(lambda t: f"list<frozen<{t}>>" if "<" in t else f"list<{t}>", inner),
            st.builds(lambda t: f"set<{t}>", leaves),
            st.builds(lambda k, v: f"map<{k}, {v}>", leaves, inner),
            st.builds(lambda a, b: f"tuple<{a}, {b}>", inner, inner),
            st.builds(lambda n: f"vector<float, {n}>", st.integers(1, 4096)),
        )
    return st.recursive(leaves, extend, max_leaves=6)


@given(_type_texts())
def test_prop_cql_round_trips_through_parse(text):
    t = parse_cql_type(text, ADDRESS)
    assert parse_cql_type(t.cql(), ADDRESS) == t
    assert codec(parse_cql_type(t.cql(), ADDRESS)).pg == pg_type(t)


@given(st.integers(-62135596800000, 253402300799999))
def test_prop_driver_timestamps_come_back_to_the_stored_millisecond(ms):
    # The driver's own deserializer (ms / 1000.0 → datetime) drifts by µs far from 1970.
    from cassandra.cqltypes import DateType
    dt = DateType.deserialize(struct.pack(">q", ms), 4)
    assert c("timestamp").from_driver(dt) == c("timestamp").from_driver(ms)


def test_error_messages_name_type_source_and_reason():
    with pytest.raises(ValueConversionError) as e:
        c("list<text>").from_driver(["\x00"])
    assert str(e.value) == ("list<text> value from cassandra-driver: text contains a NUL byte (0x00), "
                            "which PostgreSQL text cannot store")
    with pytest.raises(ValueConversionError, match=r"^int value 'x' from Debezium cannot be converted: "):
        c("int").from_debezium("x")


def test_same_is_false_for_unreadable_postgres_values():
    assert not c("timestamp").same("2000-01-01 00:00:00+00", "not a timestamp")
    assert c("timestamp").same("2000-01-01 00:00:00+00", "2000-01-01 00:00:00+00")


def test_codec_is_built_by_codec_only():
    with pytest.raises(TypeError):
        Codec(CqlType("int"), pg_type(CqlType("int")))  # type: ignore[call-arg]
