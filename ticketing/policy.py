"""Ticketing policy resolution: ``policy.yaml`` defaults ← region ← company (deep merge).

Every SLA, duplicate window, dispatch weight and auto-ticket threshold is data (docs/ARCHITECTURE.md);
code asks ``policy_for(region_code, company_code)`` and never carries its own numbers.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from zoneinfo import ZoneInfo

from analytics.policy import resolve_policy
from core.config import get_settings

POLICY_FILE = Path(__file__).resolve().parent / "policy.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhd])\s*$")


class PolicyError(ValueError):
    """The policy file is malformed; the message names the key."""


def parse_duration(value: Any, *, where: str = "duration") -> timedelta:
    """'30m' / '2h' / '3d' (or a number of minutes) → timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(minutes=value)
    m = _DURATION.match(str(value))
    if not m:
        raise PolicyError(f"{where}: {value!r} is not a duration like 30m, 2h or 3d")
    n, unit = float(m.group(1)), m.group(2)
    return {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]


def deep_merge(base: dict, over: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@lru_cache(maxsize=4)
def load_policy_file(path: str = str(POLICY_FILE)) -> dict:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or "defaults" not in doc:
        raise PolicyError(f"{path}: needs a top-level 'defaults' mapping")
    return doc


def policy_for(region_code: str | None, company_code: str | None, day: date, *,
               document: dict | None = None) -> dict:
    """The merged policy for a company in a region on local ``day`` (unknown region/company → defaults).

    The season dates, the compliance threshold (``threshold_c``: the legacy floor where one applies, R3)
    and the refund trigger hours (R27) are taken from the analytics policy in force that day, so a
    number lives in one place (analytics/policies.yaml).
    """
    doc = document if document is not None else load_policy_file()
    merged = deep_merge(doc["defaults"], (doc.get("regions") or {}).get(region_code or ""))
    merged = deep_merge(merged, (doc.get("companies") or {}).get(company_code or ""))
    ap = resolve_policy(region_code, day)
    merged["season"] = {**merged.get("season", {}), "start": "%02d-%02d" % ap.season.start_md,
                        "end": "%02d-%02d" % ap.season.end_md}
    merged["threshold_c"] = ap.compare_c
    merged["refund_clock"] = {**merged.get("refund_clock", {}), "trigger_hours": ap.trigger_hours}
    merged["analytics_policy"] = {"code": ap.code, "version": ap.version}
    return merged


def company_policy(conn, company_id: int | None, day: date) -> dict:
    """Policy for a company row id (None → defaults) on local ``day``."""
    if company_id is None:
        return policy_for(None, None, day)
    row = conn.execute("SELECT region_code, code FROM company WHERE id = %s", (company_id,)).fetchone()
    return policy_for(row[0], row[1], day) if row else policy_for(None, None, day)


#: technician.role values (schema.sql CHECK): what ``station:<role>`` may name
TECHNICIAN_ROLES = ("technician", "team_lead", "station_head")
#: levels raised by the SLA job besides the escalation ladder (ticketing/sla.py)
SLA_BASE_LEVELS = ("warning", "breach")
_STAFF_ROLE = re.compile(r"^[a-z_]+$")


@dataclass(frozen=True)
class SlaLevelNotify:
    """Who hears about one SLA level, how it is called in messages, and with which template."""
    level: str
    label: str
    template: str
    to: tuple[str, ...]


def sla_notify_levels(policy: dict) -> dict[str, SlaLevelNotify]:
    """The validated ``sla.notify.levels`` of a merged policy, one entry per level the job can raise.

    Validated as a whole, up front, because a ladder level without an entry (say a company adds a
    fourth rung) or a misspelt role would otherwise mean an escalation that quietly reaches nobody.
    Raises PolicyError naming the key.
    """
    from notify.outbox import CHANNELS

    cfg = policy["sla"].get("notify")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("levels"), dict):
        raise PolicyError("sla.notify.levels: missing (who is told about SLA warnings, breaches, escalations)")
    if cfg.get("channel") not in CHANNELS:
        raise PolicyError(f"sla.notify.channel: {cfg.get('channel')!r} is not one of {CHANNELS}")
    addresses = cfg.get("addresses") or {}
    needed = list(SLA_BASE_LEVELS) + [s["level"] for s in policy["sla"]["escalation"]]
    out: dict[str, SlaLevelNotify] = {}
    for level in needed:
        where = f"sla.notify.levels.{level}"
        spec = cfg["levels"].get(level)
        if not isinstance(spec, dict):
            raise PolicyError(f"{where}: missing; every SLA level needs recipients ({', '.join(needed)})")
        to = spec.get("to")
        if not isinstance(to, list) or not to:
            raise PolicyError(f"{where}.to: needs a non-empty list of recipient roles")
        for role in to:
            _check_role(str(role), addresses, f"{where}.to")
        if not spec.get("template"):
            raise PolicyError(f"{where}.template: missing")
        out[level] = SlaLevelNotify(level, str(spec.get("label") or level), str(spec["template"]),
                                    tuple(str(r) for r in to))
    return out


def _check_role(role: str, addresses: dict, where: str) -> None:
    kind, _, arg = role.partition(":")
    if kind == "assignee" and not arg:
        return
    if kind == "station" and arg in TECHNICIAN_ROLES:
        return
    if kind == "company" and _STAFF_ROLE.match(arg):
        return
    if kind == "address" and arg in addresses:
        return
    raise PolicyError(f"{where}: unknown recipient role {role!r}; expected assignee, "
                      f"station:<{'|'.join(TECHNICIAN_ROLES)}>, company:<app role> "
                      f"or address:<one of {sorted(addresses)}>")


def local_day(at: datetime) -> date:
    """The local (Settings.timezone) day of an aware timestamp."""
    return at.astimezone(ZoneInfo(get_settings().timezone)).date()
