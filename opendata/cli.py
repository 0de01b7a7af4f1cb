"""`citystream opendata`: the city's KPIs as open data (OGL v3.0), anonymous and read-only."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from models.settings import OpenDataSettings

log = logging.getLogger("opendata")


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.option("--host", default=None, envvar="CITYSTREAM_OPENDATA__HOST", show_envvar=True,
              help="Address to listen on [default: 127.0.0.1; 0.0.0.0 for every interface].")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              envvar="CITYSTREAM_OPENDATA__PORT", show_envvar=True,
              help="Port to listen on [default: 8090].")
def opendata(host: str | None, port: int | None) -> None:
    """Serve the city's KPIs as open data under the Open Government Licence v3.0.

    \b
    GET /catalog.jsonld                    DCAT catalogue (register it with a data portal)
    GET /data/<measurement>.csv|.json      rows per window; ?from=&to= (RFC 3339, <= 31 days)
    GET /ngsi-ld/v1/entities?type=KeyPerformanceIndicator[&options=keyValues]

    Reads the kpi bucket with a READ-ONLY token (and refuses a token that can write). Water and
    energy windows with fewer than CITYSTREAM_OPENDATA__MIN_METERS meters are withheld; no raw
    reading, sensor id or vehicle position is ever published. See docs/opendata.md.

    \b
    Settings (env):
      CITYSTREAM_OPENDATA__TOKEN        read-only InfluxDB token (falls back to
                                        CITYSTREAM_INFLUX__READ_TOKEN)
      CITYSTREAM_OPENDATA__MIN_METERS (5), __PUBLIC_URL, __PUBLISHER, __MAX_ROWS (100000),
      __QUERY_TIMEOUT_S (10), __LOOKBACK_D (7), __CACHE_MB (64), __LIVE_CACHE_S (0)
      CITYSTREAM_INFLUX__URL, __ORG, __BUCKET_KPI; CITYSTREAM_CITY__FILE

    \b
    Example, against the local stack (`citystream up` already runs one on its opendata port):
      eval "$(citystream env)" && citystream opendata --port 8091
    """
    from models.settings import settings_and_city
    from opendata.datasets import published
    from opendata.server import OpenData, Options, serve
    from opendata.store import InfluxStore, StoreError

    settings, city = settings_and_city()
    given = {"host": host, "port": port}
    conf = OpenDataSettings.model_validate(
        {**settings.opendata.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    token, token_setting = conf.token, "CITYSTREAM_OPENDATA__TOKEN"
    if token is None or not token.get_secret_value():
        token, token_setting = settings.influx.read_token, "CITYSTREAM_INFLUX__READ_TOKEN"
    if token is None or not token.get_secret_value():
        click.echo("error: no read-only InfluxDB token: set CITYSTREAM_OPENDATA__TOKEN "
                   "(`citystream env` prints the local stack's read token)", err=True)
        sys.exit(2)
    shown = "127.0.0.1" if conf.host in ("0.0.0.0", "") else conf.host
    base = (conf.public_url or f"http://{shown}:{conf.port}").rstrip("/")
    options = Options(
        base_url=base, title=f"{city.name} open data", publisher=conf.publisher or city.name,
        min_meters=conf.min_meters, max_rows=conf.max_rows, grace_s=city.windows.grace_s,
        horizon_s=city.windows.horizon_s, lookback_d=conf.lookback_d,
        live_cache_s=conf.live_cache_s, cache_bytes=conf.cache_mb * 1024 * 1024)

    async def run() -> None:
        store = InfluxStore(settings.influx.url, settings.influx.org, token.get_secret_value(),
                            settings.influx.bucket_kpi, timeout_s=conf.query_timeout_s,
                            token_setting=token_setting)
        try:
            writable = await store.can_write()
        except StoreError as exc:
            log.warning("could not check that %s is read-only: %s", token_setting, exc)
            writable = False
        if writable:
            await store.close()
            click.echo(f"error: {token_setting} can write bucket {settings.influx.bucket_kpi}: "
                       "the open-data service only runs with a READ-ONLY token", err=True)
            sys.exit(2)
        service = OpenData(store, published(city, conf.min_meters), options)

        def ready(url: str) -> None:
            log.info("opendata running on %s (InfluxDB %s, bucket %s, %s, %d datasets, public "
                     "URL %s)", url, settings.influx.url, settings.influx.bucket_kpi,
                     city.name, len(service.datasets), base)

        await serve(service, conf.host, conf.port, ready)

    try:
        asyncio.run(run())
    except OSError as exc:
        click.echo(f"error: cannot listen on {conf.host}:{conf.port} ({exc.strerror or exc}); "
                   "choose another with --port or CITYSTREAM_OPENDATA__PORT", err=True)
        sys.exit(1)
    log.info("opendata stopped")
