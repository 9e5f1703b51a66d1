"""Dunning policy as data: ladder, gate switches, tariffs, 违约金, instalments, cut-off guards.

Loaded from ``dunning/policy.yaml`` (defaults ← region ← company, deep-merged) and validated at load:
a bad value is an error naming the key. Nothing here touches the database.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import yaml

POLICY_FILE = Path(__file__).with_name("policy.yaml")
CHANNELS = ("sms", "wechat", "email", "letter", "console")
SEGMENTS = ("residential", "non_residential", "large")


class PolicyError(ValueError):
    """The dunning policy file is invalid."""


@dataclass(frozen=True)
class Step:
    step: str
    offset_days: int              # days relative to the due date (−15 = T−15)
    min_interval_days: int        # since the previous notice of any step
    channels: tuple[str, ...]
    template: str
    consequence: bool = False     # starts a legal clock (催缴通知书, R36): never for hardship
    requires_proof: bool = False  # delivery proof needed before it counts (R36/R39)
    staff_task: bool = False      # staff follow up by phone (R39 D+30)


@dataclass(frozen=True)
class Tariff:
    area_per_m2: Decimal          # 元/m² per season (R42)
    base_per_m2: Decimal          # 基本热费 元/m² (R43)
    per_kwh: Decimal              # 计量热费 元/kWh (R43)


@dataclass(frozen=True)
class DunningPolicy:
    code: str
    version: int
    service_phone: str
    payment_methods: str
    due_md: tuple[int, int]
    area_basis: str
    stopped_base_share: Decimal
    tariffs: dict[str, Tariff]
    send_weekdays: frozenset[int]
    send_start: dt.time
    send_end: dt.time
    ladder: tuple[Step, ...]
    hardship_template: str
    lookback_days: int
    min_non_compliant_days: int
    hold_on_unknown_with_complaint: bool
    extreme_cold_blocks_consequence: bool
    remind_stopped: bool
    late_fee_label: str
    late_fee_daily_rate: Decimal
    late_fee_cap_ratio: Decimal
    late_fee_grace_days: int
    instalment_min_parts: int
    instalment_max_parts: int
    instalment_min_first_ratio: Decimal
    instalment_grace_days: int
    instalment_reminder_lead_days: int          # remind this many days before each part falls due
    instalment_channels: tuple[str, ...]        # tried in order, first with an address (as a ladder step)
    instalment_due_template: str
    instalment_missed_template: str
    cutoff_min_days_after_formal: int
    contract_allows_offset: bool
    payout_days_after_season: int

    def due_date(self, season_year: int) -> dt.date:
        """R31: the due date of the season starting in `season_year` (July–June season years)."""
        m, d = self.due_md
        return dt.date(season_year if m >= 7 else season_year + 1, m, d)

    def step(self, name: str) -> Step:
        for s in self.ladder:
            if s.step == name:
                return s
        raise KeyError(name)

    def step_date(self, step: Step, season_year: int) -> dt.date:
        return self.due_date(season_year) + dt.timedelta(days=step.offset_days)


def season_year_of(day: dt.date) -> int:
    """Heating-season year: a season starting in autumn of Y is billed as 'Y-(Y+1)' until June."""
    return day.year if day.month >= 7 else day.year - 1


def season_label(season_year: int) -> str:
    return f"{season_year}-{season_year + 1}"


def season_year_from_label(label: str) -> int:
    try:
        a, b = label.split("-")
        if int(b) != int(a) + 1:
            raise ValueError
        return int(a)
    except ValueError:
        raise ValueError(f"bad season label {label!r}; expected like '2026-2027'") from None


def _merge(base: dict, over: dict | None) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _md(v, key: str) -> tuple[int, int]:
    try:
        m, d = (int(x) for x in str(v).split("-"))
        dt.date(2000, m, d)
        return m, d
    except ValueError:
        raise PolicyError(f"{key}: expected MM-DD, got {v!r}") from None


def _time(v, key: str) -> dt.time:
    try:
        return dt.time.fromisoformat(str(v))
    except ValueError:
        raise PolicyError(f"{key}: expected HH:MM, got {v!r}") from None


def _dec(v, key: str, lo: float = 0.0, hi: float | None = None) -> Decimal:
    try:
        x = Decimal(str(v))
    except ArithmeticError:
        raise PolicyError(f"{key}: not a number: {v!r}") from None
    if x < Decimal(str(lo)) or (hi is not None and x > Decimal(str(hi))):
        raise PolicyError(f"{key}: {v} outside [{lo}, {hi}]")
    return x


def _channels(v, key: str) -> tuple[str, ...]:
    chans = tuple(v or ())
    bad = [c for c in chans if c not in CHANNELS]
    if bad or not chans:
        raise PolicyError(f"{key}: unknown or empty {bad or chans}")
    return chans


def parse(data: dict) -> DunningPolicy:
    try:
        ladder = []
        for i, s in enumerate(data["ladder"]):
            chans = _channels(s["channels"], f"ladder[{i}].channels")
            ladder.append(Step(step=str(s["step"]), offset_days=int(s["offset_days"]),
                               min_interval_days=int(s.get("min_interval_days", 0)), channels=chans,
                               template=str(s["template"]), consequence=bool(s.get("consequence", False)),
                               requires_proof=bool(s.get("requires_proof", False)),
                               staff_task=bool(s.get("staff_task", False))))
        offsets = [s.offset_days for s in ladder]
        if offsets != sorted(offsets) or len({s.step for s in ladder}) != len(ladder):
            raise PolicyError("ladder: steps must have unique names and ascending offset_days")
        b, g, lf, ins = data["billing"], data["gate"], data["late_fee"], data["instalments"]
        tariffs = {}
        for seg in SEGMENTS:
            t = b["tariffs"][seg]
            tariffs[seg] = Tariff(_dec(t["area_per_m2"], f"billing.tariffs.{seg}.area_per_m2"),
                                  _dec(t["base_per_m2"], f"billing.tariffs.{seg}.base_per_m2"),
                                  _dec(t["per_kwh"], f"billing.tariffs.{seg}.per_kwh"))
        if b["area_basis"] not in ("building", "usable"):
            raise PolicyError("billing.area_basis: building | usable")
        sw = data["send_window"]
        wd = frozenset(int(x) for x in sw["weekdays"])
        if not wd or not wd <= set(range(1, 8)):
            raise PolicyError("send_window.weekdays: ISO weekdays 1..7")
        pol = DunningPolicy(
            code=str(data["code"]), version=int(data["version"]), service_phone=str(data["service_phone"]),
            payment_methods=str(data["payment_methods"]), due_md=_md(data["due_date"], "due_date"),
            area_basis=b["area_basis"], stopped_base_share=_dec(b["stopped_base_share"], "billing.stopped_base_share", 0, 1),
            tariffs=tariffs, send_weekdays=wd, send_start=_time(sw["start"], "send_window.start"),
            send_end=_time(sw["end"], "send_window.end"), ladder=tuple(ladder),
            hardship_template=str(data["hardship_template"]),
            lookback_days=int(g["lookback_days"]), min_non_compliant_days=int(g["min_non_compliant_days"]),
            hold_on_unknown_with_complaint=bool(g["hold_on_unknown_with_complaint"]),
            extreme_cold_blocks_consequence=bool(g["extreme_cold_blocks_consequence"]),
            remind_stopped=bool(g["remind_stopped"]),
            late_fee_label=str(lf["label"]), late_fee_daily_rate=_dec(lf["daily_rate"], "late_fee.daily_rate", 0, 0.01),
            late_fee_cap_ratio=_dec(lf["cap_ratio"], "late_fee.cap_ratio", 0, 1), late_fee_grace_days=int(lf["grace_days"]),
            instalment_min_parts=int(ins["min_parts"]), instalment_max_parts=int(ins["max_parts"]),
            instalment_min_first_ratio=_dec(ins["min_first_ratio"], "instalments.min_first_ratio", 0, 1),
            instalment_grace_days=int(ins["grace_days"]),
            instalment_reminder_lead_days=int(ins["reminder_lead_days"]),
            instalment_channels=_channels(ins["channels"], "instalments.channels"),
            instalment_due_template=str(ins["due_template"]),
            instalment_missed_template=str(ins["missed_template"]),
            cutoff_min_days_after_formal=int(data["cutoff"]["min_days_after_formal_delivery"]),
            contract_allows_offset=bool(data["refund_offset"]["contract_allows_offset"]),
            payout_days_after_season=int(data["refund_offset"]["payout_days_after_season"]),
        )
    except KeyError as e:
        raise PolicyError(f"dunning policy: missing key {e}") from None
    if pol.late_fee_label != "违约金":
        raise PolicyError("late_fee.label must be 违约金 (R34: civil, contractual; not 滞纳金)")
    if pol.send_start >= pol.send_end:
        raise PolicyError("send_window: start must be before end")
    if not 1 <= pol.instalment_min_parts <= pol.instalment_max_parts:
        raise PolicyError("instalments: 1 ≤ min_parts ≤ max_parts")
    if pol.instalment_grace_days < 0:
        raise PolicyError(f"instalments.grace_days: must be ≥ 0, got {pol.instalment_grace_days}")
    if not 0 <= pol.instalment_reminder_lead_days <= 30:
        raise PolicyError(f"instalments.reminder_lead_days: 0..30 days, got {pol.instalment_reminder_lead_days}")
    return pol


class PolicyBook:
    """defaults ← regions[region] ← companies[company], resolved and cached per pair."""

    def __init__(self, data: dict):
        self.data = data
        self._cache: dict[tuple, DunningPolicy] = {}
        parse(data["defaults"])                       # validate defaults eagerly
        for r in data.get("regions") or {}:
            self.resolve(r, None)
        for c in data.get("companies") or {}:
            self.resolve(None, c)

    @classmethod
    def load(cls, path: Path = POLICY_FILE) -> "PolicyBook":
        return cls(yaml.safe_load(Path(path).read_text(encoding="utf-8")))

    def resolve(self, region_code: str | None, company_code: str | None = None, overrides: dict | None = None
                ) -> DunningPolicy:
        key = (region_code, company_code, repr(overrides))
        if key not in self._cache:
            merged = _merge(self.data["defaults"], (self.data.get("regions") or {}).get(region_code))
            merged = _merge(merged, (self.data.get("companies") or {}).get(company_code))
            merged = _merge(merged, overrides)
            self._cache[key] = parse(merged)
        return self._cache[key]


@lru_cache(maxsize=1)
def default_book() -> PolicyBook:
    return PolicyBook.load()
