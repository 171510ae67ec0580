"""The snapshot's read side, one lever: row tuples against ``SELECT JSON`` (issue #17).

    .venv/bin/python -m benchmarks.snapshot_read [--rows 200000] [--rounds 2]

On the local stack: the snapshot benchmark's table shape (``benchmarks/snapshot.py``:
ten mixed columns, one row per partition) loaded once into ``c2pg_bench.snap_read``
(``--rows`` rows; later runs reuse it), then read whole by one process with the Python
driver (fetch size 5,000), four ways, ``--rounds`` times each in turn:

- ``rows``: ``SELECT <the ten columns>`` — the driver decodes every value into a Python
  object and every row into a tuple (what c2pg's snapshot read tasks get today);
- ``rows+writetime``: the same plus ``writetime(c)`` of the eight single-cell regular
  columns (what c2pg reads for last-write-wins; the map's is left out here);
- ``json`` and ``json+writetime``: the same selections as ``SELECT JSON``, so Cassandra
  formats each row as one JSON text and the driver makes one string per row.

For each: the reading process's CPU per row, Cassandra's CPU per row (its process, over the
same interval) and rows/s. The JSON texts are checked against the tuples: every variant
must return the same rows (count and sum of keys), and for the first 2,000 keys the JSON's
values, parsed, must equal the tuples' (text, int, double, boolean, uuid, the map). Nothing
is written to PostgreSQL: this measures the lever, it does not build the JSON read path.
Every run is appended to ``benchmarks/results/snapshot_read.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.snapshot import KS, NAMES, load_source
from benchmarks.sync import cpu_between, cpu_snapshot
from engine import cql, log
from engine.config import load_config

TABLE = "snap_read"
RESULTS = Path(__file__).resolve().parent / "results" / "snapshot_read.json"
WRITETIME_OF = ("u", "name", "qty", "price", "at", "active", "amount", "note")
SAMPLE = 2000


def _selection(write_times: bool) -> str:
    return ", ".join(list(NAMES) + ([f"writetime({c})" for c in WRITETIME_OF] if write_times else []))


def read(session, query: str) -> tuple[dict, dict]:
    """Read ``query`` to the end; → (figures, the first SAMPLE rows by key as plain values)."""
    stmt = session.prepare(query)
    stmt.fetch_size = 5000
    before = cpu_snapshot()
    c0, w0 = time.process_time(), time.perf_counter()
    rows, key_sum, sample = 0, 0, {}
    as_json = query.startswith("SELECT JSON")
    for r in session.execute(stmt, timeout=120):
        rows += 1
        if as_json:
            text = r[0]
            if len(sample) < SAMPLE:
                v = json.loads(text)
                sample[v["id"]] = v
                key_sum += v["id"]
            else:
                key_sum += int(text[6:text.index(",")])  # '{"id": 123, …': Cassandra puts the key first
        else:
            key_sum += r.id
            if len(sample) < SAMPLE:
                sample[r.id] = r
    wall = time.perf_counter() - w0
    client = time.process_time() - c0
    cpu = cpu_between(before, cpu_snapshot(), rows)
    return ({"rows": rows, "key_sum": key_sum, "rows_per_s": round(rows / wall),
             "client_cpu_us_per_row": round(client / rows * 1e6, 2),
             "cassandra_cpu_us_per_row": cpu["cpu_us_per_event"].get("cassandra")}, sample)


def same_values(rows: dict, parsed: dict) -> list[str]:
    """Where the JSON texts' values differ from the driver's tuples (first few)."""
    bad = []
    for k, r in rows.items():
        v = parsed.get(k)
        if v is None:
            bad.append(f"id {k}: missing from the JSON read")
            continue
        checks = {"name": (r.name, v["name"]), "qty": (r.qty, v["qty"]), "price": (r.price, v["price"]),
                  "active": (r.active, v["active"]), "note": (r.note, v["note"]),
                  "u": (r.u, uuid.UUID(v["u"])), "attrs": (dict(r.attrs or {}), v["attrs"] or {})}
        bad += [f"id {k} {col}: {a!r} vs {b!r}" for col, (a, b) in checks.items() if a != b]
        if len(bad) > 5:
            break
    return bad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--config", type=Path, default=Path("examples/pipeline.local.yaml"))
    args = p.parse_args()
    log.configure("WARNING")
    cfg = load_config(args.config)
    cluster, session = cql.connect(cfg.cassandra)
    try:
        load_source(session, TABLE, args.rows)
        variants = {name: f"SELECT {'JSON ' if 'json' in name else ''}{_selection('writetime' in name)} "  # nosec B608 - constants
                          f"FROM {KS}.{TABLE}"
                    for name in ("rows", "json", "rows+writetime", "json+writetime")}
        runs, mismatches, sums = [], [], set()
        for rnd in range(args.rounds):
            samples = {}
            for name, query in variants.items():
                figures, samples[name] = read(session, query)
                figures.update(variant=name, round=rnd + 1)
                sums.add((figures["rows"], figures["key_sum"]))
                runs.append(figures)
                print(json.dumps(figures), flush=True)
            mismatches += same_values(samples["rows"], samples["json"])
    finally:
        cluster.shutdown()
    out = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
           "command": f".venv/bin/python -m benchmarks.snapshot_read --rows {args.rows} --rounds {args.rounds}",
           "load_average_at_end": os.getloadavg(), "same_rows": len(sums) == 1, "value_mismatches": mismatches[:10],
           "runs": runs}
    history = json.loads(RESULTS.read_text())["history"] if RESULTS.exists() else []
    history.append(out)
    RESULTS.write_text(json.dumps({"history": history}, indent=2) + "\n")
    if len(sums) != 1 or mismatches:
        raise SystemExit(f"the variants did not read the same rows and values: {sums} {mismatches[:5]}")


if __name__ == "__main__":
    main()
