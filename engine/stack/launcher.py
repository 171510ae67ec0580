"""``c2pg stack up | down | status | logs``: the local stack's life cycle.

The launcher starts each server as its own process group, records ``pid`` and a marker of
its command line in ``<stack>/state.json``, and waits for a real answer from each (see
:mod:`engine.health`). ``up`` is idempotent: a recorded process that is alive and still
ours is reused. ``down`` stops only the processes recorded there, by pid, never by name.
A file lock keeps two launchers (a test session and a shell) from racing.

Failure means a :class:`~engine.errors.StackError` naming the service, the cause and the
log file; services already started stay up so their logs can be read (``down`` stops them).

Ray worker nodes (``up(ray_nodes=N)``, ``c2pg stack up --ray-nodes N``): N-1 nodes beside the
head (:class:`~engine.stack.services.RayNode`), recorded under ``ray-nodes`` in the state
file with their process group and raylet pid. When ``ray`` is among the services brought
up with N given, exactly N-1 run afterwards; without N, as many as were recorded (none on a
new stack: the head alone), those that died started again. Nodes whose head is gone (the
head is being started anew) are killed first, as they belong to a cluster that no longer
exists, and as many new ones join the new head. :meth:`Stack.add_ray_node` and
:meth:`Stack.kill_ray` are for the node-loss tests.

TLS mode (``up(tls=True)``, ``c2pg stack up --tls``) is sticky: a marker file keeps it for
later ``up`` calls until ``up(tls=False)``. Entering or leaving it restarts the servers that
read their TLS settings at start (Kafka, Cassandra, the connector); PostgreSQL and OpenBao
switch live, in each service's ``configure()``, which runs on every ``up``. ADR 0013.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from engine import faults, health
from engine.errors import StackError
from engine.stack import versions as v
from engine.stack.root import default_root
from engine.stack.services import NODE_LABEL, RayHead, RayNode, RayPorts, Service, StackPaths, all_services

log = structlog.get_logger("c2pg.stack")

NODE_START_ATTEMPTS = 2
"""How many times :meth:`Stack._start_node` runs ``ray start`` for one worker node."""

EXTRA_PORTS = {"kafka": ["kafka_controller", "kafka_tls"], "cassandra": ["cassandra_storage", "cassandra_jmx"]}


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One row of ``c2pg stack status``."""

    name: str
    port: int
    pid: int | None
    running: bool
    healthy: bool
    detail: str
    rss_mb: float | None

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__slots__}


class Stack:
    """The seven servers under one directory, and the Ray worker nodes beside its head.
    Cheap to construct; does nothing until called.

    ``ray_ports``/``ray_env``: the Ray head's ports and extra environment, for a private Ray
    cluster beside the stack's (``Stack(tmp, ray_ports=...).up(["ray"], ray_nodes=2)``; the
    node-loss tests)."""

    def __init__(self, root: Path | None = None, ray_ports: RayPorts | None = None,
                 ray_env: dict[str, str] | None = None):
        self.paths = StackPaths(root or default_root())
        self.services: dict[str, Service] = {s.name: s for s in all_services(self.paths, self.tls, ray_ports,
                                                                              ray_env)}

    @property
    def ray_head(self) -> RayHead:
        head = self.services["ray"]
        assert isinstance(head, RayHead)
        return head

    @property
    def tls(self) -> bool:
        """Whether the stack is in TLS mode (sticky: see :meth:`up`)."""
        return self.paths.tls_mode_file.exists()

    def _set_tls(self, tls: bool) -> None:
        if tls:
            self.paths.tls_files()  # the certificates first: the servers' configuration names them
            self.paths.tls_mode_file.write_text("tls\n")
        else:
            self.paths.tls_mode_file.unlink(missing_ok=True)
        for svc in self.services.values():
            svc.tls = tls

    # --- bookkeeping ---------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.paths.root / "state.json"

    def _load_state(self) -> dict[str, dict]:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_state(self, state: dict[str, dict]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.paths.root / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _pid_if_ours(self, svc: Service, entry: dict | None) -> int | None:
        """The recorded pid, if that process is alive and its command line is still ours."""
        if not entry:
            return None
        pid = int(entry["pid"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return None
        return pid if svc.cmd_marker() in cmdline else None

    # --- up ------------------------------------------------------------------------------

    def up(self, names: list[str] | None = None, on_event: Callable[[str], None] | None = None,
           tls: bool | None = None, ray_nodes: int | None = None) -> list[ServiceStatus]:
        """Install, start and wait for ``names`` (default: all) and their dependencies.

        ``tls``: enter (True) or leave (False) TLS mode, which stays for later calls; None
        keeps the current mode. A running server started in the other mode is restarted if
        it reads its TLS settings at start, reconfigured live otherwise.

        ``ray_nodes``: when ``ray`` is brought up, the Ray nodes to run, the head included:
        worker nodes are started or stopped to make ``ray_nodes - 1`` of them. None leaves
        the running worker nodes as they are (none on a new stack: the head alone), so a
        plain ``up`` (the tests' session fixture) does not take away nodes asked for earlier.
        """
        if ray_nodes is not None and ray_nodes < 1:
            raise StackError("ray", f"--ray-nodes must be at least 1 (the head), not {ray_nodes}")
        say = on_event or (lambda msg: log.info(msg))
        wanted = self._with_dependencies(names or list(self.services))
        with self._locked(), _driver_logs_silenced():
            self.paths.logs.mkdir(parents=True, exist_ok=True)
            if tls is not None:
                self._set_tls(tls)
            state = self._load_state()
            for name in reversed(list(self.services)):
                svc = self.services[name]
                entry = state.get(name)
                if (svc.restart_on_mode_change and self._pid_if_ours(svc, entry) is not None
                        and bool((entry or {}).get("tls")) != svc.tls):
                    say(f"{name}: restarting into {'TLS' if svc.tls else 'plain'} mode")
                    self._stop(svc, state)
                    if name not in wanted:
                        wanted = self._with_dependencies([*wanted, name])
            node_count = len(self._nodes(state)) if ray_nodes is None else ray_nodes - 1
            if "ray" in wanted and self._pid_if_ours(self.ray_head, state.get("ray")) is None:
                # A new head is a new cluster: nodes of the old one would wait for a GCS that
                # is gone (no orphans).
                for node in self._stop_nodes(state, list(self._nodes(state)), signal.SIGKILL):
                    say(f"{node}: killed (its head is gone)")
                self._save_state(state)
            for name in wanted:
                svc = self.services[name]
                if self._pid_if_ours(svc, state.get(name)) is None:
                    say(f"{name}: installing (cached after the first time)")
                    svc.install()
            started: dict[str, float] = {}
            ready: set[str] = set()
            procs: dict[str, subprocess.Popen] = {}
            while len(ready) < len(wanted):
                for name in wanted:
                    svc = self.services[name]
                    if name in started or not all(d in ready for d in svc.depends_on):
                        continue
                    pid = self._pid_if_ours(svc, state.get(name))
                    if pid is not None:
                        say(f"{name}: already running (pid {pid})")
                    else:
                        procs[name] = self._spawn(svc)
                        state[name] = {"pid": procs[name].pid, "started_at": time.time(), "tls": svc.tls}
                        self._save_state(state)
                        say(f"{name}: started (pid {procs[name].pid}), waiting for it to answer")
                    started[name] = time.monotonic()
                for name in [n for n in started if n not in ready]:
                    svc = self.services[name]
                    if self._ready(svc, procs.get(name), started[name]):
                        if name in procs:
                            svc.after_ready()
                        svc.configure()
                        ready.add(name)
                        say(f"{name}: ready on {v.HOST}:{svc.port} "
                            f"({time.monotonic() - started[name]:.1f}s)")
                if len(ready) < len(wanted):
                    time.sleep(0.5)
            if "ray" in wanted:
                self._scale_nodes(state, node_count, say)
        return self.status(wanted)

    def _with_dependencies(self, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in self.services]
        if unknown:
            raise StackError(", ".join(unknown), f"unknown service; known: {', '.join(self.services)}")
        out: list[str] = []
        for name in self.services:  # keeps the start order
            if name in names or any(name in self.services[n].depends_on for n in names):
                out.append(name)
        return out

    def _spawn(self, svc: Service) -> subprocess.Popen:
        for port in _ports(svc):
            if _port_open(port):
                raise svc.fail(f"port {v.HOST}:{port} is already in use by a process this stack "
                               "did not start (stop it, or change engine/stack/versions.py)")
        svc.prepare()
        # The child's cwd, even if prepare() is a no-op, and its HOME: servers write there
        # (OpenBao's dev token helper writes ~/.vault-token), never in the user's home.
        svc.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(svc.log_file, "ab")  # noqa: SIM115 - handed to the child
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {svc.name}\n".encode())
        out.flush()
        try:
            return subprocess.Popen(svc.command(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=svc.data_dir, user=svc.run_as,
                                    env={**os.environ, "HOME": str(svc.data_dir), **svc.env})
        except OSError as exc:
            raise svc.fail(f"could not start: {exc}") from exc
        finally:
            out.close()

    def _ready(self, svc: Service, proc: subprocess.Popen | None, since: float) -> bool:
        if proc is not None and proc.poll() is not None:
            raise svc.fail(f"exited with code {proc.returncode} while starting; last lines:\n"
                           + _tail(svc.log_file, 15))
        try:
            svc.ready_probe()
            return True
        except Exception as exc:  # noqa: BLE001 - not ready yet, for any reason
            if time.monotonic() - since > svc.start_timeout_s:
                raise svc.fail(f"not ready after {svc.start_timeout_s:.0f}s ({exc}); last lines:\n"
                               + _tail(svc.log_file, 15)) from exc
            return False

    # --- down ----------------------------------------------------------------------------

    def down(self, names: list[str] | None = None, on_event: Callable[[str], None] | None = None,
             timeout_s: float = 30.0) -> None:
        """Stop the recorded processes (reverse start order): SIGTERM, then SIGKILL."""
        say = on_event or (lambda msg: log.info(msg))
        with self._locked():
            state = self._load_state()
            if not names or "ray" in names:
                for node in self._stop_nodes(state, list(self._nodes(state))):
                    say(f"{node}: stopped")
            for name in reversed(list(self.services)):
                if names and name not in names:
                    continue
                svc = self.services[name]
                pid = self._stop(svc, state, timeout_s)
                if pid is not None:
                    say(f"{name}: stopped (pid {pid})")
            self._save_state(state)

    def _stop(self, svc: Service, state: dict[str, dict], timeout_s: float = 30.0) -> int | None:
        """Stop ``svc`` if it runs (under the lock); its pid, or None if it was not running."""
        pid = self._pid_if_ours(svc, state.get(svc.name))
        state.pop(svc.name, None)
        if pid is None:
            return None
        _terminate(pid, min(timeout_s, svc.stop_timeout_s), svc.stop_signal)
        # A JVM killed at the deadline can hold its ports a moment longer; an `up`
        # right after (the readiness tests do that) must not find them taken.
        _wait_ports_closed(_ports(svc), 15.0)
        return pid

    # --- Ray worker nodes ----------------------------------------------------------------

    def _nodes(self, state: dict[str, dict]) -> dict[str, dict]:
        """The recorded worker nodes: name → {pgid, raylet, agent_port, started_at}."""
        return state.setdefault("ray-nodes", {})

    def _node(self, name: str, entry: dict) -> RayNode:
        return RayNode(name, self.ray_head, int(entry["agent_port"]))

    def _raylet_if_ours(self, name: str, entry: dict | None) -> int | None:
        """The node's raylet pid, if that process is alive and still this node's."""
        if not entry:
            return None
        pid = int(entry["raylet"])
        return pid if _alive(pid) and self._node(name, entry).cmd_marker() in _cmdline(pid) else None

    def _scale_nodes(self, state: dict[str, dict], count: int, say: Callable[[str], None]) -> None:
        """Make ``count`` worker nodes run (under the lock, the head answering): the recorded
        ones still alive are kept, dead ones forgotten, missing ones started, extra ones stopped."""
        nodes = self._nodes(state)
        for name in [n for n, e in nodes.items() if self._raylet_if_ours(n, e) is None]:
            nodes.pop(name)
        names = sorted(nodes, key=lambda n: int(n.rsplit("-", 1)[1]))
        for name in names[count:]:
            self._stop_nodes(state, [name])
            say(f"{name}: stopped")
        for name in names[:count]:
            say(f"{name}: already running (raylet pid {nodes[name]['raylet']})")
        while len(nodes) < count:
            self._start_node(state, say)
        self._save_state(state)

    def _start_node(self, state: dict[str, dict], say: Callable[[str], None]) -> str:
        """Start the next worker node and wait until the head lists it as alive. A ``ray start``
        that fails is tried once more: on a loaded machine (a head just restarted, both cores
        busy) a raylet has been seen to miss Ray's fixed 30 s to register with the GCS
        ("The current node timed out during startup"). The second failure is raised, with the
        last lines of both the node's log and its raylet's."""
        nodes = self._nodes(state)
        name = next(f"ray-node-{i}" for i in range(1, 1000) if f"ray-node-{i}" not in nodes)
        node = RayNode(name, self.ray_head, _free_port())
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.log_file.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        for attempt in range(1, NODE_START_ATTEMPTS + 1):
            try:
                proc, raylet = self._launch_node(node)
                break
            except StackError as exc:
                if attempt == NODE_START_ATTEMPTS:
                    raise
                first_line = exc.cause.split("; last lines", 1)[0].splitlines()[0]
                log.warning("ray node did not start; starting it again", node=name, cause=first_line)
                say(f"{name}: {first_line}; starting it again")
        nodes[name] = {"pgid": proc.pid, "raylet": raylet, "agent_port": node.agent_port, "started_at": time.time()}
        self._save_state(state)
        deadline = time.monotonic() + 60
        while name not in self._alive_node_ids():
            if time.monotonic() > deadline:
                raise node.fail("the head does not list the node as alive after 60 s; last lines:\n"
                                + _tail(node.log_file, 15))
            time.sleep(0.5)
        say(f"{name}: joined the head (raylet pid {raylet}, {time.monotonic() - t0:.1f}s)")
        return name

    def _launch_node(self, node: RayNode) -> tuple[subprocess.Popen, int]:
        """One ``ray start`` of ``node``: its process and its raylet's pid, or a StackError
        (whatever it started is killed)."""
        with open(node.log_file, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {node.name}\n".encode())
            out.flush()
            try:  # C2PG_FAULTS: this start fails before anything runs, as one whose raylet never registered
                faults.hit("stack.ray_node_start", name=node.name)
            except RuntimeError as exc:
                raise node.fail(f"`ray start` exited with code 1 ({exc}); last lines:\n(none: injected)") from exc
            try:
                # A new session: the node's processes (raylet, agents) keep this group after
                # `ray start` exits, and the launcher stops or kills them by it.
                proc = subprocess.Popen(node.command(), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, cwd=node.data_dir,
                                        env={**os.environ, "HOME": str(node.data_dir), **self.ray_head.env})
            except OSError as exc:
                raise node.fail(f"could not start: {exc}") from exc
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            _terminate(proc.pid, 5, signal.SIGKILL)
            raise node.fail("`ray start` did not return within 120 s; last lines:\n" + _tail(node.log_file, 15)) \
                from None
        raylet = next((pid for pid in _group_pids(proc.pid) if _argv0(pid).endswith("/raylet")), None)
        if code != 0 or raylet is None:
            _kill_pids(_group_pids(proc.pid))
            raylet_log = node.temp_dir / "session_latest" / "logs" / "raylet.out"
            raise node.fail(f"`ray start` exited with code {code}" + ("; no raylet running" if raylet is None else "")
                            + "; last lines:\n" + _tail(node.log_file, 15)
                            + f"\nlast lines of {raylet_log}:\n" + _tail(raylet_log, 15))
        return proc, raylet

    def _stop_nodes(self, state: dict[str, dict], names: list[str], sig: int = signal.SIGTERM) -> list[str]:
        """Stop (``sig``; SIGKILL after 10 s) the named nodes' process groups and the Ray
        workers their raylets forked; forget them. Returns the names of those that were running."""
        nodes = self._nodes(state)
        stopped = []
        for name in names:
            entry = nodes.pop(name, None)
            if entry is None:
                continue
            pids = _node_pids(int(entry["pgid"]), self._node(name, entry).cmd_marker())
            if pids:
                stopped.append(name)
                _kill_pids(pids, sig)
        return stopped

    def add_ray_node(self, on_event: Callable[[str], None] | None = None) -> str:
        """Start one more worker node beside the running head; its name (``ray-node-N``)."""
        say = on_event or (lambda msg: log.info(msg))
        with self._locked():
            state = self._load_state()
            if self._pid_if_ours(self.ray_head, state.get("ray")) is None:
                raise StackError("ray", "the Ray head is not running (c2pg stack up ray)")
            return self._start_node(state, say)

    def kill_ray(self, name: str) -> None:
        """SIGKILL a Ray node's processes, as if its machine were lost: ``ray`` (the head's
        process group) or a worker node (its group and the workers its raylet forked, which
        ``ray start`` put in no group of ours). A killed node is forgotten; a killed head is
        started again by the next :meth:`up`, which kills the nodes it leaves orphaned."""
        with self._locked():
            state = self._load_state()
            if name == "ray":
                pid = self._pid_if_ours(self.ray_head, state.get("ray"))
                if pid is not None:
                    _kill_pids(_node_pids(os.getpgid(pid), str(self.ray_head.temp_dir)), signal.SIGKILL)
                return
            if name not in self._nodes(state):
                raise StackError(name, f"no such Ray node; running: {', '.join(self._nodes(state)) or 'none'}")
            self._stop_nodes(state, [name], signal.SIGKILL)
            self._save_state(state)

    def ray_node_names(self) -> list[str]:
        """The worker nodes this stack recorded (``ray-node-N``), whether alive or not."""
        return sorted(self._nodes(self._load_state()))

    def ray_node_ids(self) -> dict[str, str]:
        """Each running node's Ray node id, by name (``ray`` for the head), as its GCS lists them."""
        return self._alive_node_ids()

    def _alive_node_ids(self) -> dict[str, str]:
        try:
            # Ray's state API can take seconds on a loaded machine; no answer means none known.
            alive = self.ray_head.alive_nodes(timeout_s=15)
        except Exception:  # noqa: BLE001 - the head not answering: no node is known alive
            return {}
        return {("ray" if n.get("is_head_node") else (n.get("labels") or {}).get(NODE_LABEL, n["node_id"])):
                n["node_id"] for n in alive}

    def _node_rows(self, state: dict[str, dict]) -> list[ServiceStatus]:
        """A ``stack status`` row per recorded worker node: healthy when its raylet runs and
        the head lists it alive."""
        nodes = self._nodes(state)
        if not nodes:
            return []
        alive = self._alive_node_ids()
        rows = []
        for name, entry in sorted(nodes.items()):
            pid = self._raylet_if_ours(name, entry)
            node_id = alive.get(name)
            if pid is None:
                detail = "raylet not running"
            elif node_id is None:
                detail = "raylet running, but the head does not list the node as alive"
            else:
                detail = f"Ray node {node_id[:8]} on {v.HOST}, joined to the head"
            rows.append(ServiceStatus(name, int(entry["agent_port"]), pid, pid is not None,
                                      pid is not None and node_id is not None, detail, _rss_mb(pid) if pid else None))
        return rows

    # --- status / logs -------------------------------------------------------------------

    def status(self, names: list[str] | None = None) -> list[ServiceStatus]:
        """Every service with its port, pid, and a real health check."""
        state = self._load_state()
        selected = [self.services[n] for n in (names or list(self.services))]
        checks = {s.name: s.probe for s in selected}
        results = {h.name: h for h in health.run_checks(checks, timeout_s=8)}
        rows = []
        for svc in selected:
            pid = self._pid_if_ours(svc, state.get(svc.name))
            h = results[svc.name]
            rows.append(ServiceStatus(svc.name, svc.port, pid, pid is not None, h.ok,
                                      (h.detail or "") if h.ok else (h.error or ""),
                                      _rss_mb(pid) if pid else None))
        if names is None or "ray" in names:
            rows += self._node_rows(state)
        return rows

    def log_path(self, name: str) -> Path:
        if name.startswith("ray-node-"):
            return self.paths.log(name)
        if name not in self.services:
            raise StackError(name, f"unknown service; known: {', '.join(self.services)}")
        return self.services[name].log_file


@contextlib.contextmanager
def _driver_logs_silenced() -> Iterator[None]:
    """While servers start, refused connections are expected: keep the driver quiet."""
    driver = logging.getLogger("cassandra")
    before = driver.level
    driver.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        driver.setLevel(before)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((v.HOST, port)) == 0


def _ports(svc: Service) -> list[int]:
    return [svc.port, *[v.PORTS[p] for p in EXTRA_PORTS.get(svc.name, [])]]


def _wait_ports_closed(ports: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_port_open(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.2)


def _terminate(pid: int, timeout_s: float, sig: int = signal.SIGTERM) -> None:
    """Signal the process group the launcher created (``sig``: the server's orderly stop);
    SIGKILL what is left at the deadline. Returns when no process of the group is left: a
    server's child (the postmaster under ``runuser``) that outlived the recorded pid would
    make the next start find its lock file and refuse."""
    try:
        pgid = os.getpgid(pid)
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid) and not _group_alive(pgid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0  # SIGKILL is not instant: wait for the exit
    while (_alive(pid) or _group_alive(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((v.HOST, 0))
        return int(s.getsockname()[1])


def _procs() -> Iterator[tuple[int, int, int]]:
    """(pid, ppid, pgid) of every live (not zombie) process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(stat.parent.name), int(fields[1]), int(fields[2])


def _group_pids(pgid: int) -> set[int]:
    return {pid for pid, _, group in _procs() if group == pgid}


def _node_pids(pgid: int, marker: str) -> set[int]:
    """A Ray node's processes: its process group and what they forked (Ray workers), those
    whose command line names the node's temp dir ``marker`` (a reused pid is left alone)."""
    pids = _group_pids(pgid)
    for pid in list(pids):
        pids |= _descendants(pid)
    return {pid for pid in pids if marker in _cmdline(pid)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p, ppid, _ in _procs():
        children.setdefault(ppid, []).append(p)
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def _kill_pids(pids: set[int], sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> None:
    """Signal ``pids``; SIGKILL those left after ``timeout_s``; return when all are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    if sig != signal.SIGKILL:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our own child, if it is one
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _rss_mb(pid: int) -> float | None:
    """Resident memory of the process and its children (a JVM or postgres and its workers)."""
    total = 0
    try:
        out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)],
                             capture_output=True, text=True, check=False).stdout
        total = sum(int(x) for x in out.split())
    except (OSError, ValueError):
        return None
    return round(total / 1024, 1)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"
