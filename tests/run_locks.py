"""Locks shared by the processes of one ``pytest -n`` run (pytest-xdist), for set-up that
must happen once per run and for the turns of ``tests/conftest.py``. Run alone, no-ops."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path


def run_lock_path(what: str) -> Path | None:
    """A lock file shared by the processes of one ``pytest -n`` run (None when run alone)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return Path(tempfile.gettempdir()) / f"c2pg-pytest-{run}.{what}" if run else None


@contextlib.contextmanager
def once_per_run(what: str):
    """Yields True to the first process of the run to get here (it does the work, the others
    wait until it is done) and False to the rest; alone, always True. For session set-up
    that must happen once for the whole run, e.g. dropping keyspaces other processes use."""
    path = run_lock_path(what)
    if path is None:
        yield True
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            first = f.read() == ""
            yield first
            if first:
                f.write("done\n")
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
