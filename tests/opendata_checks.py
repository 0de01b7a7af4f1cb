"""Checks of what `citystream opendata` publishes, shared by its unit and integration tests:

- `validate_kpi_entity`: an NGSI-LD entity (normalized or key-values) against the vendored Smart
  Data Models `KeyPerformanceIndicator` schema (tests/data/smart-data-models), offline: the
  schema's `$ref`s resolve to the vendored common schema, `date` and `date-time` formats are
  checked. A normalized entity must have every attribute as a `Property` (`value`) or
  `Relationship` (`object`); its values, taken out, must validate as the key-values form.
- `catalog_graph`: the DCAT catalogue parsed as JSON-LD into an rdflib graph (and expanded with
  pyld), so the tests read DCAT terms as RDF, not as JSON keys.
- `read_csv`: CSV text read back with the csv module, checked against RFC 4180's shape.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

import jsonschema
from referencing import Registry, Resource

SDM: Final = Path(__file__).resolve().parent / "data" / "smart-data-models"
KPI_SCHEMA: Final = json.loads((SDM / "KeyPerformanceIndicator.schema.json").read_text())
COMMON_SCHEMA: Final = json.loads((SDM / "common-schema.json").read_text())
OGL: Final = "http://www.nationalarchives.gov.uk/doc/open-government-licence/version/3/"
LICENSE_LINK: Final = f'<{OGL}>; rel="license"'
DCAT: Final = "http://www.w3.org/ns/dcat#"
DCT: Final = "http://purl.org/dc/terms/"

_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value or not (value.endswith("Z") or value[-6] in "+-"):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time with an offset")
    datetime.fromisoformat(value)
    return True


@_FORMATS.checks("date", raises=ValueError)
def _date(value: object) -> bool:
    if isinstance(value, str):
        date.fromisoformat(value)
        if len(value) != 10:
            raise ValueError(f"{value!r} is not a full date")
    return True


def _registry() -> Registry[Any]:
    resource = Resource.from_contents(COMMON_SCHEMA)
    return Registry().with_resource(COMMON_SCHEMA["$id"], resource)


VALIDATOR: Final = jsonschema.Draft202012Validator(KPI_SCHEMA, registry=_registry(),
                                                   format_checker=_FORMATS)


def key_values_of(entity: dict[str, Any]) -> dict[str, Any]:
    """A normalized entity's key-values form; fails if an attribute is neither a Property nor a
    Relationship."""
    out: dict[str, Any] = {}
    for name, value in entity.items():
        if name in ("id", "type", "@context"):
            out[name] = value
            continue
        assert isinstance(value, dict), f"{name}: not an NGSI-LD attribute: {value!r}"
        if value.get("type") == "Property":
            assert "value" in value, f"{name}: a Property without value"
            out[name] = value["value"]
        elif value.get("type") == "Relationship":
            assert "object" in value, f"{name}: a Relationship without object"
            out[name] = value["object"]
        else:
            raise AssertionError(f"{name}: type {value.get('type')!r} is not Property or "
                                 "Relationship")
    return out


def validate_kpi_entity(entity: dict[str, Any], normalized: bool) -> None:
    """Raise if `entity` does not validate (see module docstring)."""
    assert entity["type"] == "KeyPerformanceIndicator"
    assert str(entity["id"]).startswith("urn:ngsi-ld:KeyPerformanceIndicator:")
    context = entity["@context"]
    assert "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld" in context
    assert any("smart-data-models" in c and "KeyPerformanceIndicator" in c for c in context)
    flat = key_values_of(entity) if normalized else entity
    if not normalized:
        for name, value in entity.items():
            assert not (isinstance(value, dict) and value.get("type") == "Property"), name
    VALIDATOR.validate({k: v for k, v in flat.items() if k != "@context"})


def catalog_graph(document: dict[str, Any]) -> Any:
    """The catalogue as an rdflib Graph (its @context is inline: nothing is fetched)."""
    import rdflib

    graph = rdflib.Graph()
    with warnings.catch_warnings():   # rdflib's JSON-LD parser uses its own deprecated API
        warnings.simplefilter("ignore", DeprecationWarning)
        graph.parse(data=json.dumps(document), format="json-ld")
    return graph


def expanded(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The catalogue expanded by pyld (a second JSON-LD processor), with a document loader that
    refuses to fetch anything."""
    from pyld import jsonld

    def no_fetch(url: str, options: Any = None) -> Any:
        raise AssertionError(f"the catalogue made a JSON-LD processor fetch {url}")

    result: list[dict[str, Any]] = jsonld.expand(document, {"documentLoader": no_fetch})
    return result


def read_csv(text: str) -> list[dict[str, str]]:
    """Rows of RFC 4180 CSV text (CRLF line ends, one header line, same width everywhere)."""
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    records = list(csv.reader(io.StringIO(text, newline="")))
    header, body = records[0], records[1:]
    assert all(len(r) == len(header) for r in body)
    return [dict(zip(header, r, strict=True)) for r in body]
