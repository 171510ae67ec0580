#!/usr/bin/env bash
# Lint: ruff on the whole repository, mypy on engine/ (settings in pyproject.toml's
# [tool.ruff] and [tool.mypy]). Exits non-zero if either finds anything; .ci/run runs it.
# Installs what is missing first (scripts/bootstrap.sh), like scripts/test.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ]; then
  bash scripts/bootstrap.sh || exit 1
fi
rc=0
echo "lint: ruff check ."
.venv/bin/ruff check . || rc=1
echo "lint: mypy engine/"
.venv/bin/mypy engine/ || rc=1
if [ "$rc" -eq 0 ]; then echo "lint: clean"; else echo "lint: FAILED"; fi
exit "$rc"
