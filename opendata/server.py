"""The open-data web service (aiohttp): anonymous, read-only, licensed under the OGL v3.0.

Routes (GET and HEAD; OPTIONS answers CORS pre-flights; any other method is 405):

    GET /                                   an index: the catalogue and every dataset's URLs
    GET /catalog.jsonld                     the DCAT catalogue (`opendata.catalog`)
    GET /data/<measurement>.csv|.json       a dataset's rows (`opendata.tables`), `from`/`to`
    GET /ngsi-ld/v1/entities?type=KeyPerformanceIndicator[&options=keyValues]
    GET /ngsi-ld/v1/entities/<id>           one KeyPerformanceIndicator (`opendata.ngsi`)
    GET /healthz                            {"ok": true}

Every response, errors and 304s included, carries the licence (`Link: <OGL>; rel="license"`)
and CORS headers (`Access-Control-Allow-Origin: *`). Answers carry a strong `ETag` (a hash of
the body) and `Last-Modified` (the newest window end they hold) and honour `If-None-Match` and
`If-Modified-Since` with 304.

Public-service limits: at most `max_days` (31) days and `max_rows` rows a request (400 with the
reason), a timeout on every InfluxDB query (504), at most `max_concurrent` queries at once; the
same cold request asked by many clients at once is computed once. Responses whose windows can no
longer change (their `to` is older than the late-data horizon plus the grace) are cached in
memory (`cache_bytes`, for `settled_ttl_s`) and sent with a long `max-age`; the others are
computed per request (or cached `live_cache_s` when set).

Nothing from the request reaches Flux: the measurement must name a published dataset, times are
parsed into integers, options are compared with fixed words.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

import orjson
from aiohttp import web
from multidict import MultiMapping

from models.errors import CitystreamError
from opendata import ngsi
from opendata.catalog import LICENSE_LINK, OGL, catalog
from opendata.datasets import Dataset
from opendata.store import Store, StoreError, StoreTimeout
from opendata.tables import NS_PER_MS, TimeError, parse_time, rows, to_csv, to_json

log = logging.getLogger(__name__)

DAY_NS: Final = 86_400 * 1_000_000_000
ALLOWED: Final = "GET, HEAD, OPTIONS"
CORS_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": ("ETag, Last-Modified, Link, Content-Disposition, "
                                      "NGSILD-Results-Count"),
}
PREFLIGHT_HEADERS: Final = {
    "Access-Control-Allow-Methods": ALLOWED,
    "Access-Control-Allow-Headers": ("Accept, Accept-Language, Content-Language, Content-Type, "
                                     "If-None-Match, If-Modified-Since, Link, NGSILD-Tenant"),
    "Access-Control-Max-Age": "86400",
    "Allow": ALLOWED,
}
SAFETY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "cross-origin",
}
NGSI_ERRORS: Final = "https://uri.etsi.org/ngsi-ld/errors/"
CSV_TYPE: Final = "text/csv; charset=utf-8; header=present"
JSON_TYPE: Final = "application/json"
JSONLD_TYPE: Final = "application/ld+json"
LIVE_MAX_AGE_S: Final = 60
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Options:
    """How the service publishes (from `OpenDataSettings` and the city file)."""

    base_url: str
    title: str
    publisher: str
    min_meters: int = 5
    max_days: int = 31
    max_rows: int = 100_000
    grace_s: int = 120
    horizon_s: int = 86_400
    lookback_d: int = 7
    settled_ttl_s: float = 3600.0
    live_cache_s: float = 0.0
    cache_bytes: int = 64 * 1024 * 1024


class PublicError(CitystreamError):
    """A request the service refuses; `message` is shown to the client."""

    def __init__(self, status: int, message: str, ngsi_type: str = "BadRequestData") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.ngsi_type = ngsi_type


@dataclass(frozen=True)
class Body:
    """A computed answer: what to send and how it may be cached."""

    data: bytes
    content_type: str
    last_modified_s: int
    max_age_s: int
    headers: tuple[tuple[str, str], ...] = ()
    value: Any = field(default=None, compare=False)  # the parsed form (NGSI-LD entities)

    @cached_property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:32] + '"'


class ResponseCache:
    """Computed answers by key: at most `max_bytes`, each for its own time to live; a key that
    is being computed is computed once for every client asking meanwhile."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Body]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[Body]] = {}
        self.size = 0
        self.hits = 0
        self.misses = 0

    def _drop(self, key: Hashable) -> None:
        _expires, body = self._entries.pop(key)
        self.size -= len(body.data)

    async def get(self, key: Hashable, ttl_s: float,
                  build: Callable[[], Awaitable[Body]]) -> Body:
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self.clock():
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self._drop(key)
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        task = asyncio.ensure_future(build())
        self._inflight[key] = task
        try:
            body = await asyncio.shield(task)
        finally:
            self._inflight.pop(key, None)
        if ttl_s > 0 and len(body.data) <= self.max_bytes // 4:
            self._entries[key] = (self.clock() + ttl_s, body)
            self.size += len(body.data)
            while self.size > self.max_bytes:
                self._drop(next(iter(self._entries)))
        return body


def _http_date(seconds: int) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


def _not_modified(request: web.Request, body: Body) -> bool:
    match = request.headers.get("If-None-Match")
    if match is not None:
        return _etag_matches(match, body.etag)
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        parsed = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError):
        return False
    if parsed.tzinfo is None:
        return False
    return body.last_modified_s <= int(parsed.timestamp())


def send(request: web.Request, body: Body) -> web.Response:
    """`body` as a 200, or a 304 when the client's copy is current."""
    headers = {"ETag": body.etag, "Last-Modified": _http_date(body.last_modified_s),
               "Cache-Control": f"public, max-age={body.max_age_s}", **dict(body.headers)}
    if _not_modified(request, body):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body.data, headers={**headers, "Content-Type": body.content_type})


def error_response(request: web.Request, status: int, message: str,
                   ngsi_type: str = "BadRequestData") -> web.Response:
    """A JSON error (NGSI-LD ProblemDetails under /ngsi-ld/); never cached."""
    headers = {"Cache-Control": "no-store"}
    if status == 405:
        headers["Allow"] = ALLOWED
    if status in (503, 504):
        headers["Retry-After"] = "30"
    if request.path.startswith("/ngsi-ld/"):
        data: dict[str, Any] = {"type": NGSI_ERRORS + ngsi_type, "title": message,
                                "status": status, "detail": message}
    else:
        data = {"error": message, "status": status}
    return web.Response(status=status, body=orjson.dumps(data),
                        headers={**headers, "Content-Type": JSON_TYPE})


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise PublicError(400, f"`{name}` is given {len(values)} times; give it once")
    return values[0] if values else None


class OpenData:
    """The service's state: datasets, store, cache and clock; the handlers are its methods."""

    def __init__(self, store: Store, datasets: Mapping[str, Dataset], options: Options,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.datasets = dict(datasets)
        self.o = options
        self.clock = clock
        self.cache = ResponseCache(options.cache_bytes)
        self.started_s = clock() // 1_000_000_000

    # -- helpers -----------------------------------------------------------------------------

    def _now_ns(self) -> int:
        return self.clock() // 1_000_000_000 * 1_000_000_000

    def _settled(self, stop_ns: int, now_ns: int) -> bool:
        return stop_ns <= now_ns - (self.o.horizon_s + self.o.grace_s) * 1_000_000_000

    def _range(self, request: web.Request, now_ns: int) -> tuple[int, int]:
        given_to, given_from = _single(request.query, "to"), _single(request.query, "from")
        try:
            stop = parse_time(given_to, "to") if given_to is not None else now_ns
            start = parse_time(given_from, "from") if given_from is not None else stop - DAY_NS
        except TimeError as exc:
            raise PublicError(400, str(exc)) from None
        if start >= stop:
            raise PublicError(400, "`from` must be before `to` (window ends in [from, to))")
        if stop - start > self.o.max_days * DAY_NS:
            days = (stop - start) / DAY_NS
            raise PublicError(400, f"at most {self.o.max_days} days a request (asked for "
                                   f"{days:.1f} days); split the period into several requests")
        return max(start, 0), stop

    # -- handlers ----------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        base = self.o.base_url

        async def build() -> Body:
            data = {
                "title": self.o.title, "publisher": self.o.publisher, "license": OGL,
                "catalog": f"{base}/catalog.jsonld",
                "ngsi-ld": f"{base}/ngsi-ld/v1/entities?type=KeyPerformanceIndicator",
                "datasets": {name: {"title": d.title, "csv": f"{base}/data/{name}.csv",
                                    "json": f"{base}/data/{name}.json"}
                             for name, d in self.datasets.items()},
            }
            return Body(orjson.dumps(data), JSON_TYPE, self.started_s, 3600)

        return send(request, await self.cache.get(("index",), 3600.0, build))

    async def catalog(self, request: web.Request) -> web.StreamResponse:
        async def build() -> Body:
            now_ns = self.clock()
            try:
                coverage = await self.store.coverage(list(self.datasets.values()), now_ns)
            except StoreError as exc:
                log.warning("catalogue without temporal coverage: %s", exc)
                coverage = {}
            data = catalog(self.o.base_url, self.datasets, title=self.o.title,
                           publisher=self.o.publisher, coverage=coverage,
                           now_ms=now_ns // NS_PER_MS)
            newest = max((end for _, end in coverage.values()), default=None)
            modified = newest // 1000 if newest is not None else self.started_s
            return Body(orjson.dumps(data), JSONLD_TYPE, modified, LIVE_MAX_AGE_S)

        return send(request, await self.cache.get(("catalog",), self.o.live_cache_s, build))

    async def data(self, request: web.Request) -> web.StreamResponse:
        name, fmt = request.match_info["name"], request.match_info["fmt"]
        dataset = self.datasets.get(name)
        if dataset is None or fmt not in ("csv", "json"):
            raise PublicError(404, f"no published dataset {name}.{fmt}; /catalog.jsonld lists "
                                   "them")
        now_ns = self._now_ns()
        start, stop = self._range(request, now_ns)
        settled = self._settled(stop, now_ns)

        async def build() -> Body:
            points = await self.store.points(dataset, start, stop, self.o.max_rows + 1)
            if len(points) > self.o.max_rows:
                raise PublicError(400, f"more than {self.o.max_rows} rows in this period; ask "
                                       "for a shorter one (`from`, `to`)")
            table = rows(dataset, points, self.o.min_meters)
            newest = max((p.time_ms for p in points), default=None)
            modified = newest // 1000 if newest is not None else start // 1_000_000_000
            max_age = int(self.o.settled_ttl_s) if settled else LIVE_MAX_AGE_S
            if fmt == "csv":
                disposition = f'inline; filename="{name}.csv"'
                return Body(to_csv(dataset.columns, table), CSV_TYPE, modified, max_age,
                            (("Content-Disposition", disposition),))
            return Body(to_json(table), JSON_TYPE, modified, max_age)

        ttl = self.o.settled_ttl_s if settled else self.o.live_cache_s
        return send(request, await self.cache.get(("data", name, fmt, start, stop), ttl, build))

    async def _entities(self) -> list[dict[str, Any]]:
        async def build() -> Body:
            now_ns = self.clock()
            stop = now_ns - self.o.grace_s * 1_000_000_000
            start = stop - self.o.lookback_d * DAY_NS
            points = await self.store.latest(list(self.datasets.values()), start, stop)
            found = ngsi.entities(self.datasets, points, organization=self.o.publisher,
                                  base_url=self.o.base_url, min_meters=self.o.min_meters)
            return Body(b"", JSONLD_TYPE, 0, 0, value=found)

        body = await self.cache.get(("ngsi",), self.o.live_cache_s, build)
        found: list[dict[str, Any]] = body.value
        return found

    def _ngsi_form(self, request: web.Request) -> bool:
        """True for key-values, False for normalized (`options`, `format`)."""
        key_values = False
        options = _single(request.query, "options")
        for option in (options.split(",") if options else []):
            if option in ("keyValues", "simplified"):
                key_values = True
            elif option not in ("normalized", "sysAttrs"):
                raise PublicError(400, "`options` takes keyValues, normalized or sysAttrs")
        form = _single(request.query, "format")
        if form is not None:
            if form not in ("keyValues", "simplified", "normalized"):
                raise PublicError(400, "`format` takes keyValues, simplified or normalized")
            key_values = form != "normalized"
        return key_values

    def _ngsi_body(self, value: Any, key_values: bool, headers: tuple[tuple[str, str], ...],
                   ) -> Body:
        if isinstance(value, list):
            modified = ngsi.newest_modified_ms(value)
            shown: Any = value if key_values else [ngsi.normalized(e) for e in value]
        else:
            modified = ngsi.newest_modified_ms([value])
            shown = value if key_values else ngsi.normalized(value)
        last = modified // 1000 if modified is not None else self.started_s
        return Body(orjson.dumps(shown), JSONLD_TYPE, last, LIVE_MAX_AGE_S, headers)

    async def entities(self, request: web.Request) -> web.StreamResponse:
        kinds = _single(request.query, "type")
        if not kinds:
            raise PublicError(400, "`type` is required: type=KeyPerformanceIndicator")
        key_values = self._ngsi_form(request)
        ids = _single(request.query, "id")
        limit_text, offset_text = _single(request.query, "limit"), _single(request.query,
                                                                            "offset")
        try:
            limit = int(limit_text) if limit_text is not None else None
            offset = int(offset_text) if offset_text is not None else 0
        except ValueError:
            raise PublicError(400, "`limit` and `offset` are whole numbers") from None
        if (limit is not None and not 0 <= limit <= 10_000) or not 0 <= offset <= 10**9:
            raise PublicError(400, "`limit` is 0..10000, `offset` 0 or more")
        count = _single(request.query, "count")
        if count not in (None, "true", "false"):
            raise PublicError(400, "`count` is true or false")
        found: list[dict[str, Any]] = []
        if {ngsi.ENTITY_TYPE, ngsi.ENTITY_TYPE_IRI} & set(kinds.split(",")):
            found = await self._entities()
        if ids is not None:
            wanted = set(ids.split(","))
            found = [e for e in found if e["id"] in wanted]
        total = len(found)
        found = found[offset:offset + limit] if limit is not None else found[offset:]
        headers: tuple[tuple[str, str], ...] = ()
        if count == "true":
            headers = (("NGSILD-Results-Count", str(total)),)
        return send(request, self._ngsi_body(found, key_values, headers))

    async def entity(self, request: web.Request) -> web.StreamResponse:
        wanted = request.match_info["entity_id"]
        key_values = self._ngsi_form(request)
        if not wanted.startswith(ngsi.URN_PREFIX):
            raise PublicError(404, "no such entity", "ResourceNotFound")
        for found in await self._entities():
            if found["id"] == wanted:
                return send(request, self._ngsi_body(found, key_values, ()))
        raise PublicError(404, "no such entity (or its latest window is withheld)",
                          "ResourceNotFound")

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True}, headers={"Cache-Control": "no-store"})


def _with_public_headers(response: web.StreamResponse) -> None:
    links = response.headers.getall("Link", [])
    if LICENSE_LINK not in links:
        response.headers.add("Link", LICENSE_LINK)
    for name, value in {**CORS_HEADERS, **SAFETY_HEADERS}.items():
        response.headers.setdefault(name, value)


async def _on_prepare(_request: web.Request, response: web.StreamResponse) -> None:
    _with_public_headers(response)


async def _resolve(request: web.Request, path: str) -> web.Request:
    """The request re-routed to `path` (a URL with doubled slashes: `http://host/` + `/x`)."""
    clone = request.clone(rel_url=request.rel_url.with_path(path))
    match = await request.app.router.resolve(clone)
    match.add_app(request.app)
    clone._match_info = match  # the same as aiohttp's own normalize_path_middleware
    return clone


@web.middleware
async def _public(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        return error_response(request, 405, f"{request.method} is not allowed: this service "
                              f"is read-only ({ALLOWED})")
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)
    if request.path.startswith("//"):
        request = await _resolve(request, "/" + request.path.lstrip("/"))
        handler = request.match_info.handler
    try:
        return await handler(request)
    except PublicError as exc:
        return error_response(request, exc.status, exc.message, exc.ngsi_type)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = "not found; /catalog.jsonld lists the datasets" if exc.status == 404 \
            else exc.reason
        kind = "ResourceNotFound" if exc.status == 404 else "BadRequestData"
        return error_response(request, exc.status, message, kind)
    except StoreTimeout as exc:
        log.warning("InfluxDB query timed out: %s", exc)
        return error_response(request, 504, "the KPI store did not answer in time; ask for a "
                              "shorter period or try again later", "InternalError")
    except StoreError as exc:
        log.warning("InfluxDB query failed: %s", exc)
        return error_response(request, 503, "the KPI store is unavailable; try again later",
                              "InternalError")


def create_app(service: OpenData) -> web.Application:
    """The web application over `service` (see module docstring)."""
    app = web.Application(middlewares=[_public])
    app.on_response_prepare.append(_on_prepare)
    app.router.add_get("/", service.index)
    app.router.add_get("/catalog.jsonld", service.catalog)
    app.router.add_get("/data/{name}.{fmt}", service.data)
    app.router.add_get("/ngsi-ld/v1/entities", service.entities)
    app.router.add_get("/ngsi-ld/v1/entities/{entity_id}", service.entity)
    app.router.add_get("/healthz", service.healthz)
    return app


async def serve(service: OpenData, host: str, port: int,
                on_ready: Callable[[str], None] | None = None) -> None:
    """Run the web server until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(service), handle_signals=False, access_log=None,
                           shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if on_ready:
            on_ready(f"http://{shown}:{port}/")
        await stop.wait()
    finally:
        await runner.cleanup()
        await service.store.close()
