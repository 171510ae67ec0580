"""The committed OpenAPI spec of the control plane: ``serve_app/openapi.json``.

    python -m serve_app.openapi          # rewrite serve_app/openapi.json from the code
    python -m serve_app.openapi --check  # exit 1 if the committed file is out of date

The spec is generated from :func:`serve_app.api.create_api` without a backend (routes are
declared, never called). Tests check that the committed file equals what the code
generates and what the live app serves at ``/openapi.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPEC_PATH = Path(__file__).resolve().with_name("openapi.json")


def generate() -> dict:
    from serve_app.api import create_api

    return create_api(None, token="spec-only", rate_limit_per_minute=1).openapi()


def render(spec: dict) -> str:
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_app.openapi", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args(argv)
    text = render(generate())
    if args.check:
        if not SPEC_PATH.exists() or SPEC_PATH.read_text() != text:
            print(f"{SPEC_PATH} is out of date: run python -m serve_app.openapi", file=sys.stderr)
            return 1
        return 0
    SPEC_PATH.write_text(text)
    print(f"wrote {SPEC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
