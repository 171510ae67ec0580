#!/usr/bin/env bash
# Security scans (scripts/scans.py says what each accepts and why): bandit on the code,
# detect-secrets on every tracked file, pip-audit on the image's locked dependencies.
#   bash scripts/scan.sh                   # all three
#   bash scripts/scan.sh bandit secrets    # some
# Exits non-zero if any finds something new; .ci/run runs it after lint. Network: PyPI only
# (the audit). Installs what is missing first (scripts/bootstrap.sh), like scripts/lint.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=${C2PG_VENV:-.venv}  # another environment with the tools (tests/unit/test_scans.py)
if [ ! -x "$venv/bin/bandit" ] || [ ! -x "$venv/bin/pip-audit" ] || [ ! -x "$venv/bin/detect-secrets" ]; then
  bash scripts/bootstrap.sh || exit 1
fi
scans=("$@")
[ ${#scans[@]} -gt 0 ] || scans=(bandit secrets audit)
rc=0
for scan in "${scans[@]}"; do
  echo "scan: $scan"
  "$venv/bin/python" scripts/scans.py "$scan" || rc=1
done
if [ "$rc" -eq 0 ]; then echo "scan: clean"; else echo "scan: FAILED"; fi
exit "$rc"
