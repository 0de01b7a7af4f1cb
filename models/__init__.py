"""Data models shared by every component.

`city` (the city model file), `readings` (validated sensor readings), `deadletter` (rejected
input), `records` (what goes to InfluxDB) and `errors` (the exception tree). Import from the
modules; this package re-exports nothing so importing one model stays cheap.
"""
