"""Season bills from tariffs (domain.md R42 area-based, R43 two-part, R29 报停 base share).

Pure: inputs are the household's billing facts and the region's DunningPolicy; output is the amount
and a `basis` dict stored with the bill so every number can be explained later.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from dunning.money import yuan
from dunning.policy import DunningPolicy


@dataclass(frozen=True)
class BillCalc:
    amount: Decimal           # 元, what the household owes for the season
    base_amount: Decimal      # 元, the 基本热费 / base share inside `amount`
    tariff_code: str
    basis: dict = field(default_factory=dict)


def season_bill(*, area_m2: float, segment: str, billing_method: str, heating_status: str, policy: DunningPolicy,
                metered_kwh: float | None = None) -> BillCalc:
    """One household's season bill.

    - area (R42): area_m2 × area_per_m2.
    - two_part / allocation (R43): area_m2 × base_per_m2 + kWh × per_kwh. Without a settled kWh figure
      the bill is the base part only; the metered part is settled later (多退少补, [S24]).
    - 报停 (R29): stopped households pay `stopped_base_share` × the full area fee, whatever the method.
    """
    if area_m2 is None or area_m2 <= 0:
        raise ValueError(f"billing area must be positive, got {area_m2!r}")
    if segment not in policy.tariffs:
        raise ValueError(f"no tariff for segment {segment!r}")
    t = policy.tariffs[segment]
    area = Decimal(str(area_m2))
    full_area_fee = area * t.area_per_m2
    basis: dict = {"policy": f"{policy.code} v{policy.version}", "area_m2": str(area), "area_basis": policy.area_basis,
                   "segment": segment, "billing_method": billing_method, "heating_status": heating_status}
    if heating_status == "stopped":
        amount = yuan(full_area_fee * policy.stopped_base_share)
        basis.update(rule="R29", area_per_m2=str(t.area_per_m2), stopped_base_share=str(policy.stopped_base_share))
        return BillCalc(amount, amount, f"{segment}.stopped", basis)
    if billing_method == "area":
        amount = yuan(full_area_fee)
        basis.update(rule="R42", area_per_m2=str(t.area_per_m2))
        return BillCalc(amount, yuan(area * t.base_per_m2), f"{segment}.area", basis)
    if billing_method in ("two_part_meter", "allocation"):
        base = yuan(area * t.base_per_m2)
        basis.update(rule="R43", base_per_m2=str(t.base_per_m2), per_kwh=str(t.per_kwh))
        if metered_kwh is None:
            basis["metered"] = "settled after the season"
            return BillCalc(base, base, f"{segment}.two_part", basis)
        if metered_kwh < 0:
            raise ValueError(f"metered kWh must be ≥ 0, got {metered_kwh}")
        metered = yuan(Decimal(str(metered_kwh)) * t.per_kwh)
        basis.update(metered_kwh=str(metered_kwh), metered_amount=str(metered))
        return BillCalc(base + metered, base, f"{segment}.two_part", basis)
    raise ValueError(f"unknown billing method {billing_method!r}")
