"""Evidence curves and evidence packs of a household (室温证据曲线), and the cold-room diagnosis.

Gaps stay gaps (``null``), never interpolated; the PDF pack carries SHA-256 hashes of the samples and
the verdicts so a later recomputation proves the same result (analytics/evidence.py).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import Response

from analytics.diagnosis import diagnose_household
from analytics.evidence import (EvidenceError, SharedSeriesCache, build_pack, household_curve, render_curve,
                                verify_pack_hash)
from api.auth import User
from api.deps import Conn, bounded_range, cached_json, require_household_access, require_scopes
from api.errors import ApiError

router = APIRouter(tags=["curves"])

CurveReader = Annotated[User, Depends(require_scopes("curves:read"))]
MAX_CURVE_DAYS = 92

From = Annotated[datetime | None, Query(alias="from", description="ISO 8601; default end − 7 d")]
To = Annotated[datetime | None, Query(alias="to", description="ISO 8601; default now")]


def _lang(request: Request, lang: str | None) -> str | None:
    if lang:
        return lang
    return "en" if request.headers.get("accept-language", "").lower().startswith("en") else "zh"


#: How old the substation/outdoor series beside a household's own may be on a curve. Substation points
#: are sampled every minute or two and a week's curve has 30-min buckets, so 2 min costs the chart
#: nothing; at 30 s every substation's series was read again twice a minute, and those reads (≈ 14 ms
#: of database work each, measured) made ~4 % of curves under 50 agents slow — right where p95 falls.
SERIES_TTL_S = 120.0


def _series_cache(request: Request) -> SharedSeriesCache:
    """One per app: the substation/outdoor series shared by the households of a substation (≤ 2 min old)."""
    cache = getattr(request.app.state, "series_cache", None)
    if cache is None:
        cache = request.app.state.series_cache = SharedSeriesCache(ttl_s=SERIES_TTL_S)
    return cache


@router.get("/households/{household_id}/curve",
            summary="Room temperature curve: per room mean/min/max, outdoor, substation supply/return, verdicts",
            responses={200: {"description": "the curve as JSON, or the chart when format=png|svg",
                             "content": {"application/json": {}, "image/png": {}, "image/svg+xml": {}}}})
def curve(request: Request, household_id: int, conn: Conn, user: CurveReader, start: From = None, end: To = None,
          bucket: Annotated[int | None, Query(ge=300, le=86400, description="bucket width in s; default from the span")] = None,
          format: Annotated[Literal["json", "png", "svg"], Query(description="json (default), png or svg")] = "json",
          lang: Annotated[Literal["zh", "en"] | None, Query(description="chart labels")] = None):
    require_household_access(conn, user, household_id)
    rng = bounded_range(start, end, max_days=MAX_CURVE_DAYS)
    try:
        data = household_curve(conn, household_id, rng.start, rng.end, bucket_s=bucket,
                               shared=_series_cache(request))
    except EvidenceError as exc:
        raise ApiError(422, "validation_error", str(exc)) from exc
    if format == "json":
        return cached_json(request, data, max_age=60)
    media = "image/png" if format == "png" else "image/svg+xml"
    return Response(render_curve(data, format, _lang(request, lang)), media_type=media,
                    headers={"Cache-Control": "private, max-age=60"})


@router.get("/households/{household_id}/evidence.pdf", response_class=Response,
            summary="Evidence pack (PDF): curve, daily table, coverage, policy and rules cited, versions, SHA-256",
            responses={200: {"description": "the evidence pack", "content": {"application/pdf": {}}}})
def evidence_pack(request: Request, household_id: int, conn: Conn, user: CurveReader, start: From = None,
                  end: To = None, lang: Annotated[Literal["zh", "en"] | None, Query()] = None) -> Response:
    require_household_access(conn, user, household_id)
    rng = bounded_range(start, end, max_days=MAX_CURVE_DAYS)
    try:
        pdf, manifest = build_pack(conn, household_id, rng.start, rng.end, lang=_lang(request, lang))
    except EvidenceError as exc:
        raise ApiError(422, "validation_error", str(exc)) from exc
    name = f"evidence-{manifest['household_code']}-{manifest['day_from']}-{manifest['day_to']}.pdf"
    return Response(pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "private, no-store",
        "X-Evidence-Samples-SHA256": manifest["samples_sha256"], "X-Evidence-Result-SHA256": manifest["result_sha256"],
        "X-Evidence-Start": manifest["start"], "X-Evidence-End": manifest["end"]})


@router.post("/households/{household_id}/evidence/verify",
             summary="Recompute an evidence pack's hashes from the database: does it still prove the same result?")
def evidence_verify(household_id: int, conn: Conn, user: CurveReader,
                    manifest: Annotated[dict, Body(description="samples_sha256, result_sha256, start, end, timezone, n_samples, code_version")]) -> dict:
    require_household_access(conn, user, household_id)
    needed = {"samples_sha256", "result_sha256", "start", "end", "timezone", "n_samples", "code_version"}
    missing = sorted(needed - set(manifest))
    if missing:
        raise ApiError(422, "validation_error", f"manifest lacks {', '.join(missing)}")
    try:
        start = datetime.fromisoformat(manifest["start"])
        end = datetime.fromisoformat(manifest["end"])
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "validation_error", "start/end must be ISO 8601") from exc
    bounded_range(start, end, max_days=MAX_CURVE_DAYS)
    return verify_pack_hash(conn, {**manifest, "household_id": household_id})


@router.get("/households/{household_id}/diagnosis",
            summary="Cold room: substation, building or household? Reason codes, evidence numbers, zh/en text")
def diagnosis(household_id: int, conn: Conn, user: CurveReader,
              window_h: Annotated[float, Query(gt=0, le=168, description="hours looked back")] = 24.0) -> dict:
    if user.role == "customer":
        raise ApiError(403, "forbidden_role")       # compares with neighbours: staff only
    require_household_access(conn, user, household_id)
    return diagnose_household(conn, household_id, now=datetime.now(timezone.utc), window_h=window_h).as_dict()
