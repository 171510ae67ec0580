"""Fault injection for the crash and retry tests: off unless ``C2PG_FAULTS`` is set.

The tests must prove that a read task killed mid-run, a Cassandra timeout in the middle of
a split, or a split that fails for good end in a correct table (after Ray's retry, the
reader's own retry, or ``--resume``). Killing a Ray worker from outside at the right moment
is racy, so the code under test calls :func:`hit` at a few named points, and a test turns
one on through the environment (inherited by Ray workers on the local cluster):

    C2PG_FAULTS="snapshot.read:split=1,after=500,action=crash,times=1"

``action`` is ``crash`` (``os._exit``: the worker dies), ``timeout`` (a Cassandra
``ReadTimeout``) or ``error`` (a ``RuntimeError``); ``times`` bounds how often it fires
across processes, counted with marker files in ``C2PG_FAULTS_DIR``. With ``C2PG_FAULTS``
unset, :func:`hit` is a dictionary lookup and returns.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def _parse(spec: str) -> dict[str, dict[str, str]]:
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(";"))):
        point, _, args = item.partition(":")
        out[point] = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)
    return out


def hit(point: str, **context: object) -> None:
    """Fire the fault configured for ``point`` if ``context`` matches its filters."""
    spec = os.environ.get("C2PG_FAULTS")
    if not spec:
        return
    fault = _parse(spec).get(point)
    if fault is None:
        return
    for key, want in fault.items():
        if key in ("action", "times", "after"):
            continue
        if str(context.get(key)) != want:
            return
    if "after" in fault and int(str(context.get("rows", 0))) < int(fault["after"]):
        return
    if not _take_one(point, int(fault.get("times", "1"))):
        return
    action = fault.get("action", "error")
    if action == "crash":
        os._exit(17)
    if action == "timeout":
        from cassandra import ReadTimeout

        raise ReadTimeout(f"injected fault at {point} {context}")
    raise RuntimeError(f"injected fault at {point} {context}")


def _take_one(point: str, times: int) -> bool:
    """Count firings across processes with marker files; False once ``times`` are used."""
    base = Path(os.environ.get("C2PG_FAULTS_DIR", "/tmp/c2pg-faults")) / point
    base.mkdir(parents=True, exist_ok=True)
    if times < 0:
        return True
    if len(list(base.iterdir())) >= times:
        return False
    (base / uuid.uuid4().hex).touch()
    return True
