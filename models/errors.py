"""citystream's exceptions: one root, so callers can catch everything we raise on purpose.

Every exception a component raises derives from `CitystreamError`. The general ones are defined
here; one that belongs to a single component is defined beside the code that raises it (the
module in brackets) and derives from a class here, so the whole tree is this one:

    CitystreamError
    ├── ConfigError             (also ValueError) a CITYSTREAM_* setting is invalid (names it)
    │                           [models.settings]
    ├── CityModelError          the city TOML is unreadable or invalid (names file and field)
    ├── UnknownEntityError      (also KeyError) no district / junction / route with that id
    ├── RecordError             (also ValueError) a KPI/alert record cannot become a line
    ├── SinkError               writing to a sink failed
    │   ├── BackpressureError   the sink is overloaded; retry after `retry_after_s`
    │   │   └── SinkBackpressure  InfluxDB cannot take the write now [connectors.influxdb.write]
    │   └── PointsRejected      InfluxDB refused the data itself [connectors.influxdb.write]
    ├── ProvisionError          InfluxDB's management API refused a request or did not answer;
    │                           `status` is the HTTP status (None: no answer)
    ├── StackError              the local stack (deploy/local) cannot install or start a service;
    │                           the message says how to fix it
    ├── TransportError          the simulator's MQTT broker cannot be reached, refused us, or
    │                           stopped acknowledging [sensors_sim.transport]
    ├── FellBehind              the simulated clock fell so far behind the wall clock that
    │                           readings would be too old [sensors_sim.runner]
    ├── HistoryError            `citystream import` cannot start or go on (an unreadable
    │                           input, a state of other inputs, InfluxDB gone too long)
    │                           [ingest.history]
    ├── MappingError            a CSV mapping cannot work (names the key or column)
    │                           [ingest.csvmap]
    ├── CheckFailed             a service `citystream check` probes refused or did not answer
    │                           [citystream.check]
    ├── ReadBackError           skipped records could not be read back from Kafka
    │                           [streams.offsets]
    ├── OffsetLookupError       Kafka did not answer an offset look-up [streams.offsets]
    ├── ReadError               InfluxDB could not be read for a report [analysis.influx]
    ├── EraseError              counting, deleting or the audit log failed [analysis.erase]
    ├── SourceError             a dashboard query failed [dashboard.source]
    ├── HubFull                 too many dashboard pages are connected [dashboard.live]
    ├── StoreError              an open-data query failed [opendata.store]
    │   └── StoreTimeout        InfluxDB did not answer within the query timeout
    ├── TimeError               (also ValueError) an open-data `from`/`to` is not an RFC 3339
    │                           date-time [opendata.tables]
    └── PublicError             an open-data request refused; `status` is the HTTP status the
                                client gets [opendata.server]

Third-party errors are mapped where we call the third party: `connectors.influxdb.admin` turns
urllib's HTTP and connection errors into `ProvisionError` (the sentences: one mapping,
`connectors.influxdb.errors`); `deploy.local` turns failed commands, busy ports and services that
die at start-up into `StackError`.
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
