"""`citystream dashboard`: the live operator dashboard, served by citystream itself."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from models.settings import DashboardSettings

log = logging.getLogger("dashboard")


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.option("--host", default=None, envvar="CITYSTREAM_DASHBOARD__HOST", show_envvar=True,
              help="Address to listen on [default: 127.0.0.1; 0.0.0.0 for every interface].")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              envvar="CITYSTREAM_DASHBOARD__PORT", show_envvar=True,
              help="Port to listen on [default: 8080].")
@click.option("--poll", "poll_s", default=None, type=click.FloatRange(0.2, 3600),
              envvar="CITYSTREAM_DASHBOARD__POLL_S", show_envvar=True,
              help="Seconds between InfluxDB polls; one poller serves every page [default: 5].")
def dashboard(host: str | None, port: int | None, poll_s: float | None) -> None:
    """Serve the live operator dashboard: KPIs against targets, 24 h charts, active alerts and
    the sensors needing attention.

    Reads the kpi bucket of InfluxDB (one poller for every open page) and pushes changes to the
    pages over Server-Sent Events; the page needs nothing from the internet. Districts,
    junctions and routes come from the city file, so those without data yet are shown as such,
    and so does a panel per feed the city file declares. Every KPI says how many sensors it was
    computed from; sensors whose latest hour of sensor_quality scored below the threshold, had
    rejected readings or were stuck are listed worst first, with what is wrong and since when.

    \b
    Settings (env):
      CITYSTREAM_DASHBOARD__TOKEN   a READ-ONLY InfluxDB token (the local stack makes one;
                                    falls back to CITYSTREAM_INFLUX__TOKEN, with a warning)
      CITYSTREAM_DASHBOARD__HISTORY_H (24), __HISTORY_REFRESH_S (60), __LOOKBACK_D (7),
      __QUERY_TIMEOUT_S (10)
      CITYSTREAM_QUALITY__MIN_SCORE (80): a sensor scoring below it needs attention
      CITYSTREAM_INFLUX__URL, __ORG, __BUCKET_KPI; CITYSTREAM_CITY__FILE

    \b
    Example, against the local stack (`citystream up` already runs one on its dashboard port):
      eval "$(citystream env)" && citystream dashboard --port 8090
    """
    from dashboard.live import Hub, Poller, PollerOptions
    from dashboard.server import serve
    from dashboard.source import InfluxSource
    from models.settings import settings_and_city

    settings, city = settings_and_city()
    given = {"host": host, "port": port, "poll_s": poll_s}
    dash = DashboardSettings.model_validate(
        {**settings.dashboard.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    token, token_setting = dash.token, "CITYSTREAM_DASHBOARD__TOKEN"
    if token is None or not token.get_secret_value():
        token, token_setting = settings.influx.token, "CITYSTREAM_INFLUX__TOKEN"
        if token is None or not token.get_secret_value():
            click.echo("error: no InfluxDB token: set CITYSTREAM_DASHBOARD__TOKEN to a read-only "
                       "token (`citystream env` prints the local stack's)", err=True)
            sys.exit(2)
        log.warning("CITYSTREAM_DASHBOARD__TOKEN is not set: reading InfluxDB with "
                    "CITYSTREAM_INFLUX__TOKEN; give the dashboard a read-only token instead")
    source = InfluxSource(settings.influx.url, settings.influx.org, token.get_secret_value(),
                          timeout_s=dash.query_timeout_s, token_setting=token_setting)
    options = PollerOptions(bucket=settings.influx.bucket_kpi, poll_s=dash.poll_s,
                            lookback_d=dash.lookback_d, history_h=dash.history_h,
                            history_refresh_s=dash.history_refresh_s,
                            min_score=settings.quality.min_score)
    poller = Poller(source, city, Hub(), options)

    def ready(url: str) -> None:
        log.info("dashboard running on %s (InfluxDB %s, bucket %s, %s, polling every %.1f s)",
                 url, settings.influx.url, settings.influx.bucket_kpi, city.name, dash.poll_s)

    try:
        asyncio.run(serve(poller, dash.host, dash.port, ready))
    except OSError as exc:
        click.echo(f"error: cannot listen on {dash.host}:{dash.port} ({exc.strerror or exc}); "
                   "choose another with --port or CITYSTREAM_DASHBOARD__PORT", err=True)
        sys.exit(1)
    log.info("dashboard stopped")
