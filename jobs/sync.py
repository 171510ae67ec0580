"""Continuous sync: start (or attach to) the pipeline's supervisor and follow its progress.

    python -m jobs.sync --config pipeline.yaml [--until-caught-up] [--interval 5]

Usable under ``ray job submit``. It starts the detached ``SyncSupervisor`` of the pipeline
(or finds the running one), then prints a progress line every ``--interval`` seconds:
events remaining (Kafka lag), applied rate, estimated time to catch up, dead letters.
SIGTERM or Ctrl-C drains: every worker finishes its batch, offsets are committed, and the
supervisor is removed; exit code 0. ``--until-caught-up`` returns (leaving sync running)
once the lag is 0 — for scripts and the demo.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from engine import log
from engine.cli import add_config_argument
from jobs import _entry


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--until-caught-up", action="store_true",
                   help="return once every partition is caught up (sync keeps running)")
    p.add_argument("--timeout", type=float, default=0, help="with --until-caught-up: give up after N s (0: never)")


def progress(status: dict) -> tuple[int, float, str]:
    """(events remaining, events/s, a one-line summary) from a supervisor status."""
    # The capture heartbeat's partitions are not the tables' progress (shown under capture).
    parts = [p for w in status["workers"] for p in w.get("partitions", []) if not p.get("heartbeat")]
    remaining = sum(p.get("lag") or 0 for p in parts)
    rate = sum(p.get("events_per_s") or 0 for p in parts)
    applied = sum(p.get("events") or 0 for p in parts)
    states = ",".join(sorted({w["state"] for w in status["workers"]})) or "starting"
    eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining else ("-" if remaining else "caught up")
    line = (f"sync {status['pipeline']}: {len(status['workers'])} worker(s) [{states}], "
            f"{len(parts)} partition(s), {applied} events applied, {remaining} remaining, "
            f"{rate:,.0f} events/s, eta {eta}")
    refused = [r["table"] for r in status.get("refused") or []]
    if refused:
        line += f"; REFUSED: {', '.join(refused)} (c2pg sync status says why)"
    capture = status.get("capture") or {}
    if capture.get("stalled"):
        # "caught up" with the topics means nothing while the connector delivers nothing.
        line += "; CAPTURE STALLED: " + "; ".join(n.get("reason") or n["node"] for n in capture.get("nodes", [])
                                                  if n.get("state") == "stalled")
    return remaining, rate, line


def run(args: argparse.Namespace) -> int:
    import ray

    from engine.config import load_config
    from engine.ray_connect import ensure_ray
    from engine.sync.supervisor import get_or_start, remove

    cfg = load_config(args.config)
    log.bind(pipeline=cfg.name)
    ensure_ray(persistent=True, log_to_driver=False)
    sup = get_or_start(cfg)
    ray.get(sup.ping.remote())
    done = threading.Event()

    def drain(signum, _frame):
        print(f"sync: signal {signum}: draining the current batches", flush=True)
        done.set()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    started = time.monotonic()
    while not done.is_set():
        status = ray.get(sup.status.remote(), timeout=30)
        remaining, _, line = progress(status)
        print(line, flush=True)
        parts = [p for w in status["workers"] for p in w.get("partitions", [])]
        if args.until_caught_up and parts and remaining == 0 and all(p.get("lag") == 0 for p in parts):
            return 0
        if args.until_caught_up and args.timeout and time.monotonic() - started > args.timeout:
            print("sync: not caught up before --timeout", file=sys.stderr)
            return 1
        done.wait(args.interval)
    ray.get(sup.stop.remote(), timeout=120)
    remove(cfg.name, sup)
    print("sync: stopped; offsets committed", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return _entry.main("sync", __doc__ or "", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
