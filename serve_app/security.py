"""Request-level guards of the control plane: bearer token, rate limit, request id, errors.

Used by :func:`serve_app.api.create_api` only. Order of a ``/v1`` request:

1. :class:`RequestContext` (outermost ASGI middleware) takes ``X-Request-ID`` from the
   request when it is a sane token (letters, digits, ``._:-``, at most 128) or makes one,
   binds it to the log context (``request_id`` on every line logged while the request
   runs), returns it as a response header, and turns any exception that escaped the app
   into a 500 with a JSON body naming the request id — the traceback goes to the log,
   never into the response. Behind Ray Serve (``echo=False``) the proxy has already
   accepted or created the id (its own ``RequestIdMiddleware``) and returns the header
   itself, so the app takes the proxy's id and does not add a second header.
2. :class:`RateLimiter` (a route dependency) charges the client one token; an empty bucket
   is a 429 with ``Retry-After`` (whole seconds until a token is back). It runs before the
   token check, so guessing tokens is rate limited too.
3. :class:`BearerAuth` compares the bearer token with ``api.token`` in constant time
   (:func:`hmac.compare_digest`); missing or wrong is a 401 with
   ``WWW-Authenticate: Bearer``.

The client key of the rate limit is the peer address of the connection (what Serve's proxy
passes as the ASGI ``client``). With one shared token that is the only thing telling
clients apart; ``X-Forwarded-For`` is not trusted (any client can write it). Limits are per
replica: N replicas admit up to N times ``api.rate_limit_per_minute``.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("c2pg.serve")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ApiError(Exception):
    """An answer other than 2xx, with a message meant for the client (no internals).

    Raised by routes and guards; :func:`serve_app.api.create_api` renders it as
    ``{"error": message, "request_id": ...}`` with ``status`` and ``headers``.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class BearerAuth:
    """``Authorization: Bearer <token>`` equal to the configured token, in constant time."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("api.token: empty")
        self._token = token.encode("utf-8")

    def check(self, authorization: str | None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        # compare_digest runs in time independent of where the strings differ; it is
        # called even for a missing header, so timing does not tell "missing" from "wrong".
        ok = hmac.compare_digest(given.strip().encode("utf-8"), self._token)
        if not ok or scheme.lower() != "bearer":
            raise ApiError(401, "missing or invalid bearer token (Authorization: Bearer <api.token>)",
                           {"WWW-Authenticate": "Bearer"})


class RateLimiter:
    """A token bucket per client: ``per_minute`` tokens, refilled continuously.

    A client may burst up to ``per_minute`` requests, then gets one every
    ``60 / per_minute`` seconds. At most ``max_clients`` buckets are kept (least recently
    used dropped: a dropped client starts again with a full bucket). Thread-safe: Serve
    runs sync routes in a thread pool.
    """

    def __init__(self, per_minute: int, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if per_minute <= 0:
            raise ValueError("api.rate_limit_per_minute: must be greater than 0")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, at)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if allowed, else the seconds until one is back."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait

    def check(self, key: str) -> None:
        wait = self.acquire(key)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise ApiError(429, f"rate limit of {int(self.capacity)} requests per minute exceeded; "
                                f"retry in {retry} s", {"Retry-After": str(retry)})


def client_key(request: Request) -> str:
    """The rate-limit key of a request: the connection's peer address."""
    return request.client.host if request.client else "unknown"


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "-"


class RequestContext:
    """Pure ASGI middleware: request id in and out, bound to logs; escaped errors → 500 JSON.

    Pure ASGI (not ``BaseHTTPMiddleware``) so it costs little per request and does not
    buffer bodies.
    """

    def __init__(self, app: ASGIApp, echo: bool = True):
        self.app = app
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                      if k == b"x-request-id"), None)
        if not self.echo and given:
            rid = given[:128]  # the proxy's id, echoed by the proxy: use it as it is
        else:
            rid = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.echo:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                    headers.append((b"x-request-id", rid.encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("request failed", method=scope.get("method"), path=scope.get("path"))
                if started:
                    raise  # the response is under way; nothing sane can be sent any more
                body = json.dumps({"error": "internal error; the server log has the details",
                                   "request_id": rid}).encode()
                await send_with_id({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(body)).encode())]})
                await send_with_id({"type": "http.response.body", "body": body})
