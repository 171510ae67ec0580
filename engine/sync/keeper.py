"""``c2pg sync keep``: keep a pipeline's sync running through Ray head restarts.

Without GCS fault tolerance a Ray head that restarts is a new cluster: every actor is gone,
the detached supervisor included, and a driver connected to the old head cannot talk to the
new one. On KubeRay the head pod's sync keeper re-runs ``python -m jobs.sync`` when that
happens (``kuberay/render.py``, ``HEAD_COMMAND``); this is the same for any Ray cluster, the
local stack's among them (docs/operations.md, "Losing a Ray node or the head"; ADR 0016).

Two processes:

- the **keeper** (:func:`keep`, this process; no Ray in it) declares the pipeline's desired
  state "running" in ``_c2pg.sync_state`` once at its start (``stopped = false``), then runs
  a watcher and starts it again whenever it ends, after a bounded back-off (1 s doubling to
  ``BACKOFF_MAX_S``; back to 1 s after a watcher that ran ``HEALTHY_RUN_S``). Each restart is
  logged with the watcher's exit code.
- the **watcher** (:func:`watch`, ``python -m engine.sync.keeper``) joins the cluster
  (``RAY_ADDRESS``, else the local stack's head), and every ``interval`` seconds: if the
  pipeline has no supervisor and its desired state is running, starts one
  (:func:`engine.sync.supervisor.get_or_start`; it continues from the offsets committed in
  PostgreSQL); else pings it. It exits — and the keeper starts a new one, which joins the
  cluster as it is then — when the head's GCS port stops answering or lists another head
  node than the one it joined (a new cluster at the same address), when a round fails
  (the supervisor not answering within ``PING_TIMEOUT_S``, PostgreSQL away), or when a round
  hangs past ``ROUND_TIMEOUT_S`` (a driver of a head that is gone can block in Ray).

``c2pg sync stop`` sets the desired state to stopped: the watcher then leaves the pipeline
stopped (and says so once) until ``c2pg sync start`` or a new ``sync keep``. Stopping the
keeper (SIGTERM, Ctrl-C) stops the watcher, not sync.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("c2pg.sync.keeper")

BACKOFF_MAX_S = 30.0
HEALTHY_RUN_S = 60.0
PING_TIMEOUT_S = 15.0
ROUND_TIMEOUT_S = 45.0


def keep(config: str, interval_s: float = 2.0, stop: threading.Event | None = None) -> int:
    """Run watchers for pipeline file ``config`` until ``stop`` is set (or SIGTERM/SIGINT,
    when called from the main thread); returns 0. Called by ``c2pg sync keep``."""
    from engine.config import load_config

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    cfg = load_config(config)
    declare_running(cfg)
    backoff, restarts = 1.0, 0
    while not stop.is_set():
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "engine.sync.keeper", "--config", config,
                                  "--interval", str(interval_s)])
        while child.poll() is None and not stop.is_set():
            stop.wait(0.5)
        if stop.is_set():
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            break
        ran = time.monotonic() - started
        if ran >= HEALTHY_RUN_S:
            backoff = 1.0
        restarts += 1
        log.warning("sync keeper %s: watcher ended (exit code %s after %.0f s); starting it again in %.0f s "
                    "(restart %d)", cfg.name, child.returncode, ran, backoff, restarts)
        stop.wait(backoff)
        backoff = min(BACKOFF_MAX_S, backoff * 2)
    log.warning("sync keeper %s: stopped (sync itself keeps running)", cfg.name)
    return 0


def declare_running(cfg) -> None:
    """The pipeline's desired state is running (``_c2pg.sync_state.stopped = false``), as
    ``c2pg sync start`` leaves it: what the keeper's start means."""
    import psycopg2

    from engine.sync.supervisor import STATE_DDL
    from engine.target import ensure_state

    conn = psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-sync-keeper"))
    try:
        ensure_state(conn)
        with conn, conn.cursor() as cur:
            cur.execute(STATE_DDL)
            cur.execute("INSERT INTO _c2pg.sync_state (pipeline) VALUES (%s) ON CONFLICT (pipeline) "
                        "DO UPDATE SET stopped = false, updated_at = now()", (cfg.name,))
    finally:
        conn.close()


def desired_running(cfg) -> bool:
    """Whether the pipeline should run: not stopped by ``c2pg sync stop`` (no row yet: yes)."""
    import psycopg2

    conn = psycopg2.connect(**cfg.postgres.connect_kwargs(application_name="c2pg-sync-keeper"))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT stopped FROM _c2pg.sync_state WHERE pipeline = %s", (cfg.name,))
            row = cur.fetchone()
    finally:
        conn.close()
    return row is None or not row[0]


def watch(config: str, interval_s: float) -> None:
    """The watcher's loop (see the module docstring); never returns: the process exits with
    3 when the head stops answering, 4 when a round hangs, 1 when a round fails."""
    import ray

    from engine.config import load_config
    from engine.ray_connect import _answers, ensure_ray
    from engine.sync.supervisor import find, get_or_start

    cfg = load_config(config)
    last_round = [time.monotonic()]

    def watchdog() -> None:
        while True:
            time.sleep(1.0)
            if time.monotonic() - last_round[0] > ROUND_TIMEOUT_S + interval_s:
                log.error("sync keeper %s: a round hung for %.0f s; starting over", cfg.name, ROUND_TIMEOUT_S)
                os._exit(4)

    # From the start: joining a cluster whose head is still coming up can block too.
    threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
    ensure_ray(persistent=True, log_to_driver=False)
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    head = _head_node()
    log.warning("sync keeper %s: watching the supervisor on the Ray cluster at %s:%s", cfg.name, host, port)
    said_stopped = False
    while True:
        if not _answers(host, int(port)) or _head_node() != head:
            # Down, or back as a new cluster at the same address (a round that blocked while
            # it restarted): this driver belongs to the old one; a new watcher joins the new.
            log.error("sync keeper %s: the Ray head at %s:%s is gone", cfg.name, host, port)
            os._exit(3)
        sup = find(cfg.name)
        if sup is None and desired_running(cfg):
            sup = get_or_start(cfg)
            ray.get(sup.ping.remote(), timeout=ROUND_TIMEOUT_S)
            log.warning("sync keeper %s: supervisor was missing; started it (it continues from the committed "
                        "offsets)", cfg.name)
            said_stopped = False
        elif sup is None:
            if not said_stopped:
                log.warning("sync keeper %s: stopped with c2pg sync stop; left stopped until c2pg sync start",
                            cfg.name)
                said_stopped = True
        else:
            ray.get(sup.ping.remote(), timeout=PING_TIMEOUT_S)
        last_round[0] = time.monotonic()
        time.sleep(interval_s)


def _head_node() -> str | None:
    """The id of the cluster's alive head node, as the GCS this driver talks to lists it."""
    import ray

    return next((n["NodeID"] for n in ray.nodes()
                 if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})), None)


def main(argv: list[str] | None = None) -> int:
    from engine import log as c2pg_log

    p = argparse.ArgumentParser(prog="python -m engine.sync.keeper",
                                description="the sync keeper's watcher (started by c2pg sync keep)")
    p.add_argument("--config", required=True)
    p.add_argument("--interval", type=float, default=2.0)
    args = p.parse_args(argv)
    c2pg_log.configure()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # the keeper is stopping: sync goes on
    try:
        watch(args.config, args.interval)
    except Exception as exc:  # noqa: BLE001 - the keeper starts a new watcher; say why this one ended
        log.error("sync keeper: round failed (%s: %s); starting over", type(exc).__name__, str(exc)[:300])
    # os._exit: a driver whose head is gone can hang in Ray's shutdown at exit.
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
