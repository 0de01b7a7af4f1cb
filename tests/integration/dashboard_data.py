"""How the dashboard page shows numbers, for the dashboard tests' expectations. The KPI points
they write come from tests/support.py (`city_kpis`, `feed_kpis`, `new_bucket`)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def shown(value: float, digits: int) -> str:
    """A number as the page shows it: JavaScript's toFixed (exact value, halves away from
    zero), a real minus sign, no negative zero."""
    text = str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))
    if Decimal(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", "\u2212")


def shown_count(value: float) -> str:
    """A non-negative number as the page shows a count or rate: rounded (halves up), with
    thousands separators."""
    return f"{int(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP)):,}"


def shown_kpi(value: float, integer: bool) -> str:
    """A feed KPI as the page shows it: counts and figures of 1000 or more whole, others with
    one decimal, below 1 with two."""
    if integer or abs(value) >= 1000:
        return shown_count(value)
    return shown(value, 1 if value == 0 or abs(value) >= 1 else 2)
