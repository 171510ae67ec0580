#!/usr/bin/env bash
# The README's demo: install what is missing, bring the local stack up (or reuse it), and
# run the main job against it (jobs/demo.py). The stack is left running so you can look
# around; `.venv/bin/c2pg stack down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/c2pg stack up
exec .venv/bin/python -m jobs.demo --config examples/pipeline.local.yaml "$@"
