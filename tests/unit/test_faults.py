"""The fault hooks the crash tests aim with (engine/faults.py), across real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine import faults

HIT = ("from engine import faults; import os\n"
       "faults.hit('demo.point', table='t1', rows=int(os.environ.get('ROWS', '5')))\n"
       "print('went on')\n")


def _spawn(tmp_path, spec: str, **env: str) -> subprocess.Popen:
    full = {**os.environ, "C2PG_FAULTS": spec, "C2PG_FAULTS_DIR": str(tmp_path), **env}
    return subprocess.Popen([sys.executable, "-c", HIT], env=full, stdout=subprocess.PIPE, text=True)


def test_hold_announces_the_holder_and_waits_for_release(tmp_path):
    proc = _spawn(tmp_path, "demo.point:action=hold,times=1")
    held = faults.wait_held("demo.point", timeout_s=30, directory=tmp_path)
    assert held["pid"] == proc.pid and held["table"] == "t1" and held["rows"] == "5"
    time.sleep(0.3)
    assert proc.poll() is None, "the holder must block until released"
    faults.release("demo.point", directory=tmp_path)
    assert proc.communicate(timeout=30)[0].strip() == "went on"


def test_times_bounds_firings_across_processes(tmp_path):
    first = _spawn(tmp_path, "demo.point:action=crash,times=1")
    assert first.wait(timeout=30) == 17
    second = _spawn(tmp_path, "demo.point:action=crash,times=1")
    assert second.communicate(timeout=30)[0].strip() == "went on" and second.returncode == 0


@pytest.mark.parametrize(("spec", "rows"), [("demo.point:table=other,action=crash", "5"),
                                            ("demo.point:after=10,action=crash", "9")])
def test_a_filter_that_does_not_match_lets_the_process_go_on(tmp_path, spec, rows):
    proc = _spawn(tmp_path, spec, ROWS=rows)
    assert proc.communicate(timeout=30)[0].strip() == "went on" and proc.returncode == 0


def test_waiting_for_a_point_nobody_reaches_names_it(tmp_path):
    with pytest.raises(TimeoutError, match="sync.commit"):
        faults.wait_held("sync.commit", timeout_s=0.2, directory=tmp_path)


def test_runtime_env_carries_the_settings_only_when_set(monkeypatch):
    monkeypatch.delenv("C2PG_FAULTS", raising=False)
    monkeypatch.delenv("C2PG_FAULTS_DIR", raising=False)
    assert faults.runtime_env() == {}
    monkeypatch.setenv("C2PG_FAULTS", "x:action=error")
    assert faults.runtime_env() == {"runtime_env": {"env_vars": {"C2PG_FAULTS": "x:action=error"}}}
