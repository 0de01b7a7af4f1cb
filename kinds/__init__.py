"""Sensor kinds, one module each: everything particular to a kind in one place.

A Python kind's module holds its reading model, its KPI record (with the alert rules a point is
judged by), its raw-point schema, its engine maths and its display metadata, and ends with
`KIND = KindSpec(...)`. The registry (`models.kinds`) lists the modules, one line per kind;
everything else (topics, decoding, records, line protocol, the worker's agents, dashboards,
reports, the simulator) iterates the registry. `kinds.feed` builds the same interface for a
feed declared in the city file.
"""
