"""The figures of sync status that need a rule: events/s over a recent window, and write
times that lie in the future.

Pure: every function takes the clock as an argument, so the tests drive it. Used by
:mod:`engine.sync.worker` (``PartitionState`` and ``PartitionWorker.status``), by
``c2pg sync status`` (:mod:`engine.cli`) and by the control plane's status
(``serve_app/control.py``). The rules are stated in docs/sync.md, "Status, metrics, progress".
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime

RATE_WINDOW_S = 10.0
"""events/s is the number of events applied in the last ``RATE_WINDOW_S`` seconds divided
by that window: it falls to 0 at most this long after the last batch."""

RATE_RESOLUTION_S = 0.1
"""Batches committed closer together than this share one sample, which bounds the ring to
``RATE_WINDOW_S / RATE_RESOLUTION_S + 1`` samples whatever the batch rate; a sample is
counted until its *first* batch leaves the window, so the figure is off by at most 1 %."""

RATE_MIN_SPAN_S = 1.0
"""A meter younger than the window divides by its age instead, but never by less than this:
the first batch of a worker that started 50 ms ago is not 100,000 events/s."""

FUTURE_TOLERANCE_S = 60.0
"""A write time more than this far after the reporting process's clock is flagged as in the
future; less is taken for clock skew between the Cassandra clients and this machine."""


class WindowRate:
    """Events per second over the last ``window_s`` seconds, from a ring of
    ``(monotonic time, events)`` samples.

    The worker calls :meth:`add` once per partition per committed batch (under its lock),
    and :meth:`per_second` when asked for its status. Times are ``time.monotonic()``
    seconds; ``started_at`` is when the meter began counting (the worker's start), so a
    worker younger than the window reports its mean since it started, not a fraction of it.
    """

    __slots__ = ("started_at", "window_s", "resolution_s", "_samples")

    def __init__(self, started_at: float, window_s: float = RATE_WINDOW_S,
                 resolution_s: float = RATE_RESOLUTION_S) -> None:
        if window_s <= 0 or not 0 < resolution_s <= window_s:
            raise ValueError(f"window {window_s}s and resolution {resolution_s}s: need 0 < resolution <= window")
        self.started_at = started_at
        self.window_s = window_s
        self.resolution_s = resolution_s
        # Samples are at least resolution_s apart, so the window never holds more than this:
        # the deque drops only samples that have left the window already.
        self._samples: deque[list[float]] = deque(maxlen=int(window_s / resolution_s) + 2)

    def add(self, events: int, now: float) -> None:
        """Count ``events`` applied at ``now``."""
        if events <= 0:
            return
        if self._samples and now - self._samples[-1][0] < self.resolution_s:
            self._samples[-1][1] += events
        else:
            self._samples.append([now, float(events)])

    def events_in_window(self, now: float) -> int:
        """Events applied in ``(now - window_s, now]``."""
        self._expire(now)
        return int(sum(n for _, n in self._samples))

    def per_second(self, now: float) -> float:
        """Events/s over the window; 0.0 when nothing was applied in it."""
        events = self.events_in_window(now)
        if not events:
            return 0.0
        span = min(self.window_s, max(RATE_MIN_SPAN_S, now - self.started_at))
        return events / span

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0][0] <= now - self.window_s:
            self._samples.popleft()


def seconds_ahead(ts_us: int | None, now_s: float) -> float:
    """How many seconds the write time ``ts_us`` (Cassandra microseconds) lies after the wall
    clock ``now_s`` (``time.time()``); 0.0 for none, or one not in the future."""
    if not ts_us:
        return 0.0
    return max(0.0, ts_us / 1e6 - now_s)


def in_future(ts_us: int | None, now_s: float, tolerance_s: float = FUTURE_TOLERANCE_S) -> bool:
    """Whether ``ts_us`` lies more than ``tolerance_s`` after ``now_s``: a write stamped
    by a client whose clock (or unit: ms, ns) is wrong, not progress of the sync."""
    return seconds_ahead(ts_us, now_s) > tolerance_s


def describe_duration(seconds: float) -> str:
    """A short human figure for a duration: ``"100 y"``, ``"3.5 d"``, ``"1.5 min"``, ``"45 s"``."""
    for unit, size in (("y", 365.25 * 86400), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            v = seconds / size
            return f"{v:.0f} {unit}" if v >= 10 else f"{v:.1f} {unit}"
    return f"{seconds:.0f} s"


def format_write_time(ts_us: int | None) -> str:
    """A write time for a table cell, UTC (``YYYY-MM-DD HH:MM:SS``), ``-`` for none. Cassandra
    accepts any 64-bit microsecond value (``USING TIMESTAMP``); one the platform cannot show
    as a date is printed as its raw microseconds rather than failing the whole listing."""
    if not ts_us:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts_us / 1e6))
    except (OverflowError, ValueError, OSError):
        return f"{ts_us} us"


def iso_write_time(ts_us: int | None) -> str | None:
    """A write time as ISO 8601 in UTC (``2026-12-03T07:02:48.123456+00:00``), None for none.
    Past year 9999, where :mod:`datetime` stops, it is written with ISO 8601's expanded year
    (``+058375-03-01T12:00:00+00:00``, which JavaScript's ``Date`` reads) instead of failing
    the whole status answer."""
    if not ts_us:
        return None
    try:
        return datetime.fromtimestamp(ts_us / 1e6, tz=UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        pass
    t = time.gmtime(ts_us / 1e6)  # Linux's gmtime covers every 64-bit microsecond value
    return (f"{t.tm_year:+07d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}+00:00")


def node_label(node_id: str | None, node_ip: str | None = None) -> str:
    """A Ray node as ``c2pg sync status`` and the status page show it: the first 8 hex digits
    of its id (as ``ray list nodes`` and the dashboard abbreviate it) and its address;
    ``-`` when not known yet (a worker that has not answered)."""
    if not node_id:
        return "-"
    return f"{node_id[:8]}@{node_ip}" if node_ip else node_id[:8]
