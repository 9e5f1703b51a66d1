"""Substation dashboard (换热站): ΔT, heat power (R47), supply vs heating curve, R48 alarms, compliance (R20)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request

from analytics.evidence import choose_bucket
from analytics.substation import heat_power_kw, substation_kpis, substation_series
from api.auth import User
from api.deps import Conn, bounded_range, cached_json, require_scopes, require_substation_access

router = APIRouter(tags=["substations"])

Engineer = Annotated[User, Depends(require_scopes("substations:read"))]


@router.get("/substations/{substation_id}/kpis",
            summary="Latest ΔT, heat power, supply vs heating curve, R48 alarms, served-household compliance rate")
def kpis(substation_id: int, conn: Conn, user: Engineer,
         window_h: Annotated[float, Query(gt=0, le=72, description="hours for the heuristics")] = 6.0) -> dict:
    require_substation_access(conn, user, substation_id)
    return substation_kpis(conn, substation_id, now=datetime.now(timezone.utc), window_h=window_h)


@router.get("/substations/{substation_id}/series",
            summary="Bucketed series of the substation's points (null where no good sample), ≤ 92 days")
def series(request: Request, substation_id: int, conn: Conn, user: Engineer,
           start: Annotated[datetime | None, Query(alias="from")] = None,
           end: Annotated[datetime | None, Query(alias="to")] = None,
           bucket: Annotated[int | None, Query(ge=300, le=86400, description="bucket width in s")] = None):
    require_substation_access(conn, user, substation_id)
    rng = bounded_range(start, end, max_days=92)
    b = bucket or choose_bucket(rng.end - rng.start)
    times, s = substation_series(conn, substation_id, rng.start, rng.end, b)
    if "supply_temp_2" in s and "return_temp_2" in s:
        s["delta_t_2"] = s["supply_temp_2"] - s["return_temp_2"]
        if "flow_2" in s:
            s["heat_power_calc_kw"] = heat_power_kw(s["flow_2"], s["supply_temp_2"], s["return_temp_2"])
    data = {"substation_id": substation_id, "bucket_s": b, "times": [t.isoformat() for t in times],
            "series": {k: [None if not np.isfinite(x) else round(float(x), 4) for x in v] for k, v in s.items()}}
    return cached_json(request, data, max_age=60)
