"""The DCAT catalogue (`/catalog.jsonld`): JSON-LD with DCAT-AP 2 terms. Pure, no I/O.

One `dcat:Dataset` per published dataset (`opendata.datasets.published`) with `dct:title`,
`dct:description`, `dct:license` (the OGL v3.0), `dct:temporal` (a `dct:PeriodOfTime` from the
first to the last window end held; a dataset without points yet starts today), `dcat:keyword`,
`dcat:temporalResolution` (the window length), the publisher and a contact point, and one
`dcat:Distribution` per format: CSV, JSON and, for datasets with a target, the NGSI-LD entities.

The `@context` is inline (no document to fetch) and coerces the IRI-valued terms, so the JSON
stays plain strings (`"dct:license": "http://www.nationalarchives.gov.uk/..."`) while an RDF
reader sees IRIs: a harvester such as CKAN's ckanext-dcat reads it as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from opendata.datasets import Dataset
from opendata.ngsi import MEDIA_TYPE as NGSI_MEDIA_TYPE
from opendata.ngsi import SCHEMA_URL
from opendata.tables import format_time

OGL: Final = "http://www.nationalarchives.gov.uk/doc/open-government-licence/version/3/"
LICENSE_LINK: Final = f'<{OGL}>; rel="license"'
FILE_TYPE: Final = "http://publications.europa.eu/resource/authority/file-type/"
FREQUENCY: Final = "http://publications.europa.eu/resource/authority/frequency/"
LANGUAGE_EN: Final = "http://publications.europa.eu/resource/authority/language/ENG"

CONTEXT: Final[dict[str, Any]] = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "dct:license": {"@type": "@id"},
    "dct:format": {"@type": "@id"},
    "dct:language": {"@type": "@id"},
    "dct:accrualPeriodicity": {"@type": "@id"},
    "dct:conformsTo": {"@type": "@id"},
    "dcat:accessURL": {"@type": "@id"},
    "dcat:downloadURL": {"@type": "@id"},
    "dcat:landingPage": {"@type": "@id"},
    "foaf:homepage": {"@type": "@id"},
    "dcat:startDate": {"@type": "xsd:dateTime"},
    "dcat:endDate": {"@type": "xsd:dateTime"},
    "dct:modified": {"@type": "xsd:dateTime"},
    "dcat:temporalResolution": {"@type": "xsd:duration"},
}
FORMATS: Final = (
    ("csv", "text/csv", "CSV"),
    ("json", "application/json", "JSON"),
)


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"PT{seconds // 3600}H"
    if seconds % 60 == 0:
        return f"PT{seconds // 60}M"
    return f"PT{seconds}S"


def _distributions(base: str, dataset: Dataset) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ext, media, file_type in FORMATS:
        url = f"{base}/data/{dataset.measurement}.{ext}"
        out.append({
            "@id": f"{url}#distribution",
            "@type": "dcat:Distribution",
            "dct:title": f"{dataset.title} ({file_type})",
            "dct:description": (
                f"One {'line' if ext == 'csv' else 'object'} per window: "
                f"{', '.join(dataset.columns)}. Parameters `from` and `to` (RFC 3339) choose "
                "the window ends [from, to); the default is the last 24 h, at most 31 days a "
                "request."),
            "dcat:accessURL": url,
            "dcat:downloadURL": url,
            "dcat:mediaType": media,
            "dct:format": FILE_TYPE + file_type,
            "dct:license": OGL,
        })
    if dataset.target is not None:
        url = f"{base}/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"
        out.append({
            "@id": f"{base}/ngsi-ld/v1/entities#{dataset.measurement}",
            "@type": "dcat:Distribution",
            "dct:title": f"{dataset.title} (NGSI-LD KeyPerformanceIndicator)",
            "dct:description": (
                "NGSI-LD entities (Smart Data Models KeyPerformanceIndicator), one per entity "
                f"for {dataset.target.field} of its latest final window, ids "
                f"urn:ngsi-ld:KeyPerformanceIndicator:{dataset.measurement}:<entity>:"
                f"{dataset.target.field}; `options=keyValues` for the key-values form."),
            "dcat:accessURL": url,
            "dcat:mediaType": NGSI_MEDIA_TYPE,
            "dct:format": FILE_TYPE + "JSON_LD",
            "dct:conformsTo": SCHEMA_URL,
            "dct:license": OGL,
        })
    return out


def dataset_node(base: str, dataset: Dataset, publisher: dict[str, Any],
                 coverage: tuple[int, int] | None, today_ms: int) -> dict[str, Any]:
    """One `dcat:Dataset`."""
    temporal: dict[str, Any] = {"@type": "dct:PeriodOfTime"}
    if coverage is not None:
        temporal["dcat:startDate"] = format_time(coverage[0])
        temporal["dcat:endDate"] = format_time(coverage[1])
    else:
        temporal["dcat:startDate"] = format_time(today_ms)
    return {
        "@id": f"{base}/catalog.jsonld#{dataset.measurement}",
        "@type": "dcat:Dataset",
        "dct:identifier": dataset.measurement,
        "dct:title": dataset.title,
        "dct:description": dataset.description,
        "dct:license": OGL,
        "dct:temporal": temporal,
        "dcat:keyword": list(dict.fromkeys(dataset.keywords)),
        "dcat:temporalResolution": _duration(dataset.window_s),
        "dct:accrualPeriodicity": FREQUENCY + "CONT",
        "dct:language": LANGUAGE_EN,
        "dct:publisher": publisher,
        "dcat:contactPoint": {"@type": "vcard:Organization", "vcard:fn": publisher["foaf:name"]},
        "dcat:landingPage": f"{base}/",
        "dcat:distribution": _distributions(base, dataset),
    }


def catalog(base: str, datasets: Mapping[str, Dataset], *, title: str, publisher: str,
            coverage: Mapping[str, tuple[int, int]], now_ms: int) -> dict[str, Any]:
    """The whole catalogue (see module docstring); `base` is the service's public URL without
    a trailing slash."""
    agent = {"@type": "foaf:Agent", "foaf:name": publisher}
    today = now_ms - now_ms % 86_400_000
    nodes = [dataset_node(base, d, agent, coverage.get(name), today)
             for name, d in datasets.items()]
    newest = max((end for _, end in coverage.values()), default=None)
    out: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": f"{base}/catalog.jsonld",
        "@type": "dcat:Catalog",
        "dct:title": title,
        "dct:description": (
            f"Key performance indicators of {title.removesuffix(' open data')}'s smart-city "
            "programme (water and energy savings, traffic congestion, autonomous shuttles, the "
            "city's declared sensor feeds) and the quality of its sensor data, per window, "
            "under the Open Government Licence v3.0. No raw reading, sensor id or vehicle "
            "position is published."),
        "dct:publisher": agent,
        "dct:license": OGL,
        "dct:language": LANGUAGE_EN,
        "foaf:homepage": f"{base}/",
        "dcat:dataset": nodes,
    }
    if newest is not None:
        out["dct:modified"] = format_time(newest)
    return out
