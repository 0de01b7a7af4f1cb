"""Static check of Flux queries against the contract's schema (measurements, tags, fields).

The schema comes from the code that writes the points: `models.records.RECORD_TYPES` for the
`kpi` bucket (contract section 2; tests/unit/deploy/test_dashboards.py also checks that
docs/contract.md's table says the same) and the kinds' raw schemas (`models.kinds.raw_schemas`,
rendered by `connectors.influxdb.lineproto`) for `telemetry`.

`check(query)` extracts what a query names, by the conventions our queries follow:
measurements in `_measurement == "..."`; fields in `_field == "..."`,
`contains(value: r._field, set: [...])`, `_field =~ /^(a|b)$/` and `fields: [...]` or
`fields: /^(a|b)$/` arguments; columns in `r.name`,
`r["name"]`, `columns: [...]`, `rowKey: [...]`, `column: "..."` and `tag: "..."`. Every
measurement must exist, every field must belong to a named measurement, every column must be a
tag or field of one, a Flux built-in column, or a column the query itself makes (`map` record
keys, `set(key: ...)`). A query must name at least one measurement, tag and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from models.kinds import raw_schemas, record_types

BUILTIN_COLUMNS = frozenset({"_time", "_value", "_field", "_measurement", "_start", "_stop",
                             "result", "table"})


@dataclass(frozen=True)
class Schema:
    tags: frozenset[str]
    fields: frozenset[str]


def contract_schema() -> dict[str, Schema]:
    """measurement -> tags and fields, for both buckets."""
    schema = {name: Schema(frozenset(cls.tag_names), frozenset(cls.field_names()))
              for name, cls in record_types().items()}
    for raw in raw_schemas().values():
        schema[raw.measurement] = Schema(frozenset(tag for tag, _ in raw.tags),
                                         frozenset(raw.field_types()))
    return schema


@dataclass
class Names:
    measurements: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)
    defined: set[str] = field(default_factory=set)


_STR = r'"([^"\\]*)"'
_LIST = r"\[([^\]]*)\]"


def _strings(text: str) -> list[str]:
    return re.findall(_STR, text)


def _strip_comments(query: str) -> str:
    return re.sub(r"//[^\n]*", "", query)


def names(query: str) -> Names:
    """What a Flux query names (see the module docstring for the conventions)."""
    q = _strip_comments(query)
    n = Names()
    n.measurements.update(re.findall(r'_measurement"?\]?\s*==\s*' + _STR, q))
    n.fields.update(re.findall(r'_field"?\]?\s*==\s*' + _STR, q))
    for body in re.findall(r"contains\(value:\s*r\._field,\s*set:\s*" + _LIST, q):
        n.fields.update(_strings(body))
    for body in re.findall(r"\bfields:\s*" + _LIST, q):
        n.fields.update(_strings(body))
    for body in re.findall(r"(?:\bfields:|_field\s*=~)\s*/\^\(([A-Za-z0-9_|]+)\)\$/", q):
        n.fields.update(body.split("|"))
    n.columns.update(re.findall(r"\br\.([A-Za-z_][A-Za-z0-9_]*)", q))
    n.columns.update(re.findall(r'\br\["([^"]+)"\]', q))
    for body in re.findall(r"\b(?:columns|rowKey|columnKey):\s*" + _LIST, q):
        n.columns.update(_strings(body))
    n.columns.update(re.findall(r"\b(?:column|valueColumn|tag):\s*" + _STR, q))
    for body in re.findall(r"\(\{(.*?)\}\)", q, flags=re.S):
        n.defined.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*:", body))
    n.defined.update(re.findall(r"\bset\(key:\s*" + _STR, q))
    n.defined.update(re.findall(r"\bas:\s*" + _STR, q))
    return n


def check(query: str, *, need_field: bool = True,
          schema: dict[str, Schema] | None = None) -> list[str]:
    """Problems with a query's names (empty = it names only what the contract defines)."""
    schema = schema or contract_schema()
    n = names(query)
    problems = [f"unknown measurement {m!r}" for m in sorted(n.measurements - set(schema))]
    known = [schema[m] for m in n.measurements if m in schema]
    tags = set().union(*(s.tags for s in known)) if known else set()
    fields = set().union(*(s.fields for s in known)) if known else set()
    if not n.measurements:
        problems.append("names no measurement")
    problems += [f"field {f!r} is not a field of {sorted(n.measurements)}"
                 for f in sorted(n.fields - fields)]
    allowed = tags | fields | BUILTIN_COLUMNS | n.defined
    problems += [f"column {c!r} is no tag or field of {sorted(n.measurements)}"
                 for c in sorted(n.columns - allowed)]
    referenced = n.columns | n.fields
    if not referenced & tags:
        problems.append("names no tag")
    if need_field and not (referenced & fields):
        problems.append("names no field")
    return problems
