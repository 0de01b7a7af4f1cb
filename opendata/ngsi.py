"""NGSI-LD entities: one Smart Data Models `KeyPerformanceIndicator` per entity and KPI with a
target (CONTRACT section 6), for its latest final window. Pure functions, no I/O.

Data model: https://github.com/smart-data-models/dataModel.KeyPerformanceIndicator (schema
0.2.1, vendored with its licence in tests/data/smart-data-models/ for the tests that validate
every entity against it).

An entity (normalized form; `key_values` gives the key-values form):

    id                 urn:ngsi-ld:KeyPerformanceIndicator:<measurement>:<entity>:<field>
    type               KeyPerformanceIndicator
    kpiValue           the rolling 24 h figure that `on_track` judges (observedAt: window end)
    businessTarget     e.g. "water use 20 % below baseline"
    currentStanding    good (on track) or bad (off track)
    calculationPeriod  {"from": date, "to": date} of those 24 h (UTC)
    category           ["quantitative"]
    area               the entity (district slug, junction id, route, declared entity)
    dateModified       the window end (RFC 3339 UTC)
    name, description, organization, process, calculationMethod, source (the dataset's CSV)
    @context           the data model's context, then the NGSI-LD core context

A window of household meters with fewer than `min_meters` meters gives no entity: its figure is
withheld like everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from opendata.datasets import PRIVACY_COUNT, Dataset
from opendata.tables import Point, format_time

ENTITY_TYPE: Final = "KeyPerformanceIndicator"
ENTITY_TYPE_IRI: Final = ("https://smartdatamodels.org/dataModel.KeyPerformanceIndicator/"
                          "KeyPerformanceIndicator")
URN_PREFIX: Final = f"urn:ngsi-ld:{ENTITY_TYPE}:"
CORE_CONTEXT: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
MODEL_CONTEXT: Final = ("https://raw.githubusercontent.com/smart-data-models/"
                        "dataModel.KeyPerformanceIndicator/master/context.jsonld")
CONTEXT: Final = (MODEL_CONTEXT, CORE_CONTEXT)
"""The model's terms first, the NGSI-LD core context last (core terms cannot be overridden)."""
SCHEMA_URL: Final = ("https://smart-data-models.github.io/dataModel.KeyPerformanceIndicator/"
                     "keyPerformanceIndicator/schema.json")  # the schema's own $id
MEDIA_TYPE: Final = "application/ld+json"
_OBSERVED: Final = frozenset({"kpiValue"})


def entity_id(measurement: str, entity: str, field: str) -> str:
    return f"{URN_PREFIX}{measurement}:{entity}:{field}"


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def key_values_entity(dataset: Dataset, point: Point, *, organization: str, base_url: str,
                      min_meters: int) -> dict[str, Any] | None:
    """The key-values entity of `dataset`'s target for `point` (its entity's latest final
    window), or None when the window is withheld or has no 24 h figure."""
    target = dataset.target
    if target is None:
        return None
    value = point.fields.get(target.field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if dataset.private:
        meters = point.fields.get(PRIVACY_COUNT)
        if not isinstance(meters, int) or isinstance(meters, bool) or meters < min_meters:
            return None
    entity = point.tags.get(dataset.entity)
    if not entity:
        return None
    limit = point.fields.get(target.limit_field)
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        limit = target.default
    on_track = point.fields.get("on_track")
    if not isinstance(on_track, bool):
        on_track = value <= limit if target.at_most else value >= limit
    window_end = format_time(point.time_ms)
    title = dataset.title.split(" by ")[0]
    return {
        "id": entity_id(dataset.measurement, entity, target.field),
        "type": ENTITY_TYPE,
        "name": f"{title}: {target.field} at {entity}",
        "description": (f"{target.field} of {dataset.measurement} for {dataset.entity} "
                        f"{entity}: the rolling 24 h figure for the 24 h ending {window_end} "
                        f"(window {point.tags.get('window', dataset.window)})"),
        "kpiValue": float(value),
        "businessTarget": target.business.format(limit=float(limit)),
        "currentStanding": "good" if on_track else "bad",
        "calculationPeriod": {"from": _date(point.time_ms - 86_400_000),
                              "to": _date(point.time_ms)},
        "category": ["quantitative"],
        "area": entity,
        "dateModified": window_end,
        "organization": organization,
        "process": target.process,
        "calculationMethod": "automatic",
        "source": f"{base_url}/data/{dataset.measurement}.csv",
        "@context": list(CONTEXT),
    }


def normalized(entity: Mapping[str, Any]) -> dict[str, Any]:
    """A key-values entity in the NGSI-LD normalized form: every attribute a Property."""
    out: dict[str, Any] = {}
    for name, value in entity.items():
        if name in ("id", "type", "@context"):
            out[name] = value
            continue
        attribute: dict[str, Any] = {"type": "Property", "value": value}
        if name in _OBSERVED:
            attribute["observedAt"] = entity["dateModified"]
        out[name] = attribute
    return out


def key_values(entity: Mapping[str, Any]) -> dict[str, Any]:
    """A normalized entity in the key-values form (each Property's value; a Relationship's
    object)."""
    out: dict[str, Any] = {}
    for name, value in entity.items():
        if isinstance(value, Mapping) and value.get("type") == "Property":
            out[name] = value.get("value")
        elif isinstance(value, Mapping) and value.get("type") == "Relationship":
            out[name] = value.get("object")
        else:
            out[name] = value
    return out


def entities(datasets: Mapping[str, Dataset], points: Iterable[Point], *, organization: str,
             base_url: str, min_meters: int) -> list[dict[str, Any]]:
    """The key-values entities of `points` (`Store.latest`), ordered by id."""
    out = []
    for point in points:
        dataset = datasets.get(point.measurement)
        if dataset is None:
            continue
        entity = key_values_entity(dataset, point, organization=organization,
                                   base_url=base_url, min_meters=min_meters)
        if entity is not None:
            out.append(entity)
    return sorted(out, key=lambda e: str(e["id"]))


def newest_modified_ms(found: Iterable[Mapping[str, Any]]) -> int | None:
    """The newest `dateModified` of key-values entities, in ms."""
    times = [int(datetime.fromisoformat(str(e["dateModified"])).timestamp() * 1000)
             for e in found]
    return max(times) if times else None
