"""``c2pg stack up | down | status | logs``: the local stack's life cycle.

The launcher starts each server as its own process group, records ``pid`` and a marker of
its command line in ``<stack>/state.json``, and waits for a real answer from each (see
:mod:`engine.health`). ``up`` is idempotent: a recorded process that is alive and still
ours is reused. ``down`` stops only the processes recorded there, by pid, never by name.
A file lock keeps two launchers (a test session and a shell) from racing.

Failure means a :class:`~engine.errors.StackError` naming the service, the cause and the
log file; services already started stay up so their logs can be read (``down`` stops them).

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

from engine import health
from engine.errors import StackError
from engine.stack import versions as v
from engine.stack.root import default_root
from engine.stack.services import Service, StackPaths, all_services

log = structlog.get_logger("c2pg.stack")

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
    """The six servers under one directory. Cheap to construct; does nothing until called."""

    def __init__(self, root: Path | None = None):
        self.paths = StackPaths(root or default_root())
        self.services: dict[str, Service] = {s.name: s for s in all_services(self.paths, self.tls)}

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
           tls: bool | None = None) -> list[ServiceStatus]:
        """Install, start and wait for ``names`` (default: all) and their dependencies.

        ``tls``: enter (True) or leave (False) TLS mode, which stays for later calls; None
        keeps the current mode. A running server started in the other mode is restarted if
        it reads its TLS settings at start, reconfigured live otherwise.
        """
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
        return rows

    def log_path(self, name: str) -> Path:
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
