"""The stack launcher with real processes: start, reuse, stop, and how each failure reads.

Every test has its own stack directory (``tmp_path``) and its own free loopback ports, so it
never meets the developer's running stack (nor its ports) and never needs it: this file does
not use the ``stack`` fixture. ``engine.stack.versions.PORTS`` is patched before a ``Stack``
is built because each service reads its port at construction.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import cli
from engine.errors import StackError
from engine.stack import versions as v
from engine.stack.launcher import Stack
from engine.stack.services import Service, StackPaths


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nobody listens on (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((v.HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def running(pid: int) -> bool:
    """Alive and not a zombie; reaps the pid first when it is a child of this process."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def recorded_pid(stack: Stack, name: str) -> int | None:
    entry = json.loads(stack.state_file.read_text()).get(name) if stack.state_file.exists() else None
    return entry and int(entry["pid"])


@pytest.fixture
def ports(monkeypatch) -> dict[str, int]:
    """Every port of the stack moved to a free one, for this test only."""
    chosen = dict(zip(v.PORTS, free_ports(len(v.PORTS)), strict=True))
    for key, port in chosen.items():
        monkeypatch.setitem(v.PORTS, key, port)
    return chosen


@pytest.fixture
def temp_stack(tmp_path, ports):
    """A Stack under ``tmp_path``; whatever it still runs at the end is stopped."""
    s = Stack(tmp_path / "stack")
    yield s
    s.down(timeout_s=5)


class Scripted(Service):
    """A stand-in server: runs ``argv``, never answers its probe."""

    def __init__(self, paths: StackPaths, name: str, argv: list[str], start_timeout_s: float):
        [port] = free_ports(1)
        super().__init__(name, port, paths, start_timeout_s=start_timeout_s)
        self.argv = argv

    def command(self) -> list[str]:
        return self.argv

    def probe(self) -> str | None:
        raise ConnectionRefusedError(f"{self.name} never answers")


def only(stack: Stack, svc: Service) -> Stack:
    stack.services = {svc.name: svc}
    return stack


# --- the happy path ---------------------------------------------------------------------


def test_vault_up_is_idempotent_and_down_stops_it(temp_stack, ports):
    events: list[str] = []

    [row] = temp_stack.up(["vault"], on_event=events.append)

    assert row.name == "vault" and row.port == ports["vault"]
    assert row.healthy, row.detail
    assert row.detail.startswith("version ")
    pid = row.pid
    assert pid is not None and running(pid)
    assert recorded_pid(temp_stack, "vault") == pid
    assert f"-dev-listen-address={v.HOST}:{ports['vault']}" in \
        Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")
    assert any(e.startswith("vault: ready on") for e in events)

    [st] = temp_stack.status(["vault"])
    assert (st.pid, st.running, st.healthy) == (pid, True, True)
    assert st.rss_mb is not None and st.rss_mb > 0

    events.clear()
    [again] = temp_stack.up(["vault"], on_event=events.append)
    assert again.pid == pid and again.healthy
    assert f"vault: already running (pid {pid})" in events
    assert not any("started" in e for e in events)

    events.clear()
    temp_stack.down(on_event=events.append)
    assert events == [f"vault: stopped (pid {pid})"]
    assert not running(pid)
    assert recorded_pid(temp_stack, "vault") is None
    [after] = temp_stack.status(["vault"])
    assert (after.pid, after.running, after.healthy, after.rss_mb) == (None, False, False, None)

    events.clear()
    temp_stack.down(on_event=events.append)  # nothing left to stop: a no-op
    assert events == []


# --- failures name the service, the cause and the log -----------------------------------


def test_port_taken_by_a_stranger_is_reported_with_port_and_log(temp_stack, ports):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((v.HOST, ports["vault"]))
        squatter.listen()

        with pytest.raises(StackError) as err:
            temp_stack.up(["vault"], on_event=lambda m: None)

    msg = str(err.value)
    assert err.value.service == "vault" and msg.startswith("vault: ")
    assert f"{v.HOST}:{ports['vault']}" in msg and "already in use" in msg
    assert str(temp_stack.log_path("vault")) in msg
    assert recorded_pid(temp_stack, "vault") is None  # nothing was started


def test_service_dying_while_starting_reports_exit_code_and_log_tail(temp_stack):
    argv = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    stack = only(temp_stack, Scripted(temp_stack.paths, "crasher", argv, start_timeout_s=20))

    t0 = time.monotonic()
    with pytest.raises(StackError) as err:
        stack.up(on_event=lambda m: None)

    assert time.monotonic() - t0 < 10  # noticed by its exit, not by the timeout
    msg = str(err.value)
    assert err.value.service == "crasher" and msg.startswith("crasher: ")
    assert "exited with code 3" in msg
    assert "boom" in err.value.cause  # the log's tail is in the message
    assert str(stack.log_path("crasher")) in msg
    assert "boom" in stack.log_path("crasher").read_text()


def test_service_never_ready_times_out_and_down_stops_its_process_group(temp_stack):
    # sh stays the parent (``; :`` keeps it from exec'ing sleep) and carries the marker as $0,
    # so down() must stop the whole group, not just the pid it recorded.
    svc = Scripted(temp_stack.paths, "sleeper", [], start_timeout_s=2)
    svc.argv = ["sh", "-c", "sleep 30; :", str(svc.data_dir)]
    stack = only(temp_stack, svc)

    t0 = time.monotonic()
    with pytest.raises(StackError) as err:
        stack.up(on_event=lambda m: None)
    waited = time.monotonic() - t0

    assert 2 <= waited < 6
    msg = str(err.value)
    assert msg.startswith("sleeper: ") and "not ready after 2s" in msg
    assert "never answers" in msg and str(stack.log_path("sleeper")) in msg

    pid = recorded_pid(stack, "sleeper")
    assert pid is not None and running(pid)  # a failed start leaves it up for its logs
    sleeps = children(pid)
    assert sleeps and all(running(c) for c in sleeps)

    events: list[str] = []
    stack.down(on_event=events.append, timeout_s=5)
    assert events == [f"sleeper: stopped (pid {pid})"]
    assert not running(pid)
    assert not any(running(c) for c in sleeps)


def test_down_leaves_a_process_that_is_not_ours_running(temp_stack):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        temp_stack.paths.root.mkdir(parents=True, exist_ok=True)
        temp_stack.state_file.write_text(json.dumps({"vault": {"pid": stranger.pid,
                                                               "started_at": time.time()}}))

        [st] = temp_stack.status(["vault"])
        assert st.pid is None and not st.running  # the recorded pid is not recognised as ours

        events: list[str] = []
        temp_stack.down(on_event=events.append, timeout_s=2)

        assert events == []
        assert stranger.poll() is None and running(stranger.pid)
        assert recorded_pid(temp_stack, "vault") is None  # the stale entry is forgotten
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait(timeout=5)


def test_unknown_service_is_rejected_listing_the_known_ones(temp_stack):
    with pytest.raises(StackError) as err:
        temp_stack.up(["nope"], on_event=lambda m: None)

    assert err.value.service == "nope"
    assert "unknown service" in str(err.value)
    for name in ("postgres", "vault", "kafka", "cassandra", "registry", "debezium"):
        assert name in err.value.cause
    assert not temp_stack.state_file.exists()  # rejected before anything happened


# --- the CLI ----------------------------------------------------------------------------


def test_cli_status_json_on_an_empty_stack_is_all_down(tmp_path, ports, monkeypatch, capsys):
    monkeypatch.setenv("C2PG_STACK_DIR", str(tmp_path / "empty"))

    t0 = time.monotonic()
    code = cli.main(["stack", "status", "--json"])

    assert code == 1
    assert time.monotonic() - t0 < 15
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["postgres", "vault", "kafka", "cassandra", "registry",
                                         "debezium", "ray"]
    for r in rows:
        assert r["port"] == ports["ray_dashboard" if r["name"] == "ray" else r["name"]]
        assert (r["pid"], r["running"], r["healthy"], r["rss_mb"]) == (None, False, False, None), r
        assert r["detail"], r  # why it is down
