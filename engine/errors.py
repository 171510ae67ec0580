"""The exception tree of c2pg, documented in one place.

``C2pgError`` is the root; callers catch a leaf when they can act on it and the root at
the process edge (the CLI maps it to an exit code). Dependency exceptions (psycopg2,
cassandra-driver, confluent-kafka, hvac) are translated at one boundary with
``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations


class C2pgError(Exception):
    """Root of every error c2pg raises on purpose."""

    exit_code = 1


class ConfigError(C2pgError):
    """The pipeline configuration is invalid or its secrets cannot be resolved.

    ``problems`` holds every problem found, each naming the setting at fault, so a user
    fixes them all in one round. The CLI exits with code 2.
    """

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class SecretError(C2pgError):
    """A secret reference could not be resolved (source unreachable, or key missing)."""

    exit_code = 2


class StackError(C2pgError):
    """The local stack could not be installed, started or stopped.

    The message names the service, the cause and the log file to read.
    """

    exit_code = 3

    def __init__(self, service: str, cause: str, log_file: str | None = None):
        self.service = service
        self.cause = cause
        self.log_file = log_file
        where = f" (log: {log_file})" if log_file else ""
        super().__init__(f"{service}: {cause}{where}")
