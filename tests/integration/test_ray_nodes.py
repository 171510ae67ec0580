"""Sync on several Ray nodes: workers on every node, a node lost mid-stream, a node joining,
the head lost and sync brought back by the keeper (``c2pg sync keep``).

These tests kill Ray nodes, so they run on a Ray cluster of their own, never the stack's
(other test processes use that one): a head and one worker node on 127.0.0.1 with their own
ports, temp dirs and token, started through the same launcher as the stack's
(``Stack(tmp, ray_ports=...)``, ``up(["ray"], ray_nodes=2)``). The pipeline uses the stack's
Cassandra, Kafka and PostgreSQL. The test process itself stays off that cluster: it drives
it through ``c2pg`` commands with ``RAY_ADDRESS`` and ``RAY_AUTH_TOKEN_PATH`` pointing at it,
as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from engine import faults
from engine.compare import wait_equal
from engine.stack.launcher import Stack
from engine.stack.services import RayPorts, ray_temp_dir
from engine.topic_tail import TopicTail
from tests.conftest import EXAMPLE_PIPELINE, ROOT

# Not exclusive: the nodes it kills are its own cluster's, and every wait is bounded by a
# signal (status, equality) with a generous timeout, so another test beside it costs only time.

KS = "c2pg_ray_nodes_test"
SCHEMA = "ray_nodes_test"
KAFKA = {"bootstrap.servers": "127.0.0.1:9092"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private Ray cluster: the head and one worker node, torn down at the end."""
    root = tmp_path_factory.mktemp("ray-cluster")
    ports = RayPorts(gcs=_free_port(), dashboard=_free_port(), client=_free_port(), agent=_free_port())
    stack = Stack(root, ray_ports=ports)
    try:
        stack.up(["ray"], on_event=lambda _: None, ray_nodes=2)
        yield stack
    finally:
        # SIGKILL: the cluster is disposable, and the head's `ray start --block` would make
        # `down` wait 8 s for a SIGTERM it ignores. `down` then finds nothing left to stop.
        for name in stack.ray_node_names():
            stack.kill_ray(name)
        stack.kill_ray("ray")
        stack.down(on_event=lambda _: None)
        for d in Path("/tmp").glob(ray_temp_dir(root).name + "*"):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cass(cql_session):
    return cql_session


def _env(cluster: Stack, **extra: str) -> dict[str, str]:
    """The environment of a `c2pg` command run against the private cluster."""
    head = cluster.ray_head
    return {**os.environ, "RAY_ADDRESS": head.gcs_address, "RAY_AUTH_TOKEN_PATH": str(head.token_path),
            "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT), "C2PG_LOG_FORMAT": "json", **extra}


def _c2pg(env: dict[str, str], *args: str, timeout_s: float = 120) -> str:
    out = subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout_s, check=False)
    assert out.returncode == 0, f"c2pg {' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    return out.stdout


def _status(env: dict[str, str], config: str) -> dict:
    return json.loads(_c2pg(env, "sync", "status", "--config", config, "--json"))


def _wait_status(env: dict[str, str], config: str, ok: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        st = _status(env, config)
        if ok(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}; status: {json.dumps(st)[:3000]}")
        time.sleep(1.0)


def _table(cass, partitions: int) -> tuple[str, str]:
    """A new CDC table whose topic has ``partitions`` partitions (made before the connector's
    first event, which would make it with Kafka's default of one), captured already."""
    from confluent_kafka.admin import AdminClient, NewTopic

    table = "t_" + uuid.uuid4().hex[:8]
    topic = f"c2pg.{KS}.{table}"
    admin = AdminClient(KAFKA)  # kept until the answer: a client collected meanwhile fails the future
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    cass.execute(f"CREATE TABLE {KS}.{table} (id int PRIMARY KEY, v text, n int) WITH cdc = true")
    with TopicTail(topic, KAFKA) as tail:
        assert tail.wait_for_capture(lambda: cass.execute(f"INSERT INTO {KS}.{table} (id, v) VALUES (-1, 'x')"),
                                     60), "the connector does not capture the new table"
    return table, topic


def _pipeline_file(tmp_path: Path, name: str, table: str) -> str:
    doc = yaml.safe_load(EXAMPLE_PIPELINE.read_text())
    doc["pipeline"]["name"] = name
    doc["tables"] = [{"keyspace": KS, "table": table, "target_schema": SCHEMA}]
    secrets = ROOT / ".stack" / "secrets"
    doc["vault"]["role_id"] = f"file:{secrets / 'vault-role-id'}"
    doc["vault"]["secret_id"] = f"file:{secrets / 'vault-secret-id'}"
    doc["capture"] = {"heartbeat": False}  # its own topic and partition: not what these tests watch
    doc["sync"]["workers"] = 2
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


class Load:
    """Writes to the table from a thread until stopped: inserts, then updates of what it
    wrote, then a delete in ten."""

    def __init__(self, cass, table: str, start: int):
        self.cass, self.table, self.n = cass, table, start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def _run(self) -> None:
        insert = self.cass.prepare(f"INSERT INTO {KS}.{self.table} (id, v, n) VALUES (?, ?, ?)")
        update = self.cass.prepare(f"UPDATE {KS}.{self.table} SET n = ? WHERE id = ?")
        delete = self.cass.prepare(f"DELETE FROM {KS}.{self.table} WHERE id = ?")
        while not self._stop.is_set():
            i = self.n
            self.cass.execute(insert, (i, f"v{i}", i))
            if i % 3 == 0:
                self.cass.execute(update, (-i, i - 2))
            if i % 10 == 0:
                self.cass.execute(delete, (i - 5,))
            self.n += 1
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_workers_spread_a_lost_node_moves_its_partitions_and_a_new_node_takes_some_back(
        cluster, cass, pg, cdc_keyspaces, tmp_path, monkeypatch):
    assert KS in cdc_keyspaces  # past the connector's schema-refresh window
    table, topic = _table(cass, partitions=4)
    for i in range(300):
        cass.execute(f"INSERT INTO {KS}.{table} (id, v, n) VALUES (%s, %s, %s)", (i, f"v{i}", i))
    ids = cluster.ray_node_ids()
    head, node = ids["ray"], ids["ray-node-1"]
    config = _pipeline_file(tmp_path, f"nodes-{table}", table)
    fault_dir = tmp_path / "faults"
    # The first batch a worker on the worker node writes holds before its commit: the node is
    # killed with that batch provably in flight (written, not committed).
    env = _env(cluster, C2PG_FAULTS=f"sync.commit:node={node},action=hold,times=1",
               C2PG_FAULTS_DIR=str(fault_dir))
    _c2pg(env, "sync", "start", "--config", config)
    try:
        held = faults.wait_held("sync.commit", 90, fault_dir)
        assert held["node"] == node
        st = _status(env, config)
        assert {w["node_id"] for w in st["workers"]} == {head, node}, "a worker on each node"
        assert len({w["node_ip"] for w in st["workers"]}) == 1  # one machine: the nodes differ by id
        assert all(w["node_ip"] for w in st["workers"])
        on_node = sorted(p["partition"] for w in st["workers"] if w["node_id"] == node for p in w["partitions"])
        assert on_node

        with Load(cass, table, 1000):
            cluster.kill_ray("ray-node-1")
            st = _wait_status(env, config, lambda s: len(s["workers"]) == 2 and all(
                w["node_id"] == head and w["state"] == "running" for w in s["workers"]), 90,
                "both workers running on the head after the node was killed")
        moved = [m for m in st["moves"] if m["from_node"] == node]
        assert moved, st["moves"]
        assert sorted(int(p.rsplit("/", 1)[1]) for m in moved for p in m["partitions"]) == on_node
        assert all(m["to_node"] in (head, None) for m in moved)
        assert wait_equal(cass, pg, KS, table, SCHEMA, table, timeout_s=90) == []

        # A node joins: one worker moves to it (stopped first, then started there). Its first
        # `ray start` fails (as a raylet missing Ray's 30 s to register did once on a loaded
        # machine): the launcher says so and starts it again.
        events: list[str] = []
        with monkeypatch.context() as m:
            m.setenv("C2PG_FAULTS", "stack.ray_node_start:action=error,times=1")
            m.setenv("C2PG_FAULTS_DIR", str(tmp_path / "node-start-fault"))
            name = cluster.add_ray_node(on_event=events.append)
        assert any("injected fault at stack.ray_node_start" in e and e.endswith("starting it again")
                   for e in events), events
        deadline = time.monotonic() + 30
        while (joined := cluster.ray_node_ids().get(name)) is None:  # the state API can be slow to answer
            assert time.monotonic() < deadline, f"{name} is not listed alive"
            time.sleep(0.5)
        assert joined not in (head, node)
        with Load(cass, table, 100_000):
            st = _wait_status(env, config, lambda s: {w["node_id"] for w in s["workers"]} == {head, joined}
                              and all(w["state"] == "running" for w in s["workers"]), 90,
                              "the workers spread again over the head and the new node")
        assert any(m["to_node"] == joined and m["reason"].startswith("rebalance") for m in st["moves"]), st["moves"]
        assert wait_equal(cass, pg, KS, table, SCHEMA, table, timeout_s=90) == []
    finally:
        faults.release("sync.commit", fault_dir)
        _c2pg(env, "sync", "stop", "--config", config)


def test_after_a_head_restart_the_keeper_brings_sync_back(cluster, cass, pg, cdc_keyspaces, tmp_path):
    table, _ = _table(cass, partitions=2)
    config = _pipeline_file(tmp_path, f"keep-{table}", table)
    env = _env(cluster)
    log_path = tmp_path / "keeper.log"
    with open(log_path, "wb") as out:
        keeper = subprocess.Popen([sys.executable, "-m", "engine.cli", "sync", "keep", "--config", config,
                                   "--interval", "1"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        for i in range(200):
            cass.execute(f"INSERT INTO {KS}.{table} (id, v, n) VALUES (%s, %s, %s)", (i, f"v{i}", i))
        assert wait_equal(cass, pg, KS, table, SCHEMA, table, timeout_s=90) == []

        killed_at = time.time()
        with Load(cass, table, 1000):
            cluster.kill_ray("ray")  # the head and everything on it: the supervisor, the GCS
            # Events keep arriving while no head runs. A new head is a new cluster; the
            # worker node of the old one is killed and a new one joins.
            cluster.up(["ray"], on_event=lambda _: None)  # as many nodes as before
        assert wait_equal(cass, pg, KS, table, SCHEMA, table, timeout_s=90) == []
        assert _status(env, config)["started_at"] > killed_at  # a supervisor of the new head's
        assert log_path.read_text().count("supervisor was missing; started it") >= 2
    finally:
        keeper.terminate()
        keeper.wait(30)
        print(log_path.read_text()[-6000:])  # shown when the test fails
        _c2pg(env, "sync", "stop", "--config", config)
