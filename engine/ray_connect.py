"""Joining the right Ray cluster, once per process.

Callers: the jobs (snapshot, reconcile, sync), the CLI's ``sync`` commands and the demo,
before their first Ray call. ``ray.init()`` without an address follows
``/tmp/ray/ray_current_cluster``, which a cluster that is gone leaves behind; the init then
waits minutes for a GCS that never answers. So the address is chosen here, in this order:

1. Ray is already initialized (a test, the Serve app): nothing to do;
2. ``RAY_ADDRESS`` — set by ``ray job submit``, by ``eval "$(c2pg stack env)"``, or by the
   operator;
3. the local stack's Ray head (``c2pg stack up``), when its GCS port answers;
4. a new Ray instance for this process alone (``address="local"``, with a token in a
   temporary file, never ``~/.ray``) — unless the caller
   needs a cluster that outlives it (``persistent``: sync's detached actors), which is then
   a :class:`NoRayCluster` error naming the fix.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import socket
import tempfile

from engine.errors import C2pgError
from engine.stack import versions

STACK_GCS = (versions.HOST, versions.PORTS["ray_gcs"])


class NoRayCluster(C2pgError):
    """Sync needs a running Ray cluster and none was given or found (exit code 2)."""

    exit_code = 2


def ensure_ray(*, persistent: bool = False, log_to_driver: bool = True,
               logging_level: int = logging.WARNING) -> str:
    """Initialize Ray as the module docstring says; returns the address used."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    address = choose_address(persistent=persistent)
    if address == "local":
        _private_token()
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=log_to_driver, logging_level=logging_level)
    return address


def choose_address(*, persistent: bool = False) -> str:
    """Steps 2–4 of the module docstring: the address ``ray.init`` will be given."""
    address = os.environ.get("RAY_ADDRESS") or (f"{STACK_GCS[0]}:{STACK_GCS[1]}" if _answers(*STACK_GCS)
                                                else "local")
    if address == "local" and persistent:
        raise NoRayCluster("no Ray cluster to run sync on: set RAY_ADDRESS to the cluster's GCS address "
                           "(host:port), or start the local stack and run: eval \"$(c2pg stack env)\"")
    return address


def _private_token() -> None:
    """A token for a private Ray instance, in a temporary file of its own.

    Ray turns token authentication on for a new local instance and, with no token given,
    writes one to ``~/.ray/auth_token``; c2pg never writes the user's home, so it gives Ray
    a token of its own first (unless the environment already names one)."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    directory = tempfile.mkdtemp(prefix="c2pg-ray-token-")
    # The private instance ends with this process, and so does its token (Ray's own atexit
    # shutdown stops the servers; they read the file only at start).
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, "auth_token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = path
    # RAY_AUTH_MODE stays unset: ray.init() of a new local instance then turns token mode on
    # itself, refreshing the configuration it read when `ray` was imported (setting the
    # variable here, after that import, would leave this process speaking no token while
    # the servers it starts demand one).


def _answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
