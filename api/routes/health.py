"""Liveness, readiness and Prometheus metrics (no authentication: no data is exposed here)."""
from __future__ import annotations

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from psycopg_pool import PoolTimeout

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable, schema applied, every router loaded",
            responses={503: {"description": "Not ready: the same body with status not_ready (not a problem)",
                             "content": {"application/json": {"schema": {"type": "object"}}}}})
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    body: dict = {"status": "ok", "database": "ok", "routers": state.routers, "router_errors": state.router_errors,
                  "field_key": state.cipher is not None}
    ok = not state.router_errors
    try:
        pool = state.pool
        if pool is None:
            raise PoolTimeout("pool not open")
        with pool.connection(timeout=2.0) as conn:
            body["schema_version"] = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    except (PoolTimeout, psycopg.Error) as exc:
        body["database"] = f"unavailable: {type(exc).__name__}"
        ok = False
    if not ok:
        body["status"] = "not_ready"
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics: request latency, ingest rates, rejects, backlog",
            response_class=Response,
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> Response:
    data, content_type = request.app.state.metrics.render()
    return Response(data, media_type=content_type)
