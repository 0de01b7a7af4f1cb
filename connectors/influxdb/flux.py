"""Text that goes into Flux: string literals and filters, escaped here and nowhere else.

Every name or value a query carries (bucket, measurement, field, tag value; from the settings,
the city file or a request) goes in as a `flux_string`, never pasted; a column in a filter must
be an identifier. Used by the dashboard, the open-data service, `citystream report` and the
generated dashboards (deploy/dashboards.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def flux_string(text: str) -> str:
    """A Flux string literal (quotes and backslashes escaped, `${` kept literal)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def flux_any_of(column: str, values: Iterable[str]) -> str:
    """`r.column == "a" or r.column == "b"`, in the order of `values` (each a `flux_string`):
    InfluxDB pushes this down to storage (`contains()` would run per row, 40 times slower).
    `column` is a tag name or a column such as `_field`, an identifier (ValueError otherwise);
    no values give an empty string."""
    if _IDENTIFIER.fullmatch(column) is None:
        raise ValueError(f"{column!r} is not a tag name (a Flux identifier)")
    return " or ".join(f"r.{column} == {flux_string(v)}" for v in values)
