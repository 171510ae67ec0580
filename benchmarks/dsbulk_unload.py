"""The snapshot benchmark's peer: ``dsbulk unload`` to CSV files, then ``psql \\copy`` them in.

For a one-off copy of a large Cassandra table into PostgreSQL, the tool a user picks is the
DataStax Bulk Loader (DSBulk): it unloads a table by token range, in parallel, into CSV files,
and ``psql \\copy`` loads those. DSBulk's release archive is not on Maven Central, but its
modules are: ``benchmarks/dsbulk/pom.xml`` names them (without ``dsbulk-workflow-count``,
which Maven Central does not serve; the ``count`` command is then missing, ``unload`` is
not), :func:`install` resolves them once with ``mvn`` into ``.stack/dist/dsbulk-<version>/``
and :func:`unload` runs DSBulk's main class from there, as its own ``bin/dsbulk`` does.

    .venv/bin/python -m benchmarks.dsbulk_unload --install-only   # resolve the jars
    .venv/bin/python -m benchmarks.dsbulk_unload --selftest       # unload a small table, \\copy, compare

The self test writes ``c2pg_bench.dsbulk_selftest`` (values with quotes, commas, backslashes,
newlines, empty strings, nulls, non-ASCII text, decimals, a map), unloads it, loads the CSV
into ``bench.dsbulk_selftest`` and checks every value against what the Cassandra driver
reads; exit 1 on any difference.

API for ``benchmarks/snapshot.py``: :func:`unload`, :func:`copy_csv_dir`.

DSBulk carries no write times and no TTLs: it copies values. Its settings here
(:data:`UNLOAD_SETTINGS`) are its defaults, which DSBulk sizes for the machine's cores;
docs/benchmarks.md says more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess  # nosec B404 - runs java (DSBulk), cat and psql with argv lists built here
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.stack import versions as v
from engine.stack.launcher import default_root
from engine.stack.services import StackPaths, copy_maven_deps, java_bin

DSBULK = "1.10.0"  # com.datastax.oss:dsbulk-* on Maven Central (1.11.0 has no count workflow either)
SERVICE = "dsbulk"
POM = Path(__file__).resolve().parent / "dsbulk" / "pom.xml"
MAIN = "com.datastax.oss.dsbulk.runner.DataStaxBulkLoader"

# CSV that PostgreSQL's FORMAT csv reads back unchanged: a quote inside a value is doubled
# (DSBulk's default escape is a backslash, which PostgreSQL would keep as a character), no
# header (the files are concatenated), nulls as nothing and empty strings as "" (DSBulk's
# defaults, and PostgreSQL's CSV defaults).
CSV_SETTINGS = {
    "--connector.csv.header": "false",
    "--connector.csv.escape": '"\\""',  # HOCON: the string "\""
    "--connector.csv.maxCharsPerColumn": "-1",
}
# Throughput settings: DSBulk's own defaults (engine.maxConcurrentQueries AUTO, schema.splits
# 8C, 5000-row pages, connector.csv.maxConcurrentFiles AUTO), sized by DSBulk for the cores.
UNLOAD_SETTINGS: dict[str, str] = {}


def install(paths: StackPaths | None = None) -> Path:
    """DSBulk's runtime classpath, resolved once into ``.stack/dist/dsbulk-<version>/lib``.

    Maven's output goes to ``.stack/logs/install-dsbulk.log``; a failure raises
    :class:`~engine.errors.StackError` naming that log.
    """
    paths = paths or StackPaths(default_root())
    lib = paths.dist / f"dsbulk-{DSBULK}" / "lib"
    # copy_maven_deps joins its pom name to engine/stack/maven/; an absolute path stays itself.
    copy_maven_deps(SERVICE, str(POM), {"dsbulk.version": DSBULK}, lib, paths.log(f"install-{SERVICE}"))
    if not any(lib.glob("dsbulk-workflow-unload-*.jar")):
        raise RuntimeError(f"{lib}: no dsbulk-workflow-unload jar after resolving {POM}")
    return lib


def unload(host: str, port: int, keyspace: str, table: str, columns: list[str], out_dir: Path,
           settings: dict[str, str] | None = None, login: tuple[str, str] | None = None) -> dict[str, Any]:
    """``dsbulk unload`` of ``columns`` of ``keyspace.table`` into CSV files in ``out_dir``.

    The query has no WHERE clause, so DSBulk reads it by token range in parallel
    (``schema.splits``). Returns ``seconds`` (the whole command, JVM start included, as a
    user would time it), DSBulk's own ``reported_s`` and ``rows``, and the command line.
    Raises ``CalledProcessError`` (DSBulk's output in the message) when DSBulk fails.
    ``login`` (role, password) goes to the driver in a config file of ``out_dir`` (0600),
    not on the command line.
    """
    lib = install()
    out_dir.mkdir(parents=True, exist_ok=True)
    auth: list[str] = []
    if login is not None:
        conf = out_dir / "auth.conf"
        conf.write_text("datastax-java-driver.advanced.auth-provider {\n  class = PlainTextAuthProvider\n"
                        f"  username = {json.dumps(login[0])}\n  password = {json.dumps(login[1])}\n}}\n")
        conf.chmod(0o600)
        auth = ["-f", str(conf)]
    cols = ", ".join(f'"{c}"' for c in columns)
    options = {**CSV_SETTINGS, **UNLOAD_SETTINGS, **(settings or {})}
    cmd = [java_bin(SERVICE), "-cp", f"{lib}/*", MAIN, "unload", *auth,
           "-h", host, "-port", str(port),
           "-query", f'SELECT {cols} FROM "{keyspace}"."{table}"',  # nosec B608 - quoted names, no values
           "-url", str(out_dir / "csv"), "-logDir", str(out_dir / "logs"),
           *[x for kv in options.items() for x in kv]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # nosec B603 - argv list, no shell
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return {"seconds": seconds, **_summary(proc.stdout + proc.stderr), "command": cmd[1:2] + cmd[3:]}


def _summary(output: str) -> dict[str, Any]:
    """DSBulk's own figures from its console output: the final row count and duration."""
    rows = None
    for line in output.splitlines():
        m = re.match(r"\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|", line)
        if m:
            rows, failed = int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))
            if failed:
                raise RuntimeError(f"dsbulk unload: {failed} failed rows\n{output}")
    m = re.search(r"completed successfully in (.+?)\.\s*$", output, re.M)
    return {"rows": rows, "reported": m.group(1) if m else None}


def copy_csv_dir(csv_dir: Path, target: str, env: dict[str, str]) -> float:
    """Seconds to ``psql \\copy target FROM`` every CSV file DSBulk wrote (one stream)."""
    files = sorted(csv_dir.glob("*.csv"))
    if not files:
        raise RuntimeError(f"{csv_dir}: dsbulk wrote no CSV files")
    t0 = time.perf_counter()
    # One \copy over all files, as one stream: `cat` feeds psql's standard input (pstdin).
    cat = subprocess.Popen(["cat", *map(str, files)], stdout=subprocess.PIPE)  # nosec B603 B607 - argv list
    try:
        copy = f"\\copy {target} FROM pstdin WITH (FORMAT csv)"
        subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-c", copy],  # nosec B603 B607 - argv list, psql from PATH
                       stdin=cat.stdout, check=True, env=env, capture_output=True)
    finally:
        assert cat.stdout is not None
        cat.stdout.close()
        if cat.wait() != 0:
            raise RuntimeError(f"cat of {csv_dir} failed (exit {cat.returncode})")
    return time.perf_counter() - t0


# --- self test ----------------------------------------------------------------------------

SELFTEST_KS, SELFTEST_TABLE = "c2pg_bench", "dsbulk_selftest"
SELFTEST_COLUMNS = ["id", "name", "amount", "qty", "price", "at", "active", "u", "attrs"]
SELFTEST_CQL = ("id bigint PRIMARY KEY, name text, amount decimal, qty int, price double, at timestamp, "
                "active boolean, u uuid, attrs map<text, int>")
SELFTEST_PG = ("id bigint PRIMARY KEY, name text, amount numeric, qty integer, price double precision, "
               "at timestamptz, active boolean, u uuid, attrs jsonb")
_COLS = ", ".join(SELFTEST_COLUMNS)
# The self test's fixed names, no values (those are bound).
SELFTEST_INSERT = (f"INSERT INTO {SELFTEST_KS}.{SELFTEST_TABLE} ({_COLS}) "  # nosec B608 - constants
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
SELFTEST_SELECT_CQL = f"SELECT {_COLS} FROM {SELFTEST_KS}.{SELFTEST_TABLE}"  # nosec B608 - constants
SELFTEST_SELECT_PG = f"SELECT {_COLS} FROM bench.{SELFTEST_TABLE}"  # nosec B608 - constants
TEXTS = ["plain", 'a "quoted", comma', "back\\slash", "two\nlines\r\nand\ttab", "", "ünïcødé ☃", None,
         '""', "\\N", "NULL", ",", " leading and trailing "]


def selftest() -> dict[str, Any]:
    import uuid
    from datetime import UTC, datetime

    import psycopg2

    from engine import cql
    from engine.config import CassandraConfig

    from engine.stack.services import cassandra_login

    pg_kw = _stack_pg()
    login = cassandra_login()  # the node asks for it in the stack's TLS mode only
    password = f"file:{default_root() / 'secrets' / 'cassandra-password'}"
    cluster, session = cql.connect(CassandraConfig(contact_points=[v.HOST], port=v.PORTS["cassandra"],
                                                   local_dc="datacenter1", username=login[0], password=password))
    try:
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS {SELFTEST_KS} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute(f"DROP TABLE IF EXISTS {SELFTEST_KS}.{SELFTEST_TABLE}")
        session.execute(f"CREATE TABLE {SELFTEST_KS}.{SELFTEST_TABLE} ({SELFTEST_CQL})")
        ins = session.prepare(SELFTEST_INSERT)
        for i, text in enumerate(TEXTS):
            amount = Decimal("-12345678901234567890.000000001") if i % 2 else Decimal(i) / 100
            at = datetime(1970 + i * 7, 1, 2, 3, 4, 5, 6000, UTC)
            session.execute(ins, (i, text, amount, -2**31 if i == 3 else i, 1 / (i + 3), at, i % 2 == 0,
                                  uuid.UUID(int=i), {"k": i, "é\"": -i} if i % 3 else None))
        want = {r[0]: r for r in session.execute(SELFTEST_SELECT_CQL)}
    finally:
        cluster.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        result = unload(v.HOST, v.PORTS["cassandra"], SELFTEST_KS, SELFTEST_TABLE, SELFTEST_COLUMNS, Path(tmp),
                        login=login)
        conn = psycopg2.connect(**pg_kw)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("CREATE SCHEMA IF NOT EXISTS bench")
                cur.execute(f"DROP TABLE IF EXISTS bench.{SELFTEST_TABLE}")
                cur.execute(f"CREATE TABLE bench.{SELFTEST_TABLE} ({SELFTEST_PG})")
            env = {**os.environ, "PGHOST": pg_kw["host"], "PGPORT": str(pg_kw["port"]), "PGUSER": pg_kw["user"],
                   "PGPASSWORD": pg_kw["password"], "PGDATABASE": pg_kw["dbname"]}
            copy_csv_dir(Path(tmp) / "csv", f"bench.{SELFTEST_TABLE} ({_COLS})", env)
            with conn, conn.cursor() as cur:
                cur.execute(SELFTEST_SELECT_PG)
                got = {r[0]: r for r in cur.fetchall()}
                cur.execute(f"DROP TABLE bench.{SELFTEST_TABLE}")
        finally:
            conn.close()
    diffs = []
    for key, row in want.items():
        other = got.get(key)
        if other is None:
            diffs.append(f"id {key}: missing")
            continue
        for col, a, b in zip(SELFTEST_COLUMNS, row, other, strict=True):
            if col == "at":
                a = a.replace(tzinfo=UTC) if a is not None else None
            if col == "u":
                a = str(a)  # psycopg2 gives uuid as text
            if col == "attrs":
                a = dict(a) if a else None  # an empty non-frozen map is null; DSBulk writes {}
                b = b or None
            if a != b:
                diffs.append(f"id {key} {col}: cassandra {a!r}, postgres {b!r}")
    diffs += [f"id {k}: extra" for k in got.keys() - want.keys()]
    return {"rows": len(want), "differences": diffs, "unload": {k: result[k] for k in ("seconds", "rows", "reported")}}


def _stack_pg() -> dict[str, Any]:
    root = default_root()
    return {"host": v.HOST, "port": v.PORTS["postgres"], "dbname": "c2pg", "user": "c2pg",
            "password": (root / "secrets" / "postgres-password").read_text().strip()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--install-only", action="store_true", help="resolve DSBulk's jars and exit")
    p.add_argument("--selftest", action="store_true", help="unload a small table of tricky values and compare")
    args = p.parse_args()
    lib = install()
    if args.install_only or not args.selftest:
        print(lib)
        return
    out = selftest()
    print(json.dumps(out, indent=2))
    sys.exit(1 if out["differences"] else 0)


if __name__ == "__main__":
    main()
