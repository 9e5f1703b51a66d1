"""RFC 9457 problem details (``application/problem+json``) for every error, in zh-CN or English.

Routers raise ``ApiError(status, code, **params)`` (a code from ``api.i18n.MESSAGES``) or a plain
``HTTPException``; both become::

    {"type": "https://heatdesk.dev/problems/household_not_found", "title": "未找到该用户（户）",
     "status": 404, "detail": "...", "instance": "/households/9", "code": "household_not_found",
     "request_id": "..."}

Validation errors (422) add ``errors`` (field paths and messages). Unexpected exceptions are
logged with a traceback and answered with a 500 problem that reveals nothing internal.
"""
from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from api.i18n import MESSAGES, STATUS_CODES, negotiate, t

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://heatdesk.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """The body of every error answer (declared in the OpenAPI schema as ``PROBLEM_RESPONSES``)."""

    model_config = ConfigDict(extra="allow")  # RFC 9457 extension members, e.g. ``allowed``

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    request_id: str | None = None
    #: validation errors only: ``{"loc": [...], "msg": ..., "type": ...}`` per field
    errors: list[dict] | None = None


#: Declared on every router (api.app._load_routers): any route may answer a 4xx (401, 403, 404, 409, 422,
#: 429 …) or a 5xx (503 when the database is unavailable) as a problem. Replaces FastAPI's default 422
#: declaration (``HTTPValidationError`` as application/json), which is not what the app sends.
PROBLEM_RESPONSES: dict = {
    status: {"description": description,
             "content": {PROBLEM_MEDIA_TYPE: {"schema": Problem.model_json_schema()}}}
    for status, description in (("4XX", "Client error: RFC 9457 problem details"),
                                ("5XX", "Server error: RFC 9457 problem details"))
}


class ApiError(HTTPException):
    """An HTTP error with a catalogue code, so the message can be given in the caller's language."""

    def __init__(self, status_code: int, code: str, detail: str | None = None, *,
                 headers: dict[str, str] | None = None, **params):
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.explicit_detail = detail
        self.code = code
        self.params = params


def problem_response(request: Request, status: int, code: str, detail: str | None = None,
                     extra: dict | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    lang = negotiate(request)
    body = {
        "type": PROBLEM_BASE + code,
        "title": t(code, lang),
        "status": status,
        "detail": detail if detail is not None else t(code, lang),
        "instance": request.url.path,
        "code": code,
        "request_id": getattr(request.state, "request_id", None),
    }
    if extra:
        body.update(extra)
    resp = JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)
    resp.headers["Content-Language"] = "zh-CN" if lang == "zh" else "en"
    if body["request_id"] and status >= 500:
        # 5xx answers are produced outside the request-id middleware: keep the id for support calls
        resp.headers["X-Request-ID"] = body["request_id"]
    return resp


_RESERVED = {"type", "title", "status", "detail", "instance", "code", "request_id"}


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None))) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v))


async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    lang = negotiate(request)
    extra = None
    if isinstance(exc, ApiError):
        code = exc.code
        detail = exc.explicit_detail if exc.explicit_detail else t(code, lang, **exc.params)
        # RFC 9457 extension members: e.g. {"allowed": [...]} for a refused workflow action
        extra = {k: v for k, v in exc.params.items() if k not in _RESERVED and _jsonable(v)} or None
    else:
        code = STATUS_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        # A plain HTTPException's detail is whatever the router wrote (often English); keep it as detail.
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else t(code, lang)
        if isinstance(exc.detail, str) and exc.detail in MESSAGES:
            code, detail = exc.detail, t(exc.detail, lang)
    headers = getattr(exc, "headers", None)
    return problem_response(request, exc.status_code, code, detail, extra=extra, headers=headers)


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    lang = negotiate(request)
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    where = "; ".join(".".join(e["loc"]) + ": " + e["msg"] for e in errors[:5])
    return problem_response(request, 422, "validation_error", f"{t('validation_error', lang)}: {where}",
                            extra={"errors": errors})


async def _pool_timeout(request: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable: %s", exc)
    return problem_response(request, 503, "service_unavailable", headers={"Retry-After": "5"})


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # SQLSTATE class 22 (data exception): a value the database cannot hold, e.g. a NUL byte in text.
    log.warning("data error on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(request, 422, "bad_request", "invalid value")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path,
                  extra={"request_id": getattr(request.state, "request_id", None)})
    return problem_response(request, 500, "internal_error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(PoolTimeout, _pool_timeout)
    app.add_exception_handler(psycopg.OperationalError, _pool_timeout)
    app.add_exception_handler(psycopg.DataError, _data_error)
    app.add_exception_handler(Exception, _unexpected)
