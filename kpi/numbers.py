"""Numbers for KPI maths that stay finite and in range whatever the input (registers near the
largest float, counts near InfluxDB's largest integer), and the window arithmetic."""

from __future__ import annotations

import math
import sys
from typing import Any, TypeVar

from models.records import Kpi

K = TypeVar("K", bound=Kpi)


def window_start(ts_ms: int, window_ms: int) -> int:
    """Start of the epoch-aligned tumbling window holding `ts_ms` (a boundary starts a window)."""
    return ts_ms - ts_ms % window_ms


def saving_pct(actual: float, baseline: float) -> float:
    """100 × (1 − actual / baseline); 0.0 when there is no positive baseline."""
    return 100.0 * (1.0 - actual / baseline) if baseline > 0 else 0.0


FLOAT_MAX = sys.float_info.max
INT64_MAX = 2**63 - 1


def fadd(a: float, b: float) -> float:
    """a + b, saturated at the largest float (absurd but valid registers must not give inf)."""
    return min(FLOAT_MAX, a + b)


def iadd(a: int, b: int) -> int:
    """a + b, saturated at InfluxDB's largest integer."""
    return min(INT64_MAX, a + b)


def bounded(cls: type[K], **fields: Any) -> K:
    """Build a KPI record with figures derived from saturated sums kept finite and in range
    (an overflowing ratio becomes the largest float of its sign, never inf or a refused
    point)."""
    for name, value in fields.items():
        if isinstance(value, float) and not math.isfinite(value):
            fields[name] = 0.0 if math.isnan(value) else math.copysign(FLOAT_MAX, value)
        elif type(value) is int and value > INT64_MAX:
            fields[name] = INT64_MAX
    return cls(**fields)
