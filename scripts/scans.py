"""The security scans CI runs (scripts/scan.sh): each fails on a finding nobody has looked at.

    .venv/bin/python scripts/scans.py bandit    # the code: bandit, against scripts/bandit-accepted.yaml
    .venv/bin/python scripts/scans.py secrets   # every tracked file: detect-secrets, against .secrets.baseline
    .venv/bin/python scripts/scans.py audit     # docker/requirements.txt: known vulnerabilities (pip-audit)

Exit status 1 names the new findings. What is accepted is written down with the reason:
- bandit: ``# nosec BXXX - why`` on the line (c2pg's deployment code does that), or, for code
  whose owners have not yet, a count per file and check with the reason in
  scripts/bandit-accepted.yaml. More findings of a check in a file than accepted fail, so a
  new one cannot hide behind an old one (bandit's own baseline ignores a second finding of the
  same kind in a file);
- detect-secrets: ``# pragma: allowlist secret`` on the line, a rule in the baseline's filters
  (a ``file:``/``vault:``/``env:`` reference is not a secret), or an entry of .secrets.baseline
  marked ``is_secret: false``. Line numbers may move; only a secret the baseline lacks fails;
- pip-audit: a vulnerability in a locked version fails. pip-audit asks PyPI for each pinned
  version (pypi.org/pypi/NAME/VERSION/json); where that is unreachable, a package whose locked
  version is PyPI's latest is checked against the vulnerabilities PyPI lists for its latest
  release (pypi.org/pypi/NAME/json, the same data); the rest are reported as NOT AUDITED,
  loudly, without failing — no network but PyPI, and never a green light that was not earned.
"""

from __future__ import annotations

import argparse
import json
import subprocess  # nosec B404 - runs bandit, pip-audit and git with fixed argv
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BANDIT_TARGETS = ("engine", "serve_app", "jobs", "kuberay", "docker", "scripts", "benchmarks")
BANDIT_ACCEPTED = ROOT / "scripts" / "bandit-accepted.yaml"
SECRETS_BASELINE = ROOT / ".secrets.baseline"
LOCK = ROOT / "docker" / "requirements.txt"
PYPI_JSON = "https://pypi.org/pypi"


# --- bandit --------------------------------------------------------------------------------------


def bandit_report(root: Path) -> dict[str, Any]:
    """bandit's JSON report of the targets present under root (config: pyproject.toml)."""
    targets = [t for t in BANDIT_TARGETS if (root / t).exists()]
    config = ["-c", str(root / "pyproject.toml")] if (root / "pyproject.toml").exists() else []
    proc = subprocess.run([sys.executable, "-m", "bandit", "-q", "-r", *config, "-f", "json", *targets],
                          cwd=root, capture_output=True, text=True)  # nosec B603 - fixed argv, our own interpreter
    if not proc.stdout.strip():
        raise SystemExit(f"bandit produced no report: {proc.stderr.strip()}")
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def bandit_new(report: dict[str, Any], accepted: dict[str, dict[str, Any]]) -> list[str]:
    """Findings beyond what scripts/bandit-accepted.yaml accepts, one line each."""
    counts = Counter((r["filename"].removeprefix("./"), r["test_id"]) for r in report["results"])
    over = {key for key, n in counts.items() if n > (accepted.get(key[0], {}).get(key[1], {}) or {}).get("count", 0)}
    return [f"{r['filename'].removeprefix('./')}:{r['line_number']}: {r['test_id']} {r['issue_text']}"
            for r in report["results"] if (r["filename"].removeprefix("./"), r["test_id"]) in over]


def bandit_main(root: Path, accepted_path: Path) -> int:
    accepted = yaml.safe_load(accepted_path.read_text()) if accepted_path.exists() else {}
    report = bandit_report(root)
    for error in report.get("errors", []):
        print(f"bandit: could not scan {error['filename']}: {error['reason']}")
    new = bandit_new(report, accepted or {})
    for line in new:
        print(f"bandit: NEW {line}")
    print(f"bandit: {len(report['results'])} findings, {len(new)} not accepted "
          f"(fix, or justify with # nosec BXXX - why)" if new else
          f"bandit: {len(report['results'])} findings, all accepted with a reason")
    return 1 if new or report.get("errors") else 0


# --- detect-secrets --------------------------------------------------------------------------------


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True,  # nosec B603 B607 - git from PATH
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def secrets_new(root: Path, baseline_path: Path) -> list[str]:
    """Potential secrets in tracked files that the baseline does not hold, with the baseline's
    plugins and filters (detect-secrets' own pre-commit logic, minus rewriting the baseline)."""
    import os

    from detect_secrets.core.secrets_collection import SecretsCollection
    from detect_secrets.core.usage import ParserBuilder

    cwd = os.getcwd()
    os.chdir(root)  # detect-secrets keys its results by relative file name
    try:
        # The baseline holds the hashes of what it accepts, themselves high-entropy strings.
        # .wip/ holds patches of unlanded work: their lines are scanned in their own files once applied.
        files = [f for f in tracked_files(root) if f != baseline_path.name and not f.startswith(".wip/")]
        args = ParserBuilder().add_pre_commit_arguments().parse_args(
            ["--baseline", str(baseline_path), *files])
        found = SecretsCollection()
        for name in files:
            found.scan_file(name)
        new = found - args.baseline
        return [f"{name}:{secret.line_number}: {secret.type}" for name, secret in new]
    finally:
        os.chdir(cwd)


def secrets_main(root: Path, baseline_path: Path) -> int:
    new = secrets_new(root, baseline_path)
    for line in new:
        print(f"detect-secrets: NEW {line}")
    print(f"detect-secrets: {len(new)} new potential secrets (remove it, or mark a false positive "
          "with # pragma: allowlist secret)" if new else "detect-secrets: no secret outside the baseline")
    return 1 if new else 0


# --- pip-audit ------------------------------------------------------------------------------------


def locked_versions(lock: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    text = lock.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.split()[0].partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def pip_audit_report(lock: Path) -> dict[str, Any]:
    """pip-audit's JSON report of the lock; when pip-audit itself fails (no network), every
    package counts as skipped, so the fallback below still gets its chance."""
    proc = subprocess.run([sys.executable, "-m", "pip_audit", "-r", str(lock), "--require-hashes", "--no-deps",
                           "--disable-pip", "--progress-spinner", "off", "-f", "json"],
                          capture_output=True, text=True)  # nosec B603 - fixed argv, our own interpreter
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        why = f"pip-audit failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}"
        return {"dependencies": [{"name": n, "version": v, "skip_reason": why}
                                 for n, v in locked_versions(lock).items()]}
    return report


def pypi_latest(name: str) -> dict[str, Any]:
    """PyPI's project JSON (latest release, and the vulnerabilities PyPI lists for it)."""
    with urllib.request.urlopen(f"{PYPI_JSON}/{name}/json", timeout=30) as response:  # nosec B310 - fixed https URL
        page: dict[str, Any] = json.load(response)
    return page


def audit_verdict(report: dict[str, Any], pins: dict[str, str],
                  latest: Callable[[str], dict[str, Any]] = pypi_latest) -> tuple[list[str], list[str], int]:
    """(vulnerabilities found, packages not audited with why, packages audited)."""
    from packaging.utils import canonicalize_name

    found: list[str] = []
    unaudited: list[str] = []
    audited = 0
    skipped = [canonicalize_name(d["name"]) for d in report["dependencies"] if "skip_reason" in d]
    with ThreadPoolExecutor(8) as pool:  # one request per package; PyPI answers in parallel
        pages = dict(zip(skipped, pool.map(lambda n: _fetch_or_error(latest, n), skipped)))
    for dep in report["dependencies"]:
        name = canonicalize_name(dep["name"])
        version = dep.get("version") or pins.get(name, "?")
        if "skip_reason" not in dep:
            audited += 1
            found += [f"{name}=={version}: {v['id']} (fixed in {', '.join(v.get('fix_versions') or []) or '-'})"
                      for v in dep.get("vulns", [])]
            continue
        page = pages[name]
        if isinstance(page, Exception):
            unaudited.append(f"{name}=={version}: {dep['skip_reason']}; PyPI's project page: {page}")
            continue
        if page["info"]["version"] != version:
            unaudited.append(f"{name}=={version}: pip-audit could not ask PyPI about this version, and it is "
                             f"not the latest ({page['info']['version']}), whose vulnerabilities PyPI lists")
            continue
        audited += 1
        found += [f"{name}=={version}: {v['id']} (fixed in {', '.join(v.get('fixed_in') or []) or 'no release'})"
                  for v in page.get("vulnerabilities") or [] if not v.get("withdrawn")]
    return found, unaudited, audited


def _fetch_or_error(latest: Callable[[str], dict[str, Any]], name: str) -> dict[str, Any] | Exception:
    try:
        return latest(name)
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:  # unreachable, or not JSON
        return exc


def audit_main(lock: Path) -> int:
    found, unaudited, audited = audit_verdict(pip_audit_report(lock), locked_versions(lock))
    for line in found:
        print(f"pip-audit: VULNERABLE {line}")
    for line in unaudited:
        print(f"pip-audit: NOT AUDITED {line}")
    print(f"pip-audit: {audited} locked packages audited, {len(found)} vulnerabilities, "
          f"{len(unaudited)} NOT AUDITED")
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("scan", choices=["bandit", "secrets", "audit"])
    p.add_argument("--root", type=Path, default=ROOT, help="the repository to scan (default: this one)")
    args = p.parse_args(argv)
    root = args.root.resolve()
    if args.scan == "bandit":
        return bandit_main(root, root / BANDIT_ACCEPTED.relative_to(ROOT))
    if args.scan == "secrets":
        return secrets_main(root, root / SECRETS_BASELINE.relative_to(ROOT))
    return audit_main(root / LOCK.relative_to(ROOT))


if __name__ == "__main__":
    sys.exit(main())
