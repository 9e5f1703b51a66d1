"""Regional indoor-temperature policy as data (domain.md C1, R1–R10, R19, R22, R41).

Every threshold, statistic, tier table and season date lives in ``analytics/policies.yaml``; this
module validates that file at load (a bad entry is an error naming the entry and the key) and
resolves the entry in force for a region on a local day. Nothing here touches the database;
``mirror_policies`` in analytics/store.py copies the table into ``region_policy`` for SQL users.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal

import yaml

log = logging.getLogger(__name__)

POLICY_FILE = Path(__file__).with_name("policies.yaml")
FALLBACK_REGION = "national"

Statistic = Literal["mean", "min_hourly_mean", "percentile"]
_STATISTICS = ("mean", "min_hourly_mean", "percentile")
_REFUND_BASES = ("total", "total_minus_base", "metered_part")
_AREA_RULES = ("household", "room")


class PolicyError(ValueError):
    """The policy file is invalid, or no policy covers a (region, day)."""


@dataclass(frozen=True)
class RefundTier:
    """One row of a refund tier table (R22).

    ``mode='absolute'``: x is the day's statistic T (℃). ``mode='shortfall'``: x = threshold − T (K).
    ``closed='left'``: lower ≤ x < upper (the usual "16 ≤ T < 18" wording);
    ``closed='right'``: lower < x ≤ upper (Tianjin's "0 < d ≤ 2"). ``None`` bounds are unbounded.
    """

    lower_incl: float | None
    upper_excl: float | None
    mode: Literal["absolute", "shortfall"]
    ratio: float
    closed: Literal["left", "right"] = "left"

    def contains(self, x: float) -> bool:
        lo = -float("inf") if self.lower_incl is None else self.lower_incl
        hi = float("inf") if self.upper_excl is None else self.upper_excl
        if self.closed == "left":
            return lo <= x < hi
        return lo < x <= hi


@dataclass(frozen=True)
class Season:
    """Statutory season as month-day pairs (R41); end may fall in the next calendar year."""

    start_md: tuple[int, int]
    end_md: tuple[int, int]

    def bounds(self, season_year: int) -> tuple[dt.date, dt.date]:
        """Statutory (start, end) of the season that starts in ``season_year`` (inclusive days)."""
        start = dt.date(season_year, *self.start_md)
        end_year = season_year + 1 if self.end_md < self.start_md else season_year
        return start, dt.date(end_year, *self.end_md)

    def season_of(self, day: dt.date) -> tuple[dt.date, dt.date] | None:
        """The statutory season containing ``day``, or None when the day is outside every season."""
        for year in (day.year - 1, day.year):
            s, e = self.bounds(year)
            if s <= day <= e:
                return s, e
        return None

    def statutory_days(self, season_year: int) -> int:
        s, e = self.bounds(season_year)
        return (e - s).days + 1


@dataclass(frozen=True)
class Policy:
    """The rules in force for one region over [effective_from, effective_to] (inclusive local days)."""

    code: str
    version: int
    name: str
    effective_from: dt.date
    effective_to: dt.date | None
    rules: tuple[str, ...]
    threshold_c: float
    floor_c: float | None = None
    statistic: Statistic = "mean"
    percentile: float | None = None
    exclude_window: tuple[dt.time, dt.time] | None = None
    min_coverage: float = 0.75
    tolerance_c: float = 0.0
    expected_interval_s: float = 1200.0
    gap_cutoff_s: float = 2400.0
    min_hour_coverage: float = 0.5
    refund_tiers: tuple[RefundTier, ...] = ()
    refund_base: str = "total"
    area_rule: str = "household"
    iot_counts_for_refund: bool = False
    metered_exempt: bool = True
    trigger_hours: float = 0.0
    season: Season = field(default_factory=lambda: Season((11, 15), (3, 15)))
    refund_deadline_md: tuple[int, int] | None = None

    @property
    def compare_c(self) -> float:
        """The temperature compliance is judged against: the legacy floor when set (R3), else the threshold."""
        return self.threshold_c if self.floor_c is None else self.floor_c

    @property
    def exclude_window_s(self) -> tuple[float, float] | None:
        """Excluded window as seconds after local midnight, [start, end)."""
        if self.exclude_window is None:
            return None
        a, b = self.exclude_window
        return (a.hour * 3600 + a.minute * 60 + a.second, b.hour * 3600 + b.minute * 60 + b.second)

    def covers(self, day: dt.date) -> bool:
        return self.effective_from <= day and (self.effective_to is None or day <= self.effective_to)

    def refund_ratio(self, stat_c: float) -> float:
        """Tier ratio for a non-compliant day's statistic (℃, already at 0.1 ℃ resolution); 0 if no tier."""
        for tier in self.refund_tiers:
            x = stat_c if tier.mode == "absolute" else self.compare_c - stat_c
            if tier.contains(x):
                return tier.ratio
        return 0.0

    def refund_deadline(self, season_year: int) -> dt.date | None:
        """R23: date refunds for the season starting in ``season_year`` must be paid by."""
        if self.refund_deadline_md is None:
            return None
        _, end = self.season.bounds(season_year)
        d = dt.date(end.year, *self.refund_deadline_md)
        return d if d >= end else dt.date(end.year + 1, *self.refund_deadline_md)

    def citation(self) -> str:
        """Human citation for evidence packs: name, version and the domain.md rule numbers."""
        return f"{self.name} (policy {self.code} v{self.version}; domain.md {', '.join(self.rules)})"

    def to_dict(self) -> dict:
        return {
            "code": self.code, "version": self.version, "name": self.name,
            "effective_from": self.effective_from.isoformat(),
            "effective_to": self.effective_to.isoformat() if self.effective_to else None,
            "rules": list(self.rules), "threshold_c": self.threshold_c, "floor_c": self.floor_c,
            "compare_c": self.compare_c, "statistic": self.statistic, "percentile": self.percentile,
            "exclude_window": [t.strftime("%H:%M") for t in self.exclude_window] if self.exclude_window else None,
            "min_coverage": self.min_coverage, "tolerance_c": self.tolerance_c,
            "expected_interval_s": self.expected_interval_s, "gap_cutoff_s": self.gap_cutoff_s,
            "refund_tiers": [t.__dict__ for t in self.refund_tiers], "refund_base": self.refund_base,
            "area_rule": self.area_rule, "iot_counts_for_refund": self.iot_counts_for_refund,
            "metered_exempt": self.metered_exempt,
            "trigger_hours": self.trigger_hours,
            "season": {"start": "%02d-%02d" % self.season.start_md, "end": "%02d-%02d" % self.season.end_md},
            "refund_deadline": "%02d-%02d" % self.refund_deadline_md if self.refund_deadline_md else None,
        }


def _md(text: str, where: str) -> tuple[int, int]:
    try:
        m, d = (int(p) for p in str(text).split("-"))
        dt.date(2000, m, d)
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"{where}: expected MM-DD, got {text!r}") from exc
    return m, d


def _date(value, where: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise PolicyError(f"{where}: expected YYYY-MM-DD, got {value!r}") from exc


def _parse(entry: dict, idx: int) -> Policy:
    where = f"policies[{idx}] ({entry.get('code', '?')} v{entry.get('version', '?')})"
    known = {f for f in Policy.__dataclass_fields__} | {"season", "refund_deadline", "exclude_window"}
    unknown = set(entry) - known
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("code", "version", "name", "effective_from", "threshold_c"):
        if key not in entry:
            raise PolicyError(f"{where}: missing key {key!r}")
    stat = entry.get("statistic", "mean")
    if stat not in _STATISTICS:
        raise PolicyError(f"{where}: statistic must be one of {_STATISTICS}, got {stat!r}")
    pct = entry.get("percentile")
    if stat == "percentile" and (pct is None or not 0 <= float(pct) <= 100):
        raise PolicyError(f"{where}: statistic percentile needs percentile in 0..100")
    tiers = []
    for j, t in enumerate(entry.get("refund_tiers") or []):
        tw = f"{where}.refund_tiers[{j}]"
        if t.get("mode") not in ("absolute", "shortfall"):
            raise PolicyError(f"{tw}: mode must be absolute or shortfall")
        if t.get("closed", "left") not in ("left", "right"):
            raise PolicyError(f"{tw}: closed must be left or right")
        ratio = float(t["ratio"])
        if not 0 <= ratio <= 1:
            raise PolicyError(f"{tw}: ratio {ratio} outside 0..1")
        lo, hi = t.get("lower_incl"), t.get("upper_excl")
        if lo is not None and hi is not None and float(lo) >= float(hi):
            raise PolicyError(f"{tw}: lower {lo} ≥ upper {hi}")
        tiers.append(RefundTier(None if lo is None else float(lo), None if hi is None else float(hi),
                                t["mode"], ratio, t.get("closed", "left")))
    window = entry.get("exclude_window")
    if window is not None:
        try:
            a, b = (dt.time.fromisoformat(str(x)) for x in window)
        except (ValueError, TypeError) as exc:
            raise PolicyError(f"{where}: exclude_window must be [HH:MM, HH:MM]") from exc
        if not a < b:
            raise PolicyError(f"{where}: exclude_window start must precede end")
        window = (a, b)
    season = entry.get("season") or {"start": "11-15", "end": "03-15"}
    pol = Policy(
        code=str(entry["code"]), version=int(entry["version"]), name=str(entry["name"]),
        effective_from=_date(entry["effective_from"], where), effective_to=_date(entry.get("effective_to"), where),
        rules=tuple(entry.get("rules") or ()), threshold_c=float(entry["threshold_c"]),
        floor_c=None if entry.get("floor_c") is None else float(entry["floor_c"]),
        statistic=stat, percentile=None if pct is None else float(pct), exclude_window=window,
        min_coverage=float(entry.get("min_coverage", 0.75)), tolerance_c=float(entry.get("tolerance_c", 0.0)),
        expected_interval_s=float(entry.get("expected_interval_s", 1200)),
        gap_cutoff_s=float(entry.get("gap_cutoff_s", 2 * float(entry.get("expected_interval_s", 1200)))),
        min_hour_coverage=float(entry.get("min_hour_coverage", 0.5)),
        refund_tiers=tuple(tiers), refund_base=entry.get("refund_base", "total"),
        area_rule=entry.get("area_rule", "household"),
        iot_counts_for_refund=bool(entry.get("iot_counts_for_refund", False)),
        metered_exempt=bool(entry.get("metered_exempt", True)),
        trigger_hours=float(entry.get("trigger_hours", 0)),
        season=Season(_md(season["start"], where + ".season.start"), _md(season["end"], where + ".season.end")),
        refund_deadline_md=_md(entry["refund_deadline"], where) if entry.get("refund_deadline") else None,
    )
    if not 0 < pol.min_coverage <= 1:
        raise PolicyError(f"{where}: min_coverage must be in (0, 1]")
    if pol.gap_cutoff_s <= 0:
        raise PolicyError(f"{where}: gap_cutoff_s must be > 0")
    if pol.refund_base not in _REFUND_BASES:
        raise PolicyError(f"{where}: refund_base must be one of {_REFUND_BASES}")
    if pol.area_rule not in _AREA_RULES:
        raise PolicyError(f"{where}: area_rule must be one of {_AREA_RULES}")
    if pol.effective_to is not None and pol.effective_to < pol.effective_from:
        raise PolicyError(f"{where}: effective_to before effective_from")
    return pol


class PolicyTable:
    """All policies, indexed by region code; versions of one region must not overlap."""

    def __init__(self, policies: Iterable[Policy], digest: str = ""):
        self.by_region: dict[str, list[Policy]] = {}
        for p in policies:
            self.by_region.setdefault(p.code, []).append(p)
        for code, ps in self.by_region.items():
            ps.sort(key=lambda p: p.effective_from)
            for a, b in zip(ps, ps[1:]):
                if a.effective_to is None or a.effective_to >= b.effective_from:
                    raise PolicyError(f"policy {code}: v{a.version} and v{b.version} overlap")
                if a.version == b.version:
                    raise PolicyError(f"policy {code}: duplicate version {a.version}")
        if FALLBACK_REGION not in self.by_region:
            raise PolicyError(f"policy table has no {FALLBACK_REGION!r} fallback entry")
        self.digest = digest
        self._warned: set[str] = set()

    @classmethod
    def from_yaml_text(cls, text: str) -> "PolicyTable":
        data = yaml.safe_load(text) or {}
        entries = data.get("policies")
        if not isinstance(entries, list):
            raise PolicyError("policy file: top-level key 'policies' must be a list")
        return cls((_parse(e, i) for i, e in enumerate(entries)),
                   digest=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])

    @classmethod
    def load(cls, path: Path = POLICY_FILE) -> "PolicyTable":
        return cls.from_yaml_text(Path(path).read_text(encoding="utf-8"))

    def regions(self) -> list[str]:
        return sorted(self.by_region)

    def all(self) -> list[Policy]:
        return [p for ps in self.by_region.values() for p in ps]

    def resolve(self, region_code: str | None, day: dt.date) -> Policy:
        """The policy of ``region_code`` in force on local ``day``.

        An unknown region falls back to ``national`` (R1), logged once per region: it has no refund
        tiers, so the fallback can record non-compliance but never invent money.
        """
        region = region_code or FALLBACK_REGION
        versions = self.by_region.get(region)
        if versions is None:
            if region not in self._warned:
                log.warning("no policy for region %r; using %r (R1)", region, FALLBACK_REGION)
                self._warned.add(region)
            versions = self.by_region[FALLBACK_REGION]
        for p in versions:
            if p.covers(day):
                return p
        raise PolicyError(f"no policy of region {region!r} is in force on {day.isoformat()}")

    def get(self, code: str, version: int) -> Policy:
        for p in self.by_region.get(code, []):
            if p.version == version:
                return p
        raise PolicyError(f"unknown policy {code} v{version}")


@lru_cache(maxsize=1)
def default_table() -> PolicyTable:
    """The shipped policy table (analytics/policies.yaml), loaded and validated once."""
    return PolicyTable.load()


def resolve_policy(region_code: str | None, day: dt.date, table: PolicyTable | None = None) -> Policy:
    """Policy in force for a household of ``region_code`` (company.region_code) on local ``day``."""
    return (table or default_table()).resolve(region_code, day)


__all__ = ["Policy", "PolicyTable", "PolicyError", "RefundTier", "Season", "resolve_policy", "default_table",
           "POLICY_FILE"]
