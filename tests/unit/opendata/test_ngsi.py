"""The KeyPerformanceIndicator entities against the Smart Data Models data model: the vendored
JSON schema (both forms) and the attribute database that pysmartdatamodels ships."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from opendata import ngsi
from opendata.datasets import published
from opendata.tables import Point
from tests.opendata_checks import validate_kpi_entity
from tests.unit.opendata.fakes import BASE, NOW_MS, city


def entity() -> dict[str, Any]:
    datasets = published(city())
    point = Point("water_kpi", NOW_MS // 900_000 * 900_000, {"district": "wolverton",
                                                             "window": "15m"},
                  {"saving_pct_24h": 18.25, "target_pct": 20.0, "on_track": False,
                   "meters_reporting": 30})
    made = ngsi.key_values_entity(datasets["water_kpi"], point, organization="Testville",
                                  base_url=BASE, min_meters=5)
    assert made is not None
    return made


def test_both_forms_validate_and_round_trip() -> None:
    kv = entity()
    validate_kpi_entity(kv, normalized=False)
    norm = ngsi.normalized(kv)
    validate_kpi_entity(norm, normalized=True)
    assert ngsi.key_values(norm) == kv
    assert kv["currentStanding"] == "bad" and kv["kpiValue"] == 18.25
    assert kv["@context"] == [ngsi.MODEL_CONTEXT, ngsi.CORE_CONTEXT]


@pytest.mark.parametrize(("name", "bad"), [
    ("currentStanding", "excellent"), ("category", []), ("category", ["quantity"]),
    ("calculationPeriod", {"from": "2026-09-21T00:00:00Z", "to": "2026-09-22"}),
    ("dateModified", "yesterday"), ("type", "KPI"), ("kpiValue", None),
])
def test_the_schema_check_catches_a_broken_entity(name: str, bad: Any) -> None:
    broken = copy.deepcopy(entity())
    broken[name] = bad
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        validate_kpi_entity(broken, normalized=False)
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        validate_kpi_entity(ngsi.normalized(broken), normalized=True)


def test_a_normalized_entity_must_have_properties() -> None:
    norm = ngsi.normalized(entity())
    norm["area"] = "wolverton"
    with pytest.raises(AssertionError, match="not an NGSI-LD attribute"):
        validate_kpi_entity(norm, normalized=True)


def test_a_withheld_or_incomplete_window_gives_no_entity() -> None:
    datasets = published(city())
    base = {"saving_pct_24h": 30.0, "target_pct": 20.0, "on_track": True}
    for fields in ({**base, "meters_reporting": 4}, base,
                   {"target_pct": 20.0, "on_track": True, "meters_reporting": 50}):
        point = Point("water_kpi", NOW_MS, {"district": "wolverton", "window": "15m"}, fields)
        assert ngsi.key_values_entity(datasets["water_kpi"], point, organization="x",
                                      base_url=BASE, min_meters=5) is None
    point = Point("shuttle_kpi", NOW_MS, {"route": "r-1"}, {"occupancy_pct": 50.0})
    assert ngsi.key_values_entity(datasets["shuttle_kpi"], point, organization="x",
                                  base_url=BASE, min_meters=5) is None


def test_attributes_are_those_of_the_data_model_in_pysmartdatamodels() -> None:
    import pysmartdatamodels as psdm  # a dev dependency
    subject, model = "dataModel.KeyPerformanceIndicator", "KeyPerformanceIndicator"
    known = set(psdm.attributes_datamodel(subject, model))
    kv = entity()
    for name, value in kv.items():
        if name == "@context":
            continue
        assert name in known, name
        if name in ("id", "type"):
            continue
        assert psdm.ngsi_datatype_attribute(subject, model, name) == "Property", name
        declared = psdm.datatype_attribute(subject, model, name)
        # the database lists the first type of kpiValue's oneOf (string); the schema allows
        # a number, which is what the rolling 24 h figure is
        if name == "kpiValue":
            assert isinstance(value, float)
            continue
        python = {"string": str, "array": list, "object": dict, "number": float}[declared]
        assert isinstance(value, python), (name, declared)
