"""The InfluxDB sink on its own, exactly as `citystream worker` runs it beside the KPI engine
(`streams.sink.InfluxSink.from_settings` + `serve`): the benchmark measures the sink stage
with it. `python -m bench.sinkproc`; settings from the CITYSTREAM_* environment; SIGTERM stops
it."""

from __future__ import annotations

import asyncio
import logging
import signal

from models.settings import Settings
from streams.sink import InfluxSink, serve

log = logging.getLogger("bench.sinkproc")


async def _main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sink = InfluxSink.from_settings(Settings.load())
    log.info("sink running")
    await serve(sink, stop)


def main() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main())


if __name__ == "__main__":
    main()
