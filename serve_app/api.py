"""The control plane's HTTP API (FastAPI): routes, request bodies, error rendering.

:func:`create_api` builds the app around a :class:`serve_app.control.Control` (or anything
with its methods); :class:`serve_app.app.ControlPlane` calls it once per Serve replica, and
``python -m serve_app.openapi`` calls it without a backend to write the committed spec.

Routes (every ``/v1`` route needs the bearer token and is rate limited; see
:mod:`serve_app.security`):

======  =====================================  ==============================================
GET     /healthz                               liveness: the replica answers (no peers)
GET     /readyz                                readiness: every component checked; 503 names
                                               the failed ones
GET     /                                      the status page (HTML + JS polling /v1)
GET     /v1/pipelines                          the pipeline this app serves, with sync state
GET     /v1/pipelines/{name}/status            per table and partition: offset, lag, last
                                               write applied, events/s, dead letters, worker
POST    /v1/pipelines/{name}/pause|resume      whole pipeline, or ``{"table": "ks.t"}``
POST    /v1/snapshots, /v1/reconciliations     submit a Ray job; 202 with the run id
GET     /v1/snapshots/{id}, /reconciliations/  state, progress and report
GET     /v1/runs                               recent runs (both kinds) for the status page
GET     /v1/dead-letters[/{id}]                list (newest first) / one with its raw record
POST    /v1/dead-letters/replay                replay through sync's path
======  =====================================  ==============================================

Errors are JSON ``{"error": ..., "request_id": ...}``; a 422 also lists ``problems``, each
naming the field (``body.table``, ``query.limit``).
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations at runtime,
# and they refer to names local to create_api (the bearer dependency).

import uuid
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.control import Rendered
from serve_app.security import ApiError, BearerAuth, RateLimiter, RequestContext, client_key, request_id_of

API_VERSION = "1.0.0"

TableName = Annotated[str, Field(pattern=r"^[^.\s]+\.[^.\s]+$", max_length=200,
                                 description="KEYSPACE.TABLE, one of the pipeline's tables",
                                 examples=["demo.users"])]
PipelineName = Annotated[str, Path(pattern=r"^[a-z0-9_-]+$", max_length=100, description="pipeline.name")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PauseRequest(_Body):
    """Pause or resume one table; without a body (or ``table: null``) the whole pipeline."""

    table: TableName | None = None


class SnapshotRequest(_Body):
    table: TableName
    splits: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="token-range splits (default: by table size)")


class ReconcileRequest(_Body):
    table: TableName
    splits: Annotated[int, Field(ge=1, le=100_000)] | None = None
    repair: bool = Field(False, description="rewrite the differences through the sync merge")


class ReplayRequest(_Body):
    ids: Annotated[list[Annotated[int, Field(ge=1)]], Field(max_length=10_000)] | None = Field(
        None, description="dead-letter ids; null replays every unreplayed one of the pipeline")


class Submitted(BaseModel):
    id: str
    kind: Literal["snapshot", "reconcile"]
    job_id: str
    table: str
    state: str
    href: str


class ErrorBody(BaseModel):
    error: str
    request_id: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    429: {"model": ErrorBody, "description": "rate limit exceeded; see Retry-After"},
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"model": ErrorBody,
                                                       "description": "a component did not answer"}}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such resource"}}


def create_api(control: Any, *, token: str, rate_limit_per_minute: int, behind_serve: bool = False) -> FastAPI:
    """The FastAPI app over ``control`` (see the module docstring for the routes).

    ``behind_serve``: Ray Serve's proxy already handles ``X-Request-ID`` (accepts or
    creates it, and returns it); the app then only binds it to its logs and error bodies.
    """
    # root_path_in_servers=False: under a Serve route prefix the served spec stays the
    # committed one (links in answers carry the prefix instead, see _root).
    app = FastAPI(title="c2pg control plane", version=API_VERSION, root_path_in_servers=False,
                  description="Health, sync status and control, snapshot and reconcile runs, dead letters "
                              "of one c2pg pipeline. Every /v1 route needs `Authorization: Bearer <api.token>`.",
                  docs_url="/docs", redoc_url=None)
    auth = BearerAuth(token)
    limiter = RateLimiter(rate_limit_per_minute)
    bearer = HTTPBearer(auto_error=False, description="api.token of the pipeline file")

    # async: a few microseconds of work, so it runs on the event loop rather than a thread.
    async def guard(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        limiter.check(client_key(request))
        auth.check(f"{credentials.scheme} {credentials.credentials}" if credentials else None)

    _errors(app)
    app.add_middleware(RequestContext, echo=not behind_serve)
    page = resources.files("serve_app").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def status_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    # async: on the event loop, never queued behind the thread pool (which a hung backend may fill).
    @app.get("/healthz", tags=["health"], summary="Liveness: the replica answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"], summary="Readiness: a real check of every component",
             responses={503: {"description": "a required component is down; `failed` names it"}})
    async def readyz(request: Request) -> Response:
        # Answered on the event loop from the cache, as rendered by its refresh; only a cold
        # cache waits for the checks, in a worker thread.
        result = control.readiness_cached() or await run_in_threadpool(control.readiness)
        return _json(result, request, status_code=None if isinstance(result, Rendered)
                     else 200 if result["ready"] else 503)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(guard)], responses=_ERRORS)

    @v1.get("/pipelines", tags=["sync"], summary="The pipeline this app serves")
    def pipelines(request: Request) -> list[dict[str, Any]]:
        st = control.status(control.cfg.name)
        return [{"name": control.cfg.name, "tables": [t["table"] for t in st["tables"]],
                 "sync": st["sync"]["state"],
                 "lag": sum(t["lag"] or 0 for t in st["tables"]),
                 "href": f"{_root(request)}/v1/pipelines/{control.cfg.name}/status"}]

    @v1.get("/pipelines/{name}/status", tags=["sync"], responses=_NOT_FOUND, response_model=dict[str, Any],
            summary="Per table and partition: offset, lag, last write applied, events/s, dead letters, worker")
    async def pipeline_status(name: PipelineName, request: Request) -> Response:
        result = control.status_cached(name) or await run_in_threadpool(control.status, name)
        return _json(result, request)

    @v1.post("/pipelines/{name}/pause", tags=["sync"], responses={**_NOT_FOUND, **_UNAVAILABLE,
                                                                  409: {"model": ErrorBody}},
             summary="Stop applying (offsets stay; events wait in Kafka)")
    def pause(name: PipelineName, body: Annotated[PauseRequest | None, Body()] = None) -> dict[str, Any]:
        return control.pause(name, body.table if body else None)

    @v1.post("/pipelines/{name}/resume", tags=["sync"], responses={**_NOT_FOUND, **_UNAVAILABLE,
                                                                   409: {"model": ErrorBody}},
             summary="Apply again, from the committed offsets")
    def resume(name: PipelineName, body: Annotated[PauseRequest | None, Body()] = None) -> dict[str, Any]:
        return control.pause(name, body.table if body else None, resume=True)

    @v1.post("/snapshots", tags=["runs"], status_code=202, responses=_UNAVAILABLE,
             summary="Start a snapshot of a table (a Ray job); answers with the run id")
    def start_snapshot(body: SnapshotRequest, request: Request) -> Submitted:
        sub = control.submit("snapshot", body.table, splits=body.splits)
        return Submitted(**{**sub, "href": _root(request) + sub["href"]})

    @v1.get("/snapshots/{run_id}", tags=["runs"], responses={**_NOT_FOUND, **_UNAVAILABLE},
            summary="A snapshot run: state, progress (splits done/total), report")
    def get_snapshot(run_id: uuid.UUID) -> dict[str, Any]:
        return control.run("snapshot", str(run_id))

    @v1.post("/reconciliations", tags=["runs"], status_code=202, responses=_UNAVAILABLE,
             summary="Start a reconcile of a table (a Ray job); answers with the run id")
    def start_reconcile(body: ReconcileRequest, request: Request) -> Submitted:
        sub = control.submit("reconcile", body.table, splits=body.splits, repair=body.repair)
        return Submitted(**{**sub, "href": _root(request) + sub["href"]})

    @v1.get("/reconciliations/{run_id}", tags=["runs"], responses={**_NOT_FOUND, **_UNAVAILABLE},
            summary="A reconcile run: state, progress, report, drift by kind, first differences")
    def get_reconcile(run_id: uuid.UUID) -> dict[str, Any]:
        return control.run("reconcile", str(run_id))

    @v1.get("/runs", tags=["runs"], responses=_UNAVAILABLE, summary="Recent runs, newest first")
    def recent_runs(kind: Annotated[Literal["snapshot", "reconcile"] | None, Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 20) -> list[dict[str, Any]]:
        return control.recent_runs(kind, limit)

    @v1.get("/dead-letters", tags=["dead letters"], responses=_UNAVAILABLE,
            summary="Dead letters of the pipeline, newest first (without raw records)")
    def dead_letters(table: Annotated[str | None, Query(pattern=r"^[^.\s]+\.[^.\s]+$", max_length=200)] = None,
                     origin: Annotated[Literal["sync", "snapshot"] | None, Query()] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                     include_replayed: bool = False) -> list[dict[str, Any]]:
        return control.dead_letters(origin=origin, table=table, limit=limit, include_replayed=include_replayed)

    @v1.get("/dead-letters/{id}", tags=["dead letters"], responses={**_NOT_FOUND, **_UNAVAILABLE},
            summary="One dead letter with its raw key and value")
    def dead_letter(id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> dict[str, Any]:
        return control.dead_letter(id)

    @v1.post("/dead-letters/replay", tags=["dead letters"], responses=_UNAVAILABLE,
             summary="Replay sync dead letters through sync's own path (per-cell LWW)")
    def replay(body: ReplayRequest) -> dict[str, Any]:
        return control.replay(body.ids)

    app.include_router(v1)
    return app


def _json(result: Any, request: Request, status_code: int | None = None) -> Response:
    """``result`` as JSON: a :class:`~serve_app.control.Rendered` as the bytes its refresh
    made (gzipped when the client accepts it), so a request costs the same whatever the
    answer's size; anything else serialized now."""
    if not isinstance(result, Rendered):
        return JSONResponse(result, status_code=status_code or 200)
    headers = {"Vary": "Accept-Encoding"}
    body = result.body
    if result.gzipped and "gzip" in request.headers.get("accept-encoding", ""):
        body = result.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status_code or result.status, media_type="application/json", headers=headers)


def _root(request: Request) -> str:
    """The route prefix the app is mounted under (Serve's ``route_prefix``; "" at ``/``)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _errors(app: FastAPI) -> None:
    """Every error as ``{"error", "request_id"}`` JSON; never a traceback."""

    @app.exception_handler(ApiError)
    def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "request_id": request_id_of(request)},
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "invalid")}
                    for e in exc.errors()]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return JSONResponse({"error": f"invalid request: {summary}", "problems": problems,
                             "request_id": request_id_of(request)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "request_id": request_id_of(request)},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))
