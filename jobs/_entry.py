"""The shared edge of every ``python -m jobs.<name>`` entry point.

Each job module defines ``add_arguments(parser)`` and ``run(args) -> int`` (the CLI reuses
both as ``c2pg <name>``); :func:`main` parses, configures logging, runs, and turns a
:class:`~engine.errors.C2pgError` into its message on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from engine import log
from engine.errors import C2pgError


def main(name: str, doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{name}", description=doc.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    log.configure()
    try:
        return run(args)
    except C2pgError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return exc.exit_code
