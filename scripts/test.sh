#!/usr/bin/env bash
# The README's test command: install what is missing, bring the local stack up in TLS mode
# (or reuse the running one; docs/local-stack.md), run every test, the TLS ones included.
# Extra arguments go to pytest, e.g. -m "not stack" for the fast unit tests alone.
# Two test processes share the stack (pytest-xdist; tests/conftest.py says which tests must
# run alone); C2PG_TEST_PROCESSES=1 runs one. The stack is left running;
# `.venv/bin/c2pg stack down` stops it (.ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/c2pg stack up --tls
processes=${C2PG_TEST_PROCESSES:-2}
if [ "$processes" -gt 1 ]; then
  exec .venv/bin/python -m pytest -n "$processes" "$@"
fi
exec .venv/bin/python -m pytest "$@"
