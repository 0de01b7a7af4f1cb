"""The dashboard's web server (aiohttp): the page, its two static files, and the event stream.

Routes:

    GET /                 the page (dashboard/static/index.html)
    GET /static/<file>    dashboard.css, dashboard.js, favicon.svg (nothing else is served)
    GET /events           Server-Sent Events: snapshot, history, quality, tick (see
                          dashboard.live), and ping when nothing else was sent for `heartbeat_s`
    GET /api/snapshot     the latest snapshot as JSON (scripts, checks)
    GET /api/history      the latest history as JSON
    GET /api/quality      the sensors needing attention as JSON
    GET /healthz          {"ok": bool, "influx_ok": bool, "pages": n}

Everything is served from the package: no CDN, no network at run time. Every response carries
a strict Content-Security-Policy (scripts and styles only from this server, no inline script),
so even a string that slipped into the page as markup could not run; the page itself only ever
writes data with `textContent`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import orjson
from aiohttp import web

from dashboard.live import Hub, HubFull, Poller

log = logging.getLogger(__name__)

STATIC: Final = Path(__file__).resolve().parent / "static"
PAGES: Final[dict[str, tuple[str, str]]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HUB: Final = web.AppKey("hub", Hub)
HEARTBEAT_S: Final = web.AppKey("heartbeat_s", float)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


def _page(body: bytes, content_type: str) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers={"Content-Type": content_type,
                                                "Cache-Control": "no-cache"})

    return handler


def _latest(event: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        data = request.app[HUB].last(event)
        if data is None:
            raise web.HTTPServiceUnavailable(text="InfluxDB has not been read yet; retry shortly")
        return web.Response(body=data, content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    return handler


async def _healthz(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    tick = hub.last("tick")
    influx_ok = bool(orjson.loads(tick)["ok"]) if tick else False
    return web.json_response({"ok": True, "influx_ok": influx_ok, "pages": hub.clients},
                             headers={"Cache-Control": "no-store"})


async def _events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    try:
        sub = hub.subscribe()
    except HubFull as exc:
        raise web.HTTPServiceUnavailable(text=str(exc)) from None
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no", **SECURITY_HEADERS})
    try:
        await response.prepare(request)
        await response.write(b"retry: 3000\n\n")
        while not hub.closed:
            events = await sub.next(request.app[HEARTBEAT_S])
            if not events:
                await response.write(b"event: ping\ndata: {}\n\n")
            for name, data in events:
                await response.write(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")
    except ConnectionError:
        pass  # the page went away
    finally:
        hub.unsubscribe(sub)
    return response


def create_app(hub: Hub, *, heartbeat_s: float = 15.0) -> web.Application:
    """The web application over `hub` (the poller runs separately, see `serve`)."""
    app = web.Application(middlewares=[_security_headers])
    app[HUB] = hub
    app[HEARTBEAT_S] = heartbeat_s
    for path, (name, content_type) in PAGES.items():
        app.router.add_get(path, _page((STATIC / name).read_bytes(), content_type))
    app.router.add_get("/events", _events)
    app.router.add_get("/api/snapshot", _latest("snapshot"))
    app.router.add_get("/api/history", _latest("history"))
    app.router.add_get("/api/quality", _latest("quality"))
    app.router.add_get("/healthz", _healthz)

    async def close_streams(_app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(close_streams)
    return app


async def serve(poller: Poller, host: str, port: int,
                on_ready: Callable[[str], None] | None = None) -> None:
    """Run the poller and the web server until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(poller.hub), handle_signals=False, access_log=None,
                           shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        polling = asyncio.create_task(poller.run(stop))
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if on_ready:
            on_ready(f"http://{shown}:{port}/")
        await stop.wait()
        await polling
    finally:
        await runner.cleanup()
        await asyncio.to_thread(poller.source.close)
