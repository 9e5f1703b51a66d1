"""Import official daily outdoor means (气象局日平均气温) into ``weather_daily``.

R6: a day whose official daily mean is below the station's design outdoor temperature
(供暖室外计算温度, GB 50736-2012 Annex A; Tianjin −7.0 ℃) is exempt from compliance, and the
official value, not our own sensor's, decides. So this importer writes ``source = 'official'`` and
overwrites an earlier value for the same day (the bureau publishes corrections).

CSV columns (UTF-8, header row): ``station_code, day, mean_c`` and optionally ``station_name,
design_outdoor_temp_c`` (both needed the first time a station appears; they upsert ``weather_station``).
``day`` is ISO ``YYYY-MM-DD`` (a local day). Bad rows are reported with line and column; the rest is
imported.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import psycopg

from ingest.households import RowError

log = logging.getLogger(__name__)

REQUIRED = ("station_code", "day", "mean_c")


@dataclass
class WeatherImportSummary:
    rows: int = 0
    days_written: int = 0
    days_unchanged: int = 0
    stations: list[str] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def __str__(self) -> str:
        text = (f"{self.days_written} days written, {self.days_unchanged} unchanged of {self.rows} rows "
                f"(stations {', '.join(self.stations) or 'none'}); rejected rows {len(self.errors)}")
        if self.errors:
            text += " — " + "; ".join(str(e) for e in self.errors[:10])
        return text


def import_weather(conn: psycopg.Connection, csv_path: str | Path) -> WeatherImportSummary:
    summary = WeatherImportSummary()
    path = Path(csv_path)
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            summary.errors.append(RowError(1, missing[0], f"required column(s) missing: {', '.join(missing)}"))
            return summary
        rows: list[tuple[int, str, date, float, str | None, float | None]] = []
        for row in reader:
            summary.rows += 1
            line = reader.line_num
            err = None
            code = (row.get("station_code") or "").strip()
            day_s = (row.get("day") or "").strip()
            mean_s = (row.get("mean_c") or "").strip()
            name = (row.get("station_name") or "").strip() or None
            design_s = (row.get("design_outdoor_temp_c") or "").strip()
            day = mean = design = None
            if not code:
                err = RowError(line, "station_code", "is empty")
            else:
                try:
                    day = date.fromisoformat(day_s)
                except ValueError:
                    err = RowError(line, "day", f"{day_s!r} is not a YYYY-MM-DD date")
            if err is None:
                try:
                    mean = float(mean_s)
                    if not (math.isfinite(mean) and -60 <= mean <= 50):
                        err = RowError(line, "mean_c", f"{mean_s} ℃ is outside −60…50")
                except ValueError:
                    err = RowError(line, "mean_c", f"{mean_s!r} is not a number")
            if err is None and design_s:
                try:
                    design = float(design_s)
                    if not -60 <= design <= 20:
                        err = RowError(line, "design_outdoor_temp_c", f"{design_s} ℃ is outside −60…20")
                except ValueError:
                    err = RowError(line, "design_outdoor_temp_c", f"{design_s!r} is not a number")
            if err:
                summary.errors.append(err)
                continue
            rows.append((line, code, day, mean, name, design))

    with conn.transaction():
        known: dict[str, bool] = {}
        for line, code, day, mean, name, design in rows:
            if code not in known:
                if name is not None and design is not None:
                    conn.execute("""INSERT INTO weather_station (code, name, design_outdoor_temp_c) VALUES (%s, %s, %s)
                                    ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name,
                                        design_outdoor_temp_c = EXCLUDED.design_outdoor_temp_c""",
                                 (code, name, design))
                known[code] = conn.execute("SELECT 1 FROM weather_station WHERE code = %s",
                                           (code,)).fetchone() is not None
                if known[code]:
                    summary.stations.append(code)
            if not known[code]:
                summary.errors.append(RowError(line, "station_code", f"station {code} is unknown; give station_name "
                                                                     f"and design_outdoor_temp_c (R6)"))
                continue
            cur = conn.execute("""INSERT INTO weather_daily (station_code, day, mean_c, source)
                                  VALUES (%s, %s, %s, 'official')
                                  ON CONFLICT (station_code, day) DO UPDATE SET mean_c = EXCLUDED.mean_c,
                                      source = 'official'
                                  WHERE (weather_daily.mean_c, weather_daily.source)
                                        IS DISTINCT FROM (EXCLUDED.mean_c, 'official')""", (code, day, mean))
            if cur.rowcount:
                summary.days_written += 1
            else:
                summary.days_unchanged += 1
    log.info("weather import %s: %s", path.name, summary)
    return summary
