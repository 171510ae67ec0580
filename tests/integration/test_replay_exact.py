"""Every write kind the connector describes inexactly, through the real connector: exact
by sync alone, exact when the whole topic is replayed onto a snapshot, and 0 drift.

The writes (issue "Exact under replay"): a list append, prepend, element set by index and
element removal; a set add and removal; a map element update and delete; elements added with
a TTL of their own, which expire while sync runs; a ``duration``
with months, days and sub-second parts, and a frozen list of durations whose elements fold
to the same nanoseconds (``1mo`` and ``30d``); TTL inserts and updates, short (expired
before the replay) and long; equal-timestamp writes; a static column changed by a write that
produces no event, a row deletion and an emptied row in its partition; partitions holding
only statics (left by a row deletion, gaining a row again, and made by a write of statics
alone, which no event shows: sync alone misses it, reconcile repairs it, the snapshot has
it). Non-frozen collection events carry only the touched elements, durations arrive folded
and statics not at all, so these are exact only through the read-back (``engine.readback``).

The oracle is a full read of Cassandra compared cell by cell (``engine.compare``, which
shares no code with sync's decode, reduce, read-back or merge), plus values written out
by hand below for the cells the issue saw corrupted.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import psycopg2
import pytest
import ray

from engine import cql
from engine.compare import differences, wait_equal
from engine.reconcile import run_reconcile
from engine.snapshot import run_snapshot
from engine.sync.supervisor import get_or_start
from tests.integration.cdc_scenarios import TopicTail, fresh_sync_pipeline, wait_for_table_capture

KS = "c2pg_replay_exact"
KAFKA = {"bootstrap.servers": "127.0.0.1:9092"}


@pytest.fixture(scope="module")
def cass(stack, pipeline, cdc_keyspaces):
    assert KS in cdc_keyspaces  # empty, and past the connector's schema-refresh window
    cluster, session = cql.connect(pipeline.cassandra)
    yield session
    cluster.shutdown()


@pytest.fixture()
def pg(pipeline):
    conn = psycopg2.connect(**pipeline.postgres.connect_kwargs(application_name="c2pg-replay-exact-test"))
    yield conn
    conn.close()


def _write_every_kind(cass, t: str, applied) -> None:
    """The writes; ``applied(pk, ck, column, value)`` returns once sync applied that cell."""
    def q(stmt: str) -> None:
        cass.execute(stmt.replace("{t}", t))

    base = int(time.time() * 1_000_000)
    q("INSERT INTO {t} (pk, ck, l, s, m, d, fd, i, x) VALUES (1, 0, [1, 2], {'a', 'b'}, {'j': 1, 'k': 2, 'n': 3}, "
      "1y2mo3w4d5h6m7s8ms9us10ns, [1mo, 30d], 0, 'row')")
    q("UPDATE {t} SET l = l + [3] WHERE pk = 1 AND ck = 0")            # append
    q("UPDATE {t} SET l = [0] + l WHERE pk = 1 AND ck = 0")            # prepend
    q("UPDATE {t} SET l[1] = 9 WHERE pk = 1 AND ck = 0")               # element set by index
    q("UPDATE {t} SET l = l - [2] WHERE pk = 1 AND ck = 0")            # element removal
    q("UPDATE {t} SET s = s + {'c'} WHERE pk = 1 AND ck = 0")          # set add
    q("UPDATE {t} SET s = s - {'a'} WHERE pk = 1 AND ck = 0")          # set removal
    q("UPDATE {t} SET m['k'] = 20 WHERE pk = 1 AND ck = 0")            # map element update
    q("DELETE m['j'] FROM {t} WHERE pk = 1 AND ck = 0")                # map element delete
    q("INSERT INTO {t} (pk, ck, l, s) VALUES (1, 1, [1, 3], {'j', 'k', 'n'})")
    q("UPDATE {t} SET l = l - [1, 3] WHERE pk = 1 AND ck = 1")         # every element removed
    q("UPDATE {t} SET s = s - {'j', 'k'} WHERE pk = 1 AND ck = 1")
    q("UPDATE {t} SET m = m + {'only': 1} WHERE pk = 1 AND ck = 2")    # a row born by a map append
    q("UPDATE {t} SET d = 1mo WHERE pk = 2 AND ck = 0")                # a month is not 30 days
    q("UPDATE {t} SET d = 30d WHERE pk = 2 AND ck = 1")
    q("UPDATE {t} SET d = -1y2d3ns WHERE pk = 2 AND ck = 2")
    # TTLs: expired before the replay (a deletion at their write time), and long-lived.
    q("UPDATE {t} USING TTL 2 SET x = 'short-lived', i = 8 WHERE pk = 3 AND ck = 0")
    q("INSERT INTO {t} (pk, ck, x, i) VALUES (3, 1, 'kept', 1)")
    q("UPDATE {t} USING TTL 2 SET i = 8 WHERE pk = 3 AND ck = 1")
    q("INSERT INTO {t} (pk, ck, x) VALUES (3, 2, 'long') USING TTL 86400")
    q("INSERT INTO {t} (pk, ck, x, i) VALUES (3, 3, 'row with a ttl', 3) USING TTL 2")  # marker expires too
    q("UPDATE {t} USING TTL 86400 SET d = 2d WHERE pk = 3 AND ck = 2")
    # Collection elements with a TTL of their own: sync holds them, then they expire in
    # Cassandra without an event and leave PostgreSQL (engine.recheck, run by the sweep) ...
    q("INSERT INTO {t} (pk, ck, l, s, m, x) VALUES (9, 0, [1], {'a'}, {'k': 1}, 'elements')")
    q("UPDATE {t} USING TTL 8 SET l = l + [7], s = s + {'ttl'}, m['ttl'] = 1 WHERE pk = 9 AND ck = 0")
    applied(9, 0, "l", [1, 7])
    # ... and one that outlives the test, registered by sync and by the snapshot.
    q("INSERT INTO {t} (pk, ck, l) VALUES (9, 1, [2])")
    q("UPDATE {t} USING TTL 86400 SET l = l + [8] WHERE pk = 9 AND ck = 1")
    # Equal timestamps: Cassandra keeps the greater serialized value, whatever the order.
    q(f"UPDATE {t} USING TIMESTAMP {base} SET i = 10, x = 'b' WHERE pk = 4 AND ck = 0")
    q(f"UPDATE {t} USING TIMESTAMP {base} SET i = 9, x = 'a' WHERE pk = 4 AND ck = 0")
    q(f"UPDATE {t} USING TIMESTAMP {base} SET i = -1, d = 1d WHERE pk = 4 AND ck = 1")
    q(f"UPDATE {t} USING TIMESTAMP {base} SET i = 1, d = 2d WHERE pk = 4 AND ck = 1")
    q(f"UPDATE {t} USING TIMESTAMP {base} SET l = [5] WHERE pk = 4 AND ck = 2")
    q(f"UPDATE {t} USING TIMESTAMP {base} SET l = l + [6] WHERE pk = 4 AND ck = 2")
    # Static columns never reach Kafka: the next write to their partition reads them back.
    q("INSERT INTO {t} (pk, ck, st, x) VALUES (5, 0, 's1', 'a')")
    q("INSERT INTO {t} (pk, ck, x) VALUES (5, 1, 'b')")
    q("UPDATE {t} SET x = 'tmp' WHERE pk = 5 AND ck = 2")              # a row born by UPDATE ...
    applied(5, 2, "st", "s1")                                           # (holding the static in PostgreSQL)
    q("UPDATE {t} SET x = null WHERE pk = 5 AND ck = 2")               # ... gone again, statics or not
    q("UPDATE {t} SET st = 's2' WHERE pk = 5")                         # no event at all
    q("DELETE FROM {t} WHERE pk = 5 AND ck = 1")                       # a row deletion leaves the statics
    q("INSERT INTO {t} (pk, ck, x) VALUES (5, 1, 'b2')")               # ... for the row written again
    q("INSERT INTO {t} (pk, ck, x) VALUES (5, 3, 'c')")                # the partition's next write
    # Static-only partitions (a row with null clustering columns in Cassandra's read): one
    # left by deleting its last row (an event: sync reads the statics back) ...
    q("INSERT INTO {t} (pk, ck, st, x) VALUES (6, 0, 's6', 'last row')")
    applied(6, 0, "st", "s6")
    q("DELETE FROM {t} WHERE pk = 6 AND ck = 0")
    # ... one that gains a row again (its static row goes: Cassandra reads the statics on the row) ...
    q("INSERT INTO {t} (pk, ck, st, x) VALUES (8, 0, 's8', 'row')")
    applied(8, 0, "st", "s8")
    q("DELETE FROM {t} WHERE pk = 8 AND ck = 0")
    applied(8, None, "st", "s8")
    q("INSERT INTO {t} (pk, ck, x) VALUES (8, 1, 'again')")
    # ... and one made by a write of statics alone, which produces no event: sync alone
    # cannot see it (the snapshot and reconcile can).
    q("INSERT INTO {t} (pk, st) VALUES (7, 'statics alone')")


def _hand_checked(pg, schema: str, name: str) -> None:
    """The cells the issue saw corrupted, against values written out by hand."""
    with pg, pg.cursor() as cur:
        cur.execute(f'SELECT l, s, m::text, d::text, fd::text FROM "{schema}"."{name}" WHERE pk = 1 AND ck = 0')
        lst, st, mp, dur, fdur = cur.fetchone()
        assert lst == [0, 9, 3]
        assert st == ["b", "c"]
        assert mp == '{"k": 20, "n": 3}'
        assert dur == "1 year 2 mons 25 days 05:06:07.008009"
        assert fdur == '{"1 mon","30 days"}'
        cur.execute(f'SELECT ck, d::text FROM "{schema}"."{name}" WHERE pk = 2 ORDER BY ck')
        assert cur.fetchall() == [(0, "1 mon"), (1, "30 days"), (2, "-1 years -2 days")]
        cur.execute(f'SELECT ck, l, s FROM "{schema}"."{name}" WHERE pk = 1 AND ck = 1')
        assert cur.fetchall() == [(1, None, ["n"])]
        cur.execute(f'SELECT ck, l, s, m::text FROM "{schema}"."{name}" WHERE pk = 9 ORDER BY ck')
        assert cur.fetchall() == [(0, [1], ["a"], '{"k": 1}'), (1, [2, 8], None, None)]
        cur.execute("SELECT key, col FROM _c2pg.rechecks WHERE target_schema = %s AND target_table = %s",
                    (schema, name))
        assert cur.fetchall() == [(["9", "1"], "l")], "the expired elements' rechecks are done"
        cur.execute(f'SELECT ck, st, x FROM "{schema}"."{name}" WHERE pk = 5 ORDER BY ck')
        assert cur.fetchall() == [(0, "s2", "a"), (1, "s2", "b2"), (3, "s2", "c")]
        # The static row holds the partition's statics only, and no row marker.
        cur.execute(f'SELECT pk, ck, st, x, _c2pg_row_ts IS NULL FROM "{schema}"."{name}" WHERE pk IN (6, 8) '
                    'ORDER BY pk')
        assert cur.fetchall() == [(6, None, "s6", None, True), (8, 1, "s8", "again", False)]


def _with_sweep(cfg, every: timedelta):
    return cfg.model_copy(update={"sync": cfg.sync.model_copy(update={"ttl_sweep_interval": every})})


def _elements_expired(cass, t: str, timeout_s: float = 60) -> None:
    """Wait until the collection elements written with an 8 s TTL (row (9, 0)) have expired
    in Cassandra: no event says so, the sweep finds them. Comparing the tables before would
    find them equal with the elements still alive on both sides (sync applies far sooner
    than 8 s), and the hand-checked values say they are gone."""
    deadline = time.monotonic() + timeout_s
    while cass.execute(f"SELECT l FROM {t} WHERE pk = 9 AND ck = 0").one().l != [1]:
        assert time.monotonic() < deadline, f"the 8 s TTL elements of (9, 0) still there after {timeout_s:.0f} s"
        time.sleep(0.2)


def _caught_up(cass, t: str, topic: str) -> None:
    with TopicTail(topic, KAFKA) as tail:
        cass.execute(f"INSERT INTO {t} (pk, ck, x) VALUES (-2, 0, 'end of the writes')")
        assert tail.read(1, 60, key_filter=lambda k: isinstance(k, dict) and k.get("pk") == -2), \
            "the last write's event never reached Kafka"


def _stop(sup) -> None:
    try:
        ray.get(sup.stop.remote(), timeout=60)
    finally:
        ray.kill(sup, no_restart=True)


def _reconcile_clean(cfg) -> None:
    rc = cfg.model_copy(update={"reconcile": cfg.reconcile.model_copy(update={"recheck_delay": timedelta(seconds=1)})})
    result = run_reconcile(rc, rc.tables[0], splits=2, progress=False)
    assert result.drift == 0 and result.unrepaired == 0, result.stats()


def test_every_write_kind_is_exact_by_sync_alone_and_replayed_onto_a_snapshot(cass, pg, pipeline, ray_cluster):
    name = "kinds_" + uuid.uuid4().hex[:8]  # a new table and topic each run: the replay starts at offset 0
    t = f"{KS}.{name}"
    topic = f"c2pg.{KS}.{name}"
    cass.execute(f"CREATE TABLE {t} (pk int, ck int, l list<int>, s set<text>, m map<text, int>, d duration, "
                 f"fd frozen<list<duration>>, i int, x text, st text static, PRIMARY KEY (pk, ck)) WITH cdc = true")
    wait_for_table_capture(cass, KS, name, f"INSERT INTO {t} (pk, ck, x) VALUES (-1, 0, 'sentinel')")

    # (a) Sync alone, running while the writes happen. The TTL sweep runs every second so a
    # cell that expires after it was applied is expired in PostgreSQL soon after.
    alone = fresh_sync_pipeline(pg, pipeline, KS, "replay_alone", name)
    alone = _with_sweep(alone, timedelta(seconds=1))
    sup = get_or_start(alone)

    def applied(pk: int, ck: int, column: str, value) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                with pg, pg.cursor() as cur:
                    cur.execute(f'SELECT "{column}" FROM replay_alone."{name}" WHERE pk = %s '
                                'AND ck IS NOT DISTINCT FROM %s', (pk, ck))
                    if cur.fetchall() == [(value,)]:
                        return
            except psycopg2.errors.UndefinedTable:
                pass  # the worker creates the target with its first batch
            assert time.monotonic() < deadline, f"({pk}, {ck}).{column} = {value!r} never applied"
            time.sleep(0.2)
    try:
        # Sync runs before the writes start: the element written with an 8 s TTL must be
        # seen applied before it expires, and a supervisor still starting (several seconds
        # on a busy machine) would eat that time.
        applied(-1, 0, "x", "sentinel")
        _write_every_kind(cass, t, applied)
        _caught_up(cass, t, topic)
        _elements_expired(cass, t)
        statics_alone = ("missing", ("7", None))  # no event: the connector skips a write of statics alone
        assert wait_equal(cass, pg, KS, name, "replay_alone", name, timeout_s=90,
                          expected=lambda d: d == statics_alone) == []
        assert differences(cass, pg, KS, name, "replay_alone", name) == [statics_alone]
        _hand_checked(pg, "replay_alone", name)
    finally:
        _stop(sup)
    # Reconcile finds that partition, repairs it as a static row, and the next run is clean.
    rc = alone.model_copy(update={"reconcile": alone.reconcile.model_copy(
        update={"recheck_delay": timedelta(seconds=1)})})
    result = run_reconcile(rc, rc.tables[0], splits=2, progress=False, repair=True)
    assert (result.drift, result.unrepaired, result.repaired["rows_written"]) == (1, 0, 1), result.stats()
    assert differences(cass, pg, KS, name, "replay_alone", name) == []
    _reconcile_clean(alone)

    # (b) Snapshot into a fresh table, then sync from offset 0 onto it: the whole history
    # again, the short TTLs long expired, every fragment and folded duration replayed.
    replay = fresh_sync_pipeline(pg, pipeline, KS, "replay_snap", name)
    replay = _with_sweep(replay, timedelta(hours=1))
    result = run_snapshot(replay, replay.tables[0], splits=2)
    assert result.ok, result
    assert differences(cass, pg, KS, name, "replay_snap", name) == [], "the snapshot alone is exact"
    with pg, pg.cursor() as cur:
        cur.execute("SELECT key, col FROM _c2pg.rechecks WHERE target_schema = 'replay_snap' AND target_table = %s",
                    (name,))
        assert cur.fetchall() == [(["9", "1"], "l")], "the snapshot registers the element that will expire"
    sup = get_or_start(replay)
    try:
        deadline = time.monotonic() + 120
        while True:  # every event applied: the supervisor reports lag 0 on every partition of the topic
            st = ray.get(sup.status.remote())
            parts = [p for w in st["workers"] for p in w["partitions"] if p["topic"] == topic]
            if parts and all(p["lag"] == 0 for p in parts) and sum(p["events"] for p in parts) >= 30:
                break
            assert time.monotonic() < deadline, f"replay not caught up: {parts}"
            time.sleep(0.5)
        assert differences(cass, pg, KS, name, "replay_snap", name) == []
        _hand_checked(pg, "replay_snap", name)
    finally:
        _stop(sup)
    _reconcile_clean(replay)


def test_a_partition_key_of_several_columns_is_read_back_by_token(cass, pg, pipeline, ray_cluster):
    """The read-back's other path: partitions read one ``token(pk) = ?`` request each (a
    composite partition key cannot be read with ``pk IN ?``)."""
    name = "token_" + uuid.uuid4().hex[:8]
    t = f"{KS}.{name}"
    cass.execute(f"CREATE TABLE {t} (a int, b text, ck int, l list<int>, d duration, st text static, "
                 f"PRIMARY KEY ((a, b), ck)) WITH cdc = true")
    wait_for_table_capture(cass, KS, name, f"INSERT INTO {t} (a, b, ck) VALUES (-1, 's', 0)")
    cfg = fresh_sync_pipeline(pg, pipeline, KS, "replay_token", name)
    sup = get_or_start(cfg)
    try:
        for a in range(3):
            cass.execute(f"INSERT INTO {t} (a, b, ck, l, d, st) VALUES ({a}, 'k', 0, [1], 1mo, 's1')")
            cass.execute(f"UPDATE {t} SET l = l + [2] WHERE a = {a} AND b = 'k' AND ck = 0")
            cass.execute(f"UPDATE {t} SET d = 2mo3d WHERE a = {a} AND b = 'k' AND ck = 0")
            cass.execute(f"UPDATE {t} SET st = 's2' WHERE a = {a} AND b = 'k'")
            cass.execute(f"INSERT INTO {t} (a, b, ck) VALUES ({a}, 'k', 1)")
        assert wait_equal(cass, pg, KS, name, "replay_token", name, timeout_s=60) == []
        with pg, pg.cursor() as cur:
            cur.execute(f'SELECT DISTINCT l, d::text, st FROM replay_token."{name}" WHERE a >= 0 AND ck = 0')
            assert cur.fetchall() == [([1, 2], "2 mons 3 days", "s2")]
    finally:
        _stop(sup)
