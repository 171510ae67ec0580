"""The comparison oracle's own parsers (engine.compare), on values written out by hand.

The oracle must not share code with what it judges, so its readers of PostgreSQL's text
forms and of c2pg's JSON are its own; these checks pin them to known answers.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid
from decimal import Decimal

from cassandra.util import Date, Duration, Time

from engine.compare import _days, _from_driver, _from_json, _from_pg_text, _iso_duration, _pg_array, _Plain
from engine.types import parse_cql_type


def test_civil_days_around_the_epoch_and_before_the_common_era():
    assert _days(1970, 1, 1) == 0
    assert _days(2000, 3, 1) == 11017
    assert _days(1, 1, 1) == -719162
    assert _days(0, 12, 31) == -719163  # 1 BC, astronomical year 0


def test_postgresql_timestamps_dates_and_times():
    assert _from_pg_text("timestamp", "1969-07-20 20:17:40.123+00") == -14182939877
    assert _from_pg_text("timestamp", "0001-12-31 23:59:59.999+00 BC") == (-719163 * 86400 + 86399) * 1000 + 999
    assert _from_pg_text("timestamp", "10000-01-01 00:00:00+00") == _days(10000, 1, 1) * 86_400_000
    assert _from_pg_text("date", "4714-11-24 BC") == _days(-4713, 11, 24)
    assert _from_pg_text("time", "23:59:59.123456") == 86_399_123_456
    assert _from_pg_text("time", "00:00:01") == 1_000_000


def test_intervals_keep_months_days_and_signs_apart():
    assert _iso_duration("P1Y2M3DT4H5M6.000007S") == (14, 3, (4 * 3600 + 5 * 60 + 6) * 10**9 + 7000)
    assert _iso_duration("P-1Y-2D") == (-12, -2, 0)
    assert _iso_duration("PT-0.000003S") == (0, 0, -3000)
    assert _iso_duration("P1M2DT1H2M3.000000004S") == (1, 2, 3723 * 10**9 + 4)
    assert _iso_duration("PT0S") == (0, 0, 0)
    # At top level PostgreSQL holds microseconds: a driver Duration is truncated toward zero.
    plain = _Plain(parse_cql_type("duration"))
    assert plain.driver(Duration(1, 2, -3_999)) == plain.postgres("P1M2DT-0.000003S") == (1, 2, -3)


def test_array_literals_with_quotes_escapes_and_nulls():
    assert _pg_array("{}") == []
    assert _pg_array('{1,2,NULL}') == ["1", "2", None]
    assert _pg_array('{"a b","c\\"d","NULL",e}') == ["a b", 'c"d', "NULL", "e"]


def test_floats_compare_by_bits_nan_alike_and_negative_zero_only_outside_json():
    double = _Plain(parse_cql_type("double"))
    assert double.driver(-0.0) != double.driver(0.0)
    assert double.postgres("-0") == double.driver(-0.0)
    assert double.postgres("NaN") == double.driver(float("nan"))
    real = _Plain(parse_cql_type("float"))
    f32 = struct.unpack(">f", struct.pack(">f", 0.1))[0]
    assert real.postgres("0.1") == real.driver(f32)
    t = parse_cql_type("tuple<double, int>")
    assert _from_driver(t, (-0.0, 1), in_json=True) == _from_json(t, [0, 1])


def test_decimals_keep_their_scale_and_a_negative_scale_is_the_integer():
    d = _Plain(parse_cql_type("decimal"))
    assert d.driver(Decimal("1.50")) == d.postgres("1.50") != d.postgres("1.5")
    assert d.driver(Decimal("1E+3")) == d.postgres("1000")


def test_json_documents_of_maps_udts_and_nested_collections():
    m = _Plain(parse_cql_type("map<timestamp, frozen<list<int>>>"))
    assert m.postgres('{"1969-07-20T20:17:40.123Z": [1, 2]}') == frozenset({(-14182939877, (1, 2))})
    udt = parse_cql_type("frozen<address>", {"address": (("street", "text"), ("zip", "int"), ("at", "time"))})
    plain = _Plain(udt)
    assert plain.postgres('{"street": "Main", "zip": null, "at": "00:00:00.000000001"}') == \
        plain.driver(("Main", None, Time(1)))
    keyed = _Plain(parse_cql_type("map<frozen<list<int>>, blob>"))
    assert keyed.postgres('{"[1,2]": "\\\\xcafe"}') == keyed.driver({(1, 2): b"\xca\xfe"})
    dates = _Plain(parse_cql_type("set<date>"))
    assert dates.postgres("{1900-01-01}") == dates.driver({Date(_days(1900, 1, 1))})


def test_scalars_of_every_other_kind():
    assert _from_pg_text("blob", "\\xcafe") == b"\xca\xfe"
    assert _from_pg_text("inet", "::ffff:1.2.3.4") == ipaddress.ip_address("::ffff:1.2.3.4")
    u = "6f1c6d2c-5b3c-4d1e-9f7a-0123456789ab"
    assert _from_pg_text("uuid", u) == uuid.UUID(u)
    assert _from_pg_text("boolean", "true") is True and _from_pg_text("boolean", "f") is False
    assert _from_pg_text("varint", "123456789012345678901234567890") == 123456789012345678901234567890
