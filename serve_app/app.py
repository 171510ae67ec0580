"""The Ray Serve application of the control plane: ``serve run serve_app.app:app``.

``app`` is the deployment bound with no arguments: each replica reads the pipeline file
named by ``C2PG_PIPELINE_CONFIG`` (default ``examples/pipeline.local.yaml`` of this
checkout), with the usual ``C2PG__SECTION__KEY`` overrides and secrets from Vault or the
environment (:func:`engine.config.load_config`). ``build_app`` is the same with arguments,
for ``serve run serve_app.app:build_app config=/path/pipeline.yaml``; tests bind
:class:`ControlPlane` directly.

``serve_app/serve_config.yaml`` is written by
``serve build serve_app.app:app -o serve_app/serve_config.yaml``; KubeRay's RayService uses
it as ``serveConfigV2`` (issue #7 checks that they agree). Rebuild it after changing the
deployment's options below.

A replica that cannot load its config fails to start (Serve reports the ``ConfigError``
with every problem named); a running replica never fails its health check because a peer
is down — that is what ``/readyz`` reports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import serve

ROOT = Path(__file__).resolve().parents[1]
CONFIG_ENV = "C2PG_PIPELINE_CONFIG"
DEFAULT_CONFIG = ROOT / "examples" / "pipeline.local.yaml"


def config_path(given: str | os.PathLike | None = None) -> Path:
    """The pipeline file: ``given``, else ``$C2PG_PIPELINE_CONFIG``, else the example; a
    relative path is taken from the checkout's root (a replica's cwd is Ray's)."""
    path = Path(given or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    return path if path.is_absolute() else ROOT / path


@serve.deployment(name="ControlPlane", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress()
class ControlPlane:
    """One replica: the pipeline's :class:`~serve_app.control.Control` and its FastAPI app."""

    def __init__(self, config: str | None = None, env: dict[str, str] | None = None):
        from engine import log
        from engine.config import load_config
        from engine.errors import ConfigError
        from serve_app.control import Control

        log.configure()
        path = config_path(config)
        env = {**os.environ, **(env or {})}
        cfg = load_config(path, env=env)
        if cfg.api.token is None:
            raise ConfigError(["api.token: required by the Serve app (every /v1 route needs it)"])
        log.bind(pipeline=cfg.name)
        self.control = Control(cfg, path, env=env)
        self._token = cfg.api.token.get()

    def __serve_build_asgi_app__(self):
        from serve_app.api import create_api

        return create_api(self.control, token=self._token,
                          rate_limit_per_minute=self.control.cfg.api.rate_limit_per_minute,
                          behind_serve=True)

    def check_health(self) -> None:
        """Serve's replica health: the replica itself works (peers are ``/readyz``'s business)."""
        if self.control is None:
            raise RuntimeError("control plane not initialised")


app = ControlPlane.bind()


def build_app(args: dict[str, Any]) -> serve.Application:
    """``serve run serve_app.app:build_app config=PATH``: the app on another pipeline file."""
    return ControlPlane.bind(args.get("config"))
