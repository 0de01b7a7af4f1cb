"""Flux string literals and filters: every name and value escaped, columns only identifiers."""

from __future__ import annotations

import pytest

from connectors.influxdb.flux import flux_any_of, flux_string


def test_flux_strings_are_escaped() -> None:
    assert flux_string("kpi") == '"kpi"'
    assert flux_string('a"b\\c${x}') == '"a\\"b\\\\c\\${x}"'


def test_any_of_keeps_the_order_and_escapes_every_value() -> None:
    assert flux_any_of("_field", ["b", 'a"']) == 'r._field == "b" or r._field == "a\\""'
    assert flux_any_of("district", []) == ""


@pytest.mark.parametrize("column", ["", "a b", "a) or (true", "1st", "r.x"])
def test_any_of_refuses_a_column_that_is_not_an_identifier(column: str) -> None:
    with pytest.raises(ValueError, match="not a tag name"):
        flux_any_of(column, ["x"])
