"""Lint is part of CI: pinned tools, configured in pyproject.toml, run by .ci/run, failing it.

Running ruff and mypy themselves is scripts/lint.sh's job (CI runs it); these checks keep the
wiring from silently coming apart.
"""

from __future__ import annotations

import re
import subprocess
import tomllib

from tests.unit.deploy_validation import ROOT


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_ruff_and_mypy_are_pinned_in_the_test_extra():
    test_extra = _pyproject()["project"]["optional-dependencies"]["test"]
    for tool in ("ruff", "mypy"):
        assert any(re.fullmatch(rf"{tool}==[\d.]+", d) for d in test_extra), tool


def test_mypy_checks_engine_without_blanket_ignores():
    mypy = _pyproject()["tool"]["mypy"]
    assert mypy["files"] == ["engine"]
    assert not mypy.get("ignore_errors") and not mypy.get("ignore_missing_imports")
    for override in mypy.get("overrides", []):
        assert not override.get("ignore_errors"), override
        assert not any(m.startswith("engine") for m in override["module"]), override


def test_ci_runs_lint_and_fails_when_it_fails():
    script = (ROOT / "scripts" / "lint.sh").read_text()
    assert ".venv/bin/ruff check ." in script and ".venv/bin/mypy engine/" in script
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "lint.sh")]).returncode == 0
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("bash scripts/lint.sh") < ci.index("./scripts/test.sh")
    assert "lint_rc=$?" in ci and 'rc=$lint_rc' in ci
    # The README's first command (the demo) runs in CI too, and its failure fails CI.
    assert "demo_rc=$?" in ci and 'rc=$demo_rc' in ci
