"""The control plane's result cache: fresh on first use and after clear(), stale-while-refresh
otherwise, so a probe under load never waits for the component checks."""

from __future__ import annotations

import threading
import time

import pytest

from serve_app.control import Cached


class _Slow:
    def __init__(self, seconds: float = 0.2):
        self.calls = 0
        self.seconds = seconds
        self.fail = False

    def __call__(self) -> int:
        self.calls += 1
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("peer down")
        return self.calls


def test_first_get_computes_and_concurrent_callers_share_it():
    slow = _Slow()
    cache = Cached(10, slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1] * 8 and slow.calls == 1


def test_a_stale_value_is_returned_at_once_and_refreshed_behind():
    slow = _Slow()
    cache = Cached(0.1, slow)
    assert cache.get() == 1
    time.sleep(0.15)
    t0 = time.monotonic()
    assert cache.get() == 1  # stale, but immediate
    assert time.monotonic() - t0 < 0.05
    assert cache.get() == 1 and slow.calls == 2  # one refresh at a time
    time.sleep(0.3)
    assert cache.get() == 2


def test_clear_forces_a_fresh_value_and_drops_an_older_refresh():
    slow = _Slow()
    cache = Cached(0.1, slow)
    cache.get()
    time.sleep(0.15)
    cache.get()            # starts a background refresh (computes 2)
    cache.clear()
    assert cache.get() == 3  # computed now, after the clear
    time.sleep(0.3)
    assert cache.get() == 3  # the refresh started before clear() did not overwrite it


def test_ttl_zero_always_computes_and_a_failed_refresh_keeps_the_last_value():
    slow = _Slow(0.0)
    assert [Cached(0, slow).get() for _ in range(2)] == [1, 2]
    flaky = _Slow(0.0)
    cache = Cached(0.05, flaky)
    assert cache.get() == 1
    flaky.fail = True
    time.sleep(0.06)
    assert cache.get() == 1
    time.sleep(0.05)
    assert cache.get() == 1  # the refresh failed: the last value stays
    with pytest.raises(RuntimeError):
        Cached(0.05, flaky).get()  # nothing to fall back on: the caller sees the failure
