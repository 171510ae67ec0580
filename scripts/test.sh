#!/usr/bin/env bash
# The README's test command: install what is missing, bring the local stack up (or reuse
# the running one), run every test. Extra arguments go to pytest, e.g. -m "not stack"
# for the fast unit tests alone. The stack is left running; `.venv/bin/c2pg stack down`
# stops it (.ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/c2pg stack up
exec .venv/bin/python -m pytest "$@"
