"""Fault injection for the crash and retry tests: off unless ``C2PG_FAULTS`` is set.

The tests must prove that a read task killed mid-run, a Cassandra timeout in the middle of
a split, or a split that fails for good end in a correct table (after Ray's retry, the
reader's own retry, or ``--resume``). Killing a Ray worker from outside at the right moment
is racy, so the code under test calls :func:`hit` at a few named points, and a test turns
one on through the environment (inherited by Ray workers on the local cluster):

    C2PG_FAULTS="snapshot.read:split=1,after=500,action=crash,times=1"

Besides the point's own context (``split``, ``table``, ...), a fault may filter on ``node``,
the Ray node id of the process (``sync.commit:node=<id>,action=hold``: only a worker on that
node holds). ``action`` is ``crash`` (``os._exit``: the worker dies), ``timeout`` (a Cassandra
``ReadTimeout``), ``error`` (a ``RuntimeError``) or ``hold``; ``times`` bounds how often it
fires across processes, counted with marker files in ``C2PG_FAULTS_DIR``. With
``C2PG_FAULTS`` unset, :func:`hit` is a dictionary lookup and returns.

``hold`` is for faults that come from outside the process (``ray.kill``, a PostgreSQL
restart) and must land while work is provably in flight: the process that reaches the point
announces it (:func:`wait_held` returns its context, pid included) and blocks until the
test calls :func:`release` (or ``seconds``, default 120, pass), then goes on as if nothing
happened. The sync writer's ``sync.commit`` point sits inside the batch's transaction, after
the merge and the offsets and before the commit, so a test can kill a worker, or stop
PostgreSQL, with a batch half done::

    C2PG_FAULTS="sync.commit:after=1,action=hold,times=1"

Ray workers do not see a variable the driver sets after they started: callers that start
tasks or actors pass :func:`runtime_env` so the settings travel with them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

_SETTINGS = ("C2PG_FAULTS", "C2PG_FAULTS_DIR")


def _parse(spec: str) -> dict[str, dict[str, str]]:
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(";"))):
        point, _, args = item.partition(":")
        out[point] = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)
    return out


def enabled() -> bool:
    """Whether any fault is configured: a hot loop calls :func:`hit` per row only then."""
    return bool(os.environ.get("C2PG_FAULTS"))


def hit(point: str, **context: object) -> None:
    """Fire the fault configured for ``point`` if ``context`` matches its filters."""
    spec = os.environ.get("C2PG_FAULTS")
    if not spec:
        return
    fault = _parse(spec).get(point)
    if fault is None:
        return
    if "node" in fault and "node" not in context:
        context["node"] = _ray_node_id()
    for key, want in fault.items():
        if key in ("action", "times", "after", "seconds"):
            continue
        if str(context.get(key)) != want:
            return
    if "after" in fault and int(str(context.get("rows", 0))) < int(fault["after"]):
        return
    if not _take_one(point, int(fault.get("times", "1"))):
        return
    action = fault.get("action", "error")
    if action == "hold":
        _hold(point, context, float(fault.get("seconds", "120")))
        return
    if action == "crash":
        os._exit(17)
    if action == "timeout":
        from cassandra import ReadTimeout

        raise ReadTimeout(f"injected fault at {point} {context}")
    raise RuntimeError(f"injected fault at {point} {context}")


def _ray_node_id() -> str | None:
    """The Ray node this process runs on (the ``node`` filter: a fault that fires only on one
    node, e.g. to kill that node with a batch provably in flight there); None outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def runtime_env() -> dict:
    """Ray ``.options(**runtime_env())`` handing this process's fault settings to the tasks
    or actors it starts ({} when none are set, so production starts are unchanged)."""
    env = {k: os.environ[k] for k in _SETTINGS if k in os.environ}
    return {"runtime_env": {"env_vars": env}} if env else {}


def wait_held(point: str, timeout_s: float = 120.0, directory: str | Path | None = None) -> dict:
    """Block until a process holds at ``point``; return the context it announced (with its
    ``pid``). Raises ``TimeoutError`` naming the point if none does within ``timeout_s``."""
    marker = _dir(directory) / f"{point}.held"
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no process reached fault point {point!r} within {timeout_s:.0f}s "
                               f"(C2PG_FAULTS={os.environ.get('C2PG_FAULTS')!r})")
        time.sleep(0.02)
    for _ in range(100):  # written by another process: wait for the whole text
        try:
            return json.loads(marker.read_text())
        except ValueError:
            time.sleep(0.01)
    return json.loads(marker.read_text())


def release(point: str, directory: str | Path | None = None) -> None:
    """Let the process holding at ``point`` go on (a no-op if it has died meanwhile)."""
    (_dir(directory) / f"{point}.release").touch()


def _hold(point: str, context: dict, seconds: float) -> None:
    base = _dir()
    release_file = base / f"{point}.release"
    tmp = base / f".{point}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), **{k: str(v) for k, v in context.items()}}))
    tmp.rename(base / f"{point}.held")
    deadline = time.monotonic() + seconds
    while not release_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _dir(directory: str | Path | None = None) -> Path:
    base = Path(directory or os.environ.get("C2PG_FAULTS_DIR", "/tmp/c2pg-faults"))
    base.mkdir(parents=True, exist_ok=True)
    return base


def _take_one(point: str, times: int) -> bool:
    """Count firings across processes with marker files; False once ``times`` are used."""
    base = _dir() / point
    base.mkdir(parents=True, exist_ok=True)
    if times < 0:
        return True
    if len(list(base.iterdir())) >= times:
        return False
    (base / uuid.uuid4().hex).touch()
    return True
