"""The Quix Streams peer: water consumption per district per 15-minute tumbling window, from the
same Kafka topic citystream's worker reads (`<prefix>telemetry.water`: JSON arrays of readings,
keyed by district).

Runs in the benchmark's own venv (`.venv-bench`, quixstreams from PyPI), so it imports nothing
of citystream. The same rules as the contract's register deltas: per meter, the difference to
its latest earlier reading, a negative difference is a reset (the new value is the use), a
reading at the same `ts` is a duplicate, an older one adds no use; windows by event time with
120 s grace, emitted once final. Results go to `<prefix>quix.water`. Settings: BENCH_KAFKA,
BENCH_INPUT, BENCH_OUTPUT, BENCH_GROUP, BENCH_STATE. SIGTERM stops it (Quix's own handler).
"""

from __future__ import annotations

import os
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Sum


def usage(reading: dict[str, Any], state: Any) -> dict[str, Any] | None:
    """Litres used since the meter's previous reading (None for a duplicate)."""
    sensor, ts, volume = reading["sensor_id"], reading["ts_ms"], reading["volume_m3"]
    last = state.get(sensor)
    litres = 0.0
    if last is not None:
        if ts == last[0]:
            return None
        if ts < last[0]:
            return {"ts_ms": ts, "litres": 0.0}
        delta = volume - last[1]
        litres = 1000.0 * (volume if delta < 0 else delta)
    state.set(sensor, [ts, volume])
    return {"ts_ms": ts, "litres": litres}


def main() -> None:
    app = Application(broker_address=os.environ["BENCH_KAFKA"],
                      consumer_group=os.environ["BENCH_GROUP"], auto_offset_reset="earliest",
                      commit_interval=1.0, state_dir=os.environ["BENCH_STATE"],
                      loglevel="WARNING")
    source = app.topic(os.environ["BENCH_INPUT"], key_deserializer="str",
                       value_deserializer="json")
    sink = app.topic(os.environ["BENCH_OUTPUT"], value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(lambda readings: readings, expand=True)
    sdf = sdf.apply(usage, stateful=True)
    sdf = sdf.filter(lambda value: value is not None)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["ts_ms"])
    sdf = (sdf.tumbling_window(duration_ms=900_000, grace_ms=120_000)
           .agg(consumption_l=Sum("litres"), readings=Count())
           .final())
    sdf.to_topic(sink)
    print("quix job running", flush=True)
    app.run()


if __name__ == "__main__":
    main()
