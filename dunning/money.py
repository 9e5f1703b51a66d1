"""Money helpers: 元 as Decimal, rounded to the fen (0.01) half-up, as Chinese billing does."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

FEN = Decimal("0.01")
ZERO = Decimal("0.00")


def yuan(x) -> Decimal:
    """Round any number to 元 with 2 decimals, half-up (floats go through str to avoid binary noise)."""
    d = x if isinstance(x, Decimal) else Decimal(str(x))
    return d.quantize(FEN, rounding=ROUND_HALF_UP)
