"""citystream's exceptions: one root, so callers can catch everything we raise on purpose.

    CitystreamError
    ├── ConfigError             (also ValueError) a CITYSTREAM_* setting is invalid (names it);
    │                           defined in `models.settings`
    ├── CityModelError          the city TOML is unreadable or invalid (names file and field)
    ├── UnknownEntityError      (also KeyError) no district / junction / route with that id
    ├── RecordError             (also ValueError) a KPI/alert record cannot become a line
    ├── SinkError               writing to a sink failed
    │   └── BackpressureError   the sink is overloaded; retry after `retry_after_s`
    ├── ProvisionError          InfluxDB's management API refused a request or did not answer;
    │                           `status` is the HTTP status (None: no answer)
    └── StackError              the local stack (deploy/local) cannot install or start a service;
                                the message says how to fix it

Third-party errors are mapped where we call the third party: `deploy.influxdb.admin` turns
urllib's HTTP and connection errors into `ProvisionError`; `deploy.local` turns failed commands,
busy ports and services that die at start-up into `StackError`.
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


class ProvisionError(CitystreamError):
    """InfluxDB refused a management request (buckets, tokens, tasks, set-up) or did not answer;
    the message names the request and InfluxDB's reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StackError(CitystreamError):
    """A local-stack service cannot be installed or started; the message says how to fix it."""
