"""Chaos suite: sync under a sustained write load while its parts fail, one fault at a time and
then several at once; after each, the table must end equal to Cassandra with nothing lost or
duplicated and no dead letter but the injected ones.

    .venv/bin/python -m benchmarks.chaos [--faults all | kill_node,restart_postgres,...]
        [--rate 1500] [--fault-seconds 10] [--lock-seconds 60] [--recover-timeout 600]
        [--max-minutes 45] [--config examples/pipeline.local.yaml]

On the local stack (``c2pg stack up``; run it under the stack lock, nothing else beside it:
it restarts the stack's servers). Sync runs on a Ray cluster of its own — a head and one
worker node on 127.0.0.1 with their own ports, started through the stack's launcher, as
``tests/integration/test_ray_nodes.py`` does — so killing nodes and the head touches no other
Ray user. ``c2pg sync keep`` runs beside it, as an operator would run it, to bring sync back
after a head restart.

The load (:class:`Load`, its own Cassandra session) writes at ``--rate`` statements/s into one
CDC table ``c2pg_chaos.events_<run>`` (``pk int, ck int, a text, n int``, 200 partitions of up to
50 rows): inserts, partial updates, row deletes, clustering-range deletes, partition deletes,
inserts ``USING TTL 10`` and writes ``USING TIMESTAMP`` up to 5 s in the past (out of order).
Each fault round: the load runs ``--fault-seconds``, the fault is injected through the stack's
own controls and ends by itself (bounded), the load runs ``--fault-seconds`` more and pauses;
then the run waits until the oracle finds PostgreSQL equal to Cassandra (the recovery time,
from the fault's end), runs ``c2pg reconcile`` (a Ray job on the private cluster) and counts
the dead letters. The faults (:data:`FAULTS`):

- ``kill_node``: SIGKILL of the Ray worker node (raylet and its workers), then a new node joins;
- ``kill_supervisor``: ``ray.kill`` of the sync supervisor (Ray restarts it);
- ``restart_head``: SIGKILL of the Ray head, then a new head and node (the keeper restarts sync);
- ``restart_postgres`` / ``restart_kafka`` / ``restart_cassandra`` / ``restart_connector``:
  the stack's ``down`` then ``up`` of that server;
- ``lock_table``: a session holds ``ACCESS EXCLUSIVE`` on the target table for ``--lock-seconds``;
- ``fill_connections``: sessions take every free PostgreSQL connection slot for ``--fault-seconds``;
- ``poison``: 5 records that are not change events are produced to the table's topic (each
  must become exactly one dead letter, the rest applied);
- ``several``: ``kill_node``, ``restart_kafka`` and ``poison`` at the same time.

The oracle (:func:`diff_rows`) shares no code with c2pg: it reads every row of both sides
with the drivers and compares the four columns. ``rows_lost`` counts rows missing or
different in PostgreSQL when a round's recovery timed out; ``duplicate_rows`` rows that
PostgreSQL holds and Cassandra does not. Every run is appended to
``benchmarks/results/chaos.json`` (``runs``; the latest summary at the top). The run stops
itself after ``--max-minutes`` (the rounds not reached are listed as skipped) and always
tears its Ray cluster down and leaves the stack's servers up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess  # nosec B404 - runs c2pg's own commands (this interpreter) against the private cluster
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import yaml

from engine import cql
from engine.config import load_config
from engine.stack.launcher import Stack
from engine.stack.services import RayPorts, ray_temp_dir
from engine.topic_tail import TopicTail

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "chaos.json"
KS, SCHEMA = "c2pg_chaos", "chaos"
PARTITIONS, ROWS_PER_PARTITION, TOPIC_PARTITIONS = 200, 50, 4
TTL_S = 10
POISON_RECORDS = 5

FAULTS = ("kill_node", "kill_supervisor", "restart_head", "restart_postgres", "lock_table", "restart_kafka",
          "restart_cassandra", "restart_connector", "fill_connections", "poison")
SEVERAL = ("kill_node", "restart_kafka", "poison")
"""The faults of the ``several`` round, injected at the same time."""

SERVICE = {"restart_postgres": "postgres", "restart_kafka": "kafka", "restart_cassandra": "cassandra",
           "restart_connector": "debezium"}


def parse_faults(spec: str) -> list[str]:
    """``--faults``: ``all`` (every fault, then ``several``) or a comma list of names."""
    if spec.strip() == "all":
        return [*FAULTS, "several"]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*FAULTS, "several")]
    if unknown or not names:
        raise SystemExit(f"--faults: unknown fault(s) {unknown or spec!r}; known: all, "
                         f"{', '.join((*FAULTS, 'several'))}")
    return names


def diff_rows(cassandra: dict, postgres: dict) -> dict:
    """The oracle's verdict on two ``{(pk, ck): (a, n)}`` maps: counts of rows ``missing`` from
    PostgreSQL, ``extra`` in it, and ``different``, with up to 5 keys of each as a sample."""
    missing = sorted(k for k in cassandra if k not in postgres)
    extra = sorted(k for k in postgres if k not in cassandra)
    different = sorted(k for k in cassandra if k in postgres and cassandra[k] != postgres[k])
    return {"missing": len(missing), "extra": len(extra), "different": len(different),
            "sample": {"missing": missing[:5], "extra": extra[:5], "different": different[:5]}}


def _equal(diff: dict) -> bool:
    return diff["missing"] == diff["extra"] == diff["different"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(msg: str) -> None:
    print(f"chaos {datetime.now(UTC).strftime('%H:%M:%S')} {msg}", flush=True)


class Load(threading.Thread):
    """Writes at ``rate`` statements/s until stopped; :meth:`pause` and :meth:`resume` hold it.
    Failed writes (a Cassandra restart) are counted, not retried: the oracle reads Cassandra
    as the truth, whatever of them was applied."""

    KINDS = ("insert", "update", "row_delete", "range_delete", "partition_delete", "ttl_insert", "past_write")
    WEIGHTS = (40, 25, 10, 5, 2, 10, 8)

    def __init__(self, session, table: str, rate: float):
        super().__init__(daemon=True)
        self.session, self.table, self.rate = session, table, rate
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.failed = 0
        self.last_error: str | None = None
        self._stop_event, self._running = threading.Event(), threading.Event()
        self._inflight = threading.Semaphore(64)
        self._active_s, self._since = 0.0, None
        t = f"{KS}.{table}"
        p = session.prepare
        self._stmts = {
            "insert": p(f"INSERT INTO {t} (pk, ck, a, n) VALUES (?, ?, ?, ?)"),
            "update": p(f"UPDATE {t} SET n = ? WHERE pk = ? AND ck = ?"),
            "row_delete": p(f"DELETE FROM {t} WHERE pk = ? AND ck = ?"),
            "range_delete": p(f"DELETE FROM {t} WHERE pk = ? AND ck >= ? AND ck < ?"),
            "partition_delete": p(f"DELETE FROM {t} WHERE pk = ?"),
            "ttl_insert": p(f"INSERT INTO {t} (pk, ck, a, n) VALUES (?, ?, ?, ?) USING TTL {TTL_S}"),
            "past_write": p(f"UPDATE {t} USING TIMESTAMP ? SET a = ? WHERE pk = ? AND ck = ?"),
        }
        self._rng = random.Random(7)  # nosec B311 - a test load, not security

    def _values(self, kind: str) -> tuple:
        r = self._rng
        pk, ck = r.randrange(PARTITIONS), r.randrange(ROWS_PER_PARTITION)
        if kind in ("insert", "ttl_insert"):
            return (pk, ck, f"v{r.getrandbits(32):x}", r.randrange(1_000_000))
        if kind == "update":
            return (r.randrange(1_000_000), pk, ck)
        if kind == "row_delete":
            return (pk, ck)
        if kind == "range_delete":
            return (pk, ck, ck + r.randrange(1, 5))
        if kind == "partition_delete":
            return (pk,)
        past_us = int(time.time() * 1e6) - r.randrange(1, 5_000_000)
        return (past_us, f"old{r.getrandbits(16):x}", pk, ck)

    def run(self) -> None:
        step = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            if not self._running.wait(0.2):
                next_at = time.monotonic()
                continue
            kind = self._rng.choices(self.KINDS, self.WEIGHTS)[0]
            self._inflight.acquire()
            try:
                future = self.session.execute_async(self._stmts[kind], self._values(kind))
            except Exception as exc:  # noqa: BLE001 - no host (Cassandra down): counted
                self._inflight.release()
                self.failed, self.last_error = self.failed + 1, f"{type(exc).__name__}: {str(exc)[:200]}"
                time.sleep(0.05)
                continue
            future.add_callbacks(self._done, self._failed, callback_args=(kind,), errback_args=(kind,))
            next_at += step
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:  # behind by more than a second (2 cores): do not burst to catch up
                next_at = time.monotonic()

    def _done(self, _rows, kind: str) -> None:
        self.counts[kind] += 1
        self._inflight.release()

    def _failed(self, exc, kind: str) -> None:
        self.failed, self.last_error = self.failed + 1, f"{type(exc).__name__}: {str(exc)[:200]}"
        self._inflight.release()

    def resume(self) -> None:
        self._since = time.monotonic()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()
        for _ in range(64):  # every write in flight answered
            self._inflight.acquire()
        for _ in range(64):
            self._inflight.release()
        if self._since is not None:
            self._active_s += time.monotonic() - self._since
            self._since = None

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    @property
    def written(self) -> int:
        return sum(self.counts.values())

    @property
    def rate_achieved(self) -> float:
        return self.written / self._active_s if self._active_s else 0.0


class Watch(threading.Thread):
    """What an operator would have seen while a fault lasted: ``c2pg sync status`` and
    ``c2pg health --sync`` of the pipeline, sampled until :meth:`stop` — the largest lag, the
    worker states and errors, the components health found down, and how often no status
    could be had (no supervisor)."""

    def __init__(self, chaos: Chaos, config: str):
        super().__init__(daemon=True)
        self.chaos, self.config = chaos, config
        self.max_lag, self.states, self.errors, self.down, self.no_status = 0, set(), [], set(), 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            st = self.chaos.status(self.config)
            if st is None:
                self.no_status += 1
            else:
                parts = [p for w in st.get("workers", []) for p in w.get("partitions", []) if not p.get("heartbeat")]
                self.max_lag = max(self.max_lag, sum(p.get("lag") or 0 for p in parts))
                for w in st.get("workers", []):
                    self.states.add(w.get("state"))
                    error = (w.get("error") or "")[:160]
                    if error and error not in self.errors and len(self.errors) < 6:
                        self.errors.append(error)
            out = self.chaos.c2pg("health", "--config", self.config, "--sync", "--json", timeout_s=60)
            with contextlib.suppress(json.JSONDecodeError):
                self.down |= {c["name"] for c in json.loads(out.stdout) if not c.get("ok")}
            self._stop_event.wait(5)  # each sample is two c2pg processes: keep the machine for sync

    def stop(self) -> dict:
        self._stop_event.set()
        self.join(90)
        return {"max_lag": self.max_lag, "worker_states": sorted(s for s in self.states if s),
                "worker_errors": self.errors, "health_down": sorted(self.down), "status_unavailable": self.no_status}


class Chaos:
    """One run: the private Ray cluster, the table, sync with its keeper, the load, the rounds."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.stack = Stack()
        self.run_id = uuid.uuid4().hex[:6]
        self.table = f"events_{self.run_id}"
        self.topic = f"c2pg.{KS}.{self.table}"
        self.name = f"chaos-{self.run_id}"
        self.cfg = load_config(args.config)
        self.cluster: Stack | None = None
        self.keeper: subprocess.Popen | None = None
        self.poisoned = 0

    # --- setup ---------------------------------------------------------------------------------

    def start_cluster(self) -> None:
        ports = RayPorts(gcs=_free_port(), dashboard=_free_port(), client=_free_port(), agent=_free_port())
        self.cluster = Stack(self.work / "ray", ray_ports=ports)
        self.cluster.up(["ray"], on_event=lambda _: None, ray_nodes=2)
        say(f"private Ray cluster: head and {len(self.cluster.ray_node_names())} worker node(s)")

    def env(self) -> dict[str, str]:
        """The environment of a c2pg command run against the private cluster."""
        assert self.cluster is not None
        head = self.cluster.ray_head
        return {**os.environ, "RAY_ADDRESS": head.gcs_address, "RAY_AUTH_TOKEN_PATH": str(head.token_path),
                "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT), "C2PG_LOG_FORMAT": "json"}

    def c2pg(self, *args: str, timeout_s: float = 300, module: str = "engine.cli") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], env=self.env(), cwd=ROOT,  # nosec B603
                              capture_output=True, text=True, timeout=timeout_s, check=False)

    def make_table(self, session) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        if session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                           (KS,)).one() is None:
            session.execute(f"CREATE KEYSPACE {KS} WITH replication = "
                            "{'class': 'SimpleStrategy', 'replication_factor': 1}")
            # The connector never learns of a table created in the same schema refresh as its
            # keyspace (Debezium 3.4's schema listener): the keyspace settles first.
            time.sleep(2)
        admin = AdminClient(self.cfg.kafka.client_conf())  # the topic before the connector's first event
        admin.create_topics([NewTopic(self.topic, TOPIC_PARTITIONS, 1)])[self.topic].result(30)
        session.execute(f"CREATE TABLE {KS}.{self.table} (pk int, ck int, a text, n int, PRIMARY KEY (pk, ck)) "
                        "WITH cdc = true")
        with TopicTail(self.topic, self.cfg.kafka.client_conf()) as tail:
            if not tail.wait_for_capture(lambda: session.execute(
                    f"INSERT INTO {KS}.{self.table} (pk, ck, a, n) VALUES (-1, -1, 'sentinel', 0)"), 180):
                raise SystemExit(f"the connector never captured {KS}.{self.table}: is the stack up and healthy?")
        say(f"table {KS}.{self.table} captured (topic {self.topic}, {TOPIC_PARTITIONS} partitions)")

    def pipeline_file(self) -> str:
        doc = yaml.safe_load(Path(self.args.config).read_text())
        doc["pipeline"]["name"] = self.name
        doc["tables"] = [{"keyspace": KS, "table": self.table, "target_schema": SCHEMA}]
        secrets = ROOT / ".stack" / "secrets"
        doc["vault"]["role_id"] = f"file:{secrets / 'vault-role-id'}"
        doc["vault"]["secret_id"] = f"file:{secrets / 'vault-secret-id'}"
        doc["sync"]["workers"] = 2
        doc["sync"]["ttl_sweep_interval"] = "5s"  # expired TTL rows leave PostgreSQL soon after Cassandra
        path = self.work / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return str(path)

    def start_sync(self, config: str) -> None:
        log_path = self.work / "keeper.log"
        with open(log_path, "wb") as out:
            self.keeper = subprocess.Popen([sys.executable, "-m", "engine.cli", "sync", "keep",  # nosec B603
                                            "--config", config, "--interval", "1"], env=self.env(), cwd=ROOT,
                                           stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            st = self.status(config)
            workers = (st or {}).get("workers") or []
            if workers and all(w.get("state") == "running" for w in workers):
                nodes = {w.get("node_id") for w in workers}
                say(f"sync running: {len(workers)} workers on {len(nodes)} Ray node(s)")
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"sync did not start within 180 s; keeper log: {log_path}")
            time.sleep(1)

    def status(self, config: str) -> dict | None:
        out = self.c2pg("sync", "status", "--config", config, "--json", timeout_s=60)
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError:
            return None

    # --- the oracle ----------------------------------------------------------------------------

    def read_both(self, session) -> dict:
        from cassandra.query import SimpleStatement

        rows_c = {(r[0], r[1]): (r[2], r[3]) for r in session.execute(SimpleStatement(
            f"SELECT pk, ck, a, n FROM {KS}.{self.table}", fetch_size=5000))}
        with contextlib.closing(psycopg2.connect(**self.cfg.postgres.connect_kwargs(
                application_name="c2pg-chaos-oracle"))) as conn, conn.cursor() as cur:
            cur.execute(f'SELECT pk, ck, a, n FROM "{SCHEMA}"."{self.table}"')
            rows_p = {(r[0], r[1]): (r[2], r[3]) for r in cur.fetchall()}
        return diff_rows(rows_c, rows_p)

    def wait_equal(self, session, timeout_s: float) -> tuple[bool, float, dict]:
        """Poll the oracle until both sides are equal; → (equal, seconds, last diff)."""
        t0 = time.monotonic()
        diff: dict = {}
        while time.monotonic() - t0 < timeout_s:
            try:
                diff = self.read_both(session)
                if _equal(diff):
                    return True, time.monotonic() - t0, diff
            except Exception as exc:  # noqa: BLE001 - a server still coming back: ask again
                diff = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            time.sleep(2)
        return False, time.monotonic() - t0, diff

    def reconcile(self, config: str) -> dict:
        report = self.work / f"reconcile-{uuid.uuid4().hex[:6]}.json"
        out = self.c2pg("--config", config, "--table", f"{KS}.{self.table}", "--output", str(report),
                        module="jobs.reconcile", timeout_s=600)
        if not report.exists():
            return {"error": f"reconcile exited {out.returncode}: {out.stderr[-500:]}"}
        return json.loads(report.read_text())

    def dead_letters(self) -> int:
        with contextlib.closing(psycopg2.connect(**self.cfg.postgres.connect_kwargs())) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM _c2pg.dead_letters WHERE pipeline = %s", (self.name,))
            return int(cur.fetchone()[0])

    def events_committed(self) -> int:
        with contextlib.closing(psycopg2.connect(**self.cfg.postgres.connect_kwargs())) as conn, conn.cursor() as cur:
            cur.execute("SELECT coalesce(sum(next_offset), 0) FROM _c2pg.offsets WHERE pipeline = %s AND topic = %s",
                        (self.name, self.topic))
            return int(cur.fetchone()[0])

    # --- the faults ----------------------------------------------------------------------------

    def inject(self, fault: str, config: str) -> None:
        """Inject ``fault`` and return once it has ended (each is bounded)."""
        if fault == "several":
            threads = [threading.Thread(target=self.inject, args=(f, config)) for f in SEVERAL]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            return
        getattr(self, f"_fault_{fault}" if fault not in SERVICE else "_restart_service")(
            **({"service": SERVICE[fault]} if fault in SERVICE else {"config": config}))

    def _fault_kill_node(self, config: str) -> None:
        assert self.cluster is not None
        names = self.cluster.ray_node_names()
        if not names:
            raise RuntimeError("no Ray worker node to kill")
        self.cluster.kill_ray(names[-1])
        time.sleep(self.args.fault_seconds)  # the node stays away while the load runs
        self.cluster.add_ray_node(on_event=lambda _: None)

    def _fault_kill_supervisor(self, config: str) -> None:
        code = ("import ray\nfrom engine.ray_connect import ensure_ray\nfrom engine.sync.supervisor import find\n"
                f"ensure_ray(persistent=True, log_to_driver=False)\nsup = find({self.name!r})\n"
                "assert sup is not None, 'no supervisor'\nray.kill(sup, no_restart=False)\n")
        out = subprocess.run([sys.executable, "-c", code], env=self.env(), cwd=ROOT,  # nosec B603
                             capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kill_supervisor: {out.stderr[-500:]}")

    def _fault_restart_head(self, config: str) -> None:
        assert self.cluster is not None
        for name in self.cluster.ray_node_names():
            self.cluster.kill_ray(name)
        self.cluster.kill_ray("ray")
        time.sleep(self.args.fault_seconds)
        self.cluster.up(["ray"], on_event=lambda _: None, ray_nodes=2)

    def _restart_service(self, service: str) -> None:
        self.stack.down([service], on_event=lambda _: None)
        time.sleep(self.args.fault_seconds)
        self.stack.up(on_event=lambda _: None)  # the whole stack: the connector too, if it died with it

    def _fault_lock_table(self, config: str) -> None:
        conn = psycopg2.connect(**self.cfg.postgres.connect_kwargs(application_name="c2pg-chaos-lock"))
        try:
            with conn.cursor() as cur:
                cur.execute(f'LOCK TABLE "{SCHEMA}"."{self.table}" IN ACCESS EXCLUSIVE MODE')
                time.sleep(self.args.lock_seconds)
            conn.rollback()
        finally:
            conn.close()

    def _fault_fill_connections(self, config: str) -> None:
        held = []
        try:
            for _ in range(1000):  # bounded: max_connections is far below
                try:
                    held.append(psycopg2.connect(**self.cfg.postgres.connect_kwargs(
                        application_name="c2pg-chaos-filler")))
                except psycopg2.OperationalError:
                    break
            say(f"  holding {len(held)} PostgreSQL connections (every free slot)")
            time.sleep(self.args.fault_seconds)
        finally:
            for c in held:
                c.close()

    def _fault_poison(self, config: str) -> None:
        from confluent_kafka import Producer

        producer = Producer(self.cfg.kafka.client_conf())
        for i in range(POISON_RECORDS):
            producer.produce(self.topic, key=json.dumps({"pk": -100 - i}).encode(),
                             value=b'{"payload": "this is not a change event", "broken": ',
                             partition=i % TOPIC_PARTITIONS)
        if producer.flush(30) != 0:
            raise RuntimeError("poison records not delivered")
        self.poisoned += POISON_RECORDS

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        deadline = time.monotonic() + args.max_minutes * 60
        started = datetime.now(UTC).isoformat(timespec="seconds")
        cluster_, session = cql.connect(self.cfg.cassandra)
        load: Load | None = None
        rounds: list[dict] = []
        self.rounds = rounds
        plan = parse_faults(args.faults)
        try:
            self.start_cluster()
            self.make_table(session)
            config = self.pipeline_file()
            self.start_sync(config)
            load = Load(session, self.table, args.rate)
            load.start()
            for i, fault in enumerate(plan):
                if time.monotonic() > deadline:
                    rounds += [{"fault": f, "skipped": "--max-minutes reached"} for f in plan[i:]]
                    say(f"--max-minutes reached: {len(plan) - i} round(s) skipped")
                    break
                rounds.append(self.round(fault, config, session, load))
        finally:
            if load is not None:
                load.stop()
            self.teardown()
            cluster_.shutdown()
        return self.summary(started, rounds, load)

    def round(self, fault: str, config: str, session, load: Load) -> dict:
        args = self.args
        say(f"{fault}: load on for {args.fault_seconds} s")
        load.resume()
        time.sleep(args.fault_seconds)
        dead_expected = self.poisoned + (POISON_RECORDS if fault in ("poison", "several") else 0)
        say(f"{fault}: injecting")
        watch = Watch(self, config)
        watch.start()
        t_fault = time.monotonic()
        error = None
        try:
            self.inject(fault, config)
        except Exception as exc:  # noqa: BLE001 - the round is recorded as not survived, with why
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
            say(f"{fault}: injection failed: {error}")
        t_end = time.monotonic()
        say(f"{fault}: fault over after {t_end - t_fault:.1f} s; load on for {args.fault_seconds} s more")
        time.sleep(args.fault_seconds)
        load.pause()
        st = self.status(config)
        lag = sum(p.get("lag") or 0 for w in (st or {}).get("workers", []) for p in w.get("partitions", [])
                  if not p.get("heartbeat"))
        say(f"{fault}: load paused ({load.written} writes so far, {load.failed} failed"
            f"{f', last: {load.last_error}' if load.failed else ''}); lag {lag}; waiting for equality")
        equal, waited, diff = self.wait_equal(session, args.recover_timeout)
        recovery_s = round(time.monotonic() - t_end, 1)
        seen = watch.stop()
        say(f"{fault}: seen meanwhile: {seen}")
        if not equal:
            with contextlib.suppress(Exception):
                seen["offsets"] = self.offsets_against_ends()
                say(f"{fault}: committed offsets against the topic's ends: {seen['offsets']}")
        say(f"{fault}: {'EQUAL' if equal else 'NOT EQUAL'} {recovery_s} s after the fault ended; {diff}")
        rec = self.reconcile(config)
        drift = rec.get("drift")
        dead = self.dead_letters()
        say(f"{fault}: reconcile drift {drift}; dead letters {dead} (injected {dead_expected})")
        survived = equal and drift == 0 and dead == dead_expected and error is None
        return {"fault": fault, "survived": survived, "error": error, "fault_s": round(t_end - t_fault, 1),
                "recovery_s": recovery_s if equal else None, "equal": equal, "oracle": diff,
                "rows_lost": 0 if equal else diff.get("missing", 0) + diff.get("different", 0),
                "duplicate_rows": 0 if equal else diff.get("extra", 0), "reconcile_drift": drift,
                "reconcile_error": rec.get("error"), "dead_letters": dead, "dead_letters_injected": dead_expected,
                "lag_at_pause": lag, "seen": seen}

    def teardown(self) -> None:
        if self.keeper is not None:
            self.keeper.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.keeper.wait(30)
        if self.cluster is not None:
            for name in self.cluster.ray_node_names():
                self.cluster.kill_ray(name)
            self.cluster.kill_ray("ray")
            self.cluster.down(on_event=lambda _: None)
            if self.kept_for_diagnosis():
                say(f"a round failed: the Ray logs are kept in /tmp/{ray_temp_dir(self.work / 'ray').name}*, "
                    f"the keeper's log and the reconcile reports in {self.work}")
            else:
                for d in Path("/tmp").glob(ray_temp_dir(self.work / "ray").name + "*"):
                    shutil.rmtree(d, ignore_errors=True)
        self.stack.up(on_event=lambda _: None)  # whatever a fault left down is up again

    def kept_for_diagnosis(self) -> bool:
        """A round that did not survive keeps its evidence (Ray's logs, the keeper's log)."""
        return any(not r.get("survived", True) for r in getattr(self, "rounds", []))

    def offsets_against_ends(self) -> list[dict]:
        """Per partition of the table's topic: the offset sync committed and the topic's end,
        so a round that is not equal says whether events were left in Kafka (sync behind or
        stuck) or never reached it (capture)."""
        from confluent_kafka import Consumer, TopicPartition

        with contextlib.closing(psycopg2.connect(**self.cfg.postgres.connect_kwargs())) as conn, conn.cursor() as cur:
            cur.execute("SELECT kafka_partition, next_offset FROM _c2pg.offsets WHERE pipeline = %s AND topic = %s",
                        (self.name, self.topic))
            committed = dict(cur.fetchall())
        consumer = Consumer({**self.cfg.kafka.client_conf(), "group.id": f"c2pg-chaos-{self.run_id}-ends"})
        try:
            return [{"partition": p, "committed": committed.get(p),
                     "end": consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]}
                    for p in range(TOPIC_PARTITIONS)]
        finally:
            consumer.close()

    def summary(self, started: str, rounds: list[dict], load: Load | None) -> dict:
        done = [r for r in rounds if "skipped" not in r]
        recovery: dict[str, float] = {}
        for r in done:
            if r["recovery_s"] is not None:
                recovery[r["fault"]] = max(recovery.get(r["fault"], 0.0), r["recovery_s"])
        drifts = [r["reconcile_drift"] for r in done]
        return {
            "started_at": started, "pipeline": self.name, "table": f"{KS}.{self.table}",
            "command": "python -m benchmarks.chaos " + " ".join(sys.argv[1:]),
            "faults_injected": len(done), "faults_survived": sum(1 for r in done if r["survived"]),
            "drift_rows_after": sum(d for d in drifts if isinstance(d, int)),
            "reconcile_failed": sum(1 for d in drifts if not isinstance(d, int)),
            "rows_lost": sum(r["rows_lost"] for r in done), "duplicate_rows": sum(r["duplicate_rows"] for r in done),
            "dead_letters": done[-1]["dead_letters"] if done else 0, "dead_letters_injected": self.poisoned,
            "max_recovery_s": recovery, "events_applied": self.events_committed() if done else 0,
            "writes": dict(load.counts) if load else {}, "writes_failed": load.failed if load else 0,
            "write_rate_target": self.args.rate, "write_rate_achieved": round(load.rate_achieved, 1) if load else 0,
            "rounds": rounds,
        }


def save(run: dict, path: Path = RESULTS) -> None:
    """Append ``run`` to ``runs`` (every run kept) and put its summary at the top level,
    as the other results files do (``drift_rows_after``, ``rows_lost``, … of the latest run)."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    runs = [*doc.get("runs", []), run]
    latest = {k: v for k, v in run.items() if k != "rounds"}
    path.write_text(json.dumps({**latest, "runs": runs}, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--faults", default="all", help="all, or a comma list of: " + ", ".join((*FAULTS, "several")))
    p.add_argument("--rate", type=float, default=1500, help="target writes/s of the load (default 1500)")
    p.add_argument("--fault-seconds", type=float, default=10, help="load before and after each fault, and how "
                   "long a stopped server stays down (default 10)")
    p.add_argument("--lock-seconds", type=float, default=60, help="how long lock_table holds its lock (default 60)")
    p.add_argument("--recover-timeout", type=float, default=600, help="seconds a round may take to become equal "
                   "(the connector catching up after a Kafka restart took 280 s at 3000 writes/s)")
    p.add_argument("--max-minutes", type=float, default=45, help="the run stops itself after this (default 45)")
    p.add_argument("--config", default=str(ROOT / "examples" / "pipeline.local.yaml"))
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    parse_faults(args.faults)  # a typo fails before anything starts
    work = Path(tempfile.mkdtemp(prefix="c2pg-chaos-"))
    run = Chaos(args, work).run()
    save(run, Path(args.results))
    say(f"faults injected {run['faults_injected']}, survived {run['faults_survived']}; drift after "
        f"{run['drift_rows_after']}; rows lost {run['rows_lost']}; duplicates {run['duplicate_rows']}; dead letters "
        f"{run['dead_letters']} (injected {run['dead_letters_injected']}); writes {sum(run['writes'].values())} at "
        f"{run['write_rate_achieved']}/s (target {run['write_rate_target']}); events applied {run['events_applied']}")
    say(f"max recovery s per fault: {run['max_recovery_s']}; results in {args.results}")
    if all(r.get("survived", True) for r in run["rounds"]):
        shutil.rmtree(work, ignore_errors=True)
    ok = run["faults_injected"] == run["faults_survived"] and run["rows_lost"] == run["duplicate_rows"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
