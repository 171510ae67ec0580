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


class Turns:
    """Shared and exclusive turns between the processes of a ``pytest -n`` run (the
    ``exclusive`` marker of ``tests/conftest.py``): a readers-writer lock of two ``flock``
    files (the turnstile, then the room), released by the kernel if a process dies."""

    def __init__(self):
        self.turnstile = open(run_lock_path("turnstile"), "a")  # noqa: SIM115 - held for the session
        self.room = open(run_lock_path("room"), "a")  # noqa: SIM115
        self.held: str | None = None

    def take(self, exclusive: bool) -> None:
        want = "exclusive" if exclusive else "shared"
        if self.held == want:
            return
        self.give_back()
        fcntl.flock(self.turnstile, fcntl.LOCK_EX)
        fcntl.flock(self.room, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(self.turnstile, fcntl.LOCK_UN)  # an exclusive turn keeps it: nobody new enters
        self.held = want

    def give_back(self) -> None:
        if self.held is not None:
            fcntl.flock(self.room, fcntl.LOCK_UN)
            if self.held == "exclusive":
                fcntl.flock(self.turnstile, fcntl.LOCK_UN)
            self.held = None
