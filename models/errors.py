"""citystream's exceptions: one root, so callers can catch everything we raise on purpose.

    CitystreamError
    ├── CityModelError          the city TOML is unreadable or invalid (names file and field)
    ├── UnknownEntityError      (also KeyError) no district / junction / route with that id
    ├── RecordError             (also ValueError) a KPI/alert record cannot become a line
    └── SinkError               writing to a sink failed
        └── BackpressureError   the sink is overloaded; retry after `retry_after_s`

`citystream.settings.ConfigError` (a ValueError) reports bad environment settings at start-up.
Decoding never raises: bad input becomes a `models.deadletter.DeadLetter`, not an exception.
"""

from __future__ import annotations


class CitystreamError(Exception):
    """Root of every exception citystream raises on purpose."""


class CityModelError(CitystreamError):
    """The city model file cannot be read or does not validate."""


class UnknownEntityError(CitystreamError, KeyError):
    """A lookup by district slug, junction id or route id found nothing."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RecordError(CitystreamError, ValueError):
    """A record cannot be encoded (e.g. a tag value that line protocol cannot carry)."""


class SinkError(CitystreamError):
    """A sink failed to write; the points were not stored."""


class BackpressureError(SinkError):
    """The sink asked us to slow down; nothing was written, retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
