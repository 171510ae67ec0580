"""Reconcile results a person reads: the summary line and the drift page.

Called by :func:`engine.reconcile.run_reconcile` (the page, when drift is found) and by
``jobs.reconcile`` / ``c2pg reconcile`` (the summary). The page is one self-contained HTML
file (inline SVG, no scripts, no network): drift per token range along the ring, stacked by
kind, and the first differences with their columns, values, flags and the repair's verdict.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

KIND_COLOURS = {"missing": "#d9534f", "extra": "#f0ad4e", "mismatch": "#5b7bd5"}
FUTURE_FLAG = "future write time"  # a write time ahead of the clock when the row was judged drift
RING = 2.0**64
MIN_TOKEN = -(2**63)


def summary(result: Any) -> str:
    """One line for people and logs."""
    diff = ", ".join(f"{n} {k}" for k, n in result.differences.items())
    if result.future_write_time:
        diff += f"; {result.future_write_time} with a future write time"
    line = (f"reconcile {result.table} ↔ {result.target}: {result.rows_compared:,} rows compared in "
            f"{result.ranges} ranges ({result.sub_ranges:,} sub-ranges, {result.sub_ranges_differing:,} "
            f"differing), {result.seconds:.1f} s, {result.rows_per_s:,.0f} rows/s; drift {result.drift} "
            f"({diff}); unsettled {result.unsettled}")
    if result.repair:
        line += "; " + repair_text(result)
    return line + f"; run {result.run_id}"


def repair_text(result: Any) -> str:
    """What the repair achieved, as the re-read after it found."""
    r = result.repaired
    text = f"repaired {r['rows_written']} written, {r['rows_deleted']} deleted, {r['not_repaired']} not repaired"
    if result.cells_overwritten:
        text += f" ({result.cells_overwritten} newer PostgreSQL cells overwritten by the authoritative rule)"
    if result.equal_at_repair:
        text += f", {result.equal_at_repair} equal by then through another write"
    return text


def write_html(result: Any, drift: Sequence[Any], path: str | os.PathLike | None = None,
               repair_notes: Mapping[tuple, str] | None = None) -> str:
    """Write the drift page and return its path (default: ``c2pg-reconcile-<run>.html`` in the
    directory ``C2PG_REPORT_DIR`` names, else the working directory).
    ``repair_notes``: per drifted ``(token, key)``, the repair's verdict."""
    name = f"c2pg-reconcile-{result.run_id}.html"
    out = Path(path) if path else Path(os.environ.get("C2PG_REPORT_DIR") or ".") / name
    out.write_text(render_html(result, drift, repair_notes), encoding="utf-8")
    return str(out.resolve())


def render_html(result: Any, drift: Sequence[Any], repair_notes: Mapping[tuple, str] | None = None) -> str:
    e = html.escape
    notes = repair_notes or {}
    rows = "".join(
        f"<tr><td>{e(x.kind)}</td><td><code>{e(json.dumps(list(x.key), ensure_ascii=False))}</code></td>"
        f"<td>{x.token}</td><td>{e(', '.join(x.columns))}</td><td>{FUTURE_FLAG if x.future else ''}</td>"
        f"<td><code>{e(json.dumps(x.detail, ensure_ascii=False, default=str)[:400])}</code></td>"
        f"<td>{e(notes.get((x.token, x.key), ''))}</td></tr>"
        for x in list(drift)[:200])
    counts = " · ".join(f'<span style="color:{KIND_COLOURS[k]}">■</span> {k}: {n}'
                        for k, n in result.differences.items())
    if result.future_write_time:
        counts += f" · {FUTURE_FLAG}: {result.future_write_time}"
    repaired = f" {e(repair_text(result))}." if result.repair else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>c2pg reconcile {e(result.table)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}} code{{font-size:12px}}</style>
</head><body>
<h1>Reconcile {e(result.table)} ↔ {e(result.target)}</h1>
<p>Run <code>{e(result.run_id)}</code>: {result.rows_compared:,} rows compared in {result.ranges} token ranges,
{result.seconds:.1f} s. Drift: {result.drift} ({counts}); unsettled (still changing at the last re-check):
{result.unsettled}.{repaired}</p>
<h2>Drift per token range</h2>
{drift_svg(result.drift_by_range)}
<h2>Differences (first 200)</h2>
<table><tr><th>kind</th><th>key</th><th>token</th><th>columns</th><th>flags</th><th>detail</th><th>repair</th></tr>
{rows}</table>
</body></html>
"""


def drift_svg(ranges: Sequence[dict], width: int = 900, height: int = 220) -> str:
    """Bars along the token ring: each range at its position and width, stacked by kind."""
    top = max((sum(r[k] for k in KIND_COLOURS) for r in ranges), default=0) or 1
    plot_h = height - 40
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
              f'aria-label="drift per token range">'),
             f'<rect x="0" y="0" width="{width}" height="{plot_h}" fill="#f7f7f7"/>']
    for r in ranges:
        x0 = (r["start_token"] - MIN_TOKEN) / RING * width
        w = max(1.0, (r["end_token"] - r["start_token"]) / RING * width)
        y = plot_h
        for kind, colour in KIND_COLOURS.items():
            n = r[kind]
            if not n:
                continue
            h = n / top * (plot_h - 10)
            y -= h
            parts.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour}" '
                         'stroke="#fff" stroke-width="0.5">'
                         f'<title>range {r["split_index"]} ({r["start_token"]}, {r["end_token"]}]: '
                         f'{n} {kind} of {r["rows"]} rows{_future(r)}</title></rect>')
    parts.append(f'<text x="0" y="{plot_h + 16}" font-size="11">token -2^63</text>')
    parts.append(f'<text x="{width}" y="{plot_h + 16}" font-size="11" text-anchor="end">token 2^63</text>')
    parts.append(f'<text x="{width / 2}" y="{plot_h + 32}" font-size="11" text-anchor="middle">'
                 f'max {top} differing rows in one range</text></svg>')
    return "".join(parts)


def _future(r: dict) -> str:
    n = r.get("future", 0)
    return f"; {n} with a {FUTURE_FLAG} in this range" if n else ""
