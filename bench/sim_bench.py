"""Benchmark the simulator: the generator alone, with recording, and through an MQTT broker.

    .venv/bin/python -m bench.sim_bench                     # generator only
    .venv/bin/python -m bench.sim_bench --spawn-mosquitto   # also through a private Mosquitto
    .venv/bin/python -m bench.sim_bench --mqtt 127.0.0.1:1883 --username u --password p

Every case runs for --seconds wall seconds without pacing (as fast as it can; timestamps are
not checked against the wall clock) and prints readings/s and messages/s; broker cases count
until every PUBACK is in.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.local.stack import free_port
from models.city import load_city
from sensors_sim.generator import SimConfig, Simulation
from sensors_sim.recording import Recorder
from sensors_sim.runner import Pacing, Summary, run
from sensors_sim.transport import DryRunTransport, MqttTransport, Transport
from tests.support import Process

CASES = (  # (size, batch)
    (1.0, 1),
    (10.0, 1),
    (1.0, 10),
    (10.0, 10),
)


def _one(size: float, batch: int, seconds: float, transport: Transport,
         record: Path | None = None) -> Summary:
    city = load_city()
    start = int(time.time() * 1000) - 23 * 3_600_000
    sim = Simulation(city, SimConfig(start_ms=start, seed=1, size=size, batch=batch))
    recorder = Recorder(record) if record is not None else None
    return run(sim.messages(), transport, Pacing(realtime=False), sim_start_ms=start,
               duration_s=seconds, recorder=recorder)


def _row(label: str, s: Summary) -> None:
    print(f"{label:<44} {s.readings_per_s:>12,.0f} {s.messages_per_s:>10,.0f} "
          f"{s.transport.unacked:>8}")


@contextmanager
def _mosquitto() -> Iterator[tuple[str, int]]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "max_inflight_messages 0\nmax_queued_messages 1000000\n"
                        "persistence false\nlog_dest none\n")
        proc = Process("mosquitto", [binary, "-c", str(conf)], os.environ,
                       Path(tmp) / "mosquitto.log").start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            yield "127.0.0.1", port
        finally:
            proc.stop(timeout_s=10)


def main() -> None:
    """Run the cases named in the module docstring and print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.sim_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="wall seconds per case")
    parser.add_argument("--mqtt", help="host:port of a broker to publish through")
    parser.add_argument("--spawn-mosquitto", action="store_true",
                        help="start a private anonymous Mosquitto on a free port")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--gateways", type=int, default=4)
    args = parser.parse_args()

    print(f"{'case':<44} {'readings/s':>12} {'msg/s':>10} {'unacked':>8}")
    for size, batch in CASES:
        _row(f"generator, size {size:g}, batch {batch}",
             _one(size, batch, args.seconds, DryRunTransport()))
    with tempfile.TemporaryDirectory() as tmp:
        _row("generator + --record, size 1, batch 1",
             _one(1.0, 1, args.seconds, DryRunTransport(), Path(tmp) / "r.jsonl"))

    def through(host: str, port: int) -> None:
        for size, batch in CASES:
            transport = MqttTransport(host, port, args.username, args.password,
                                      gateways=args.gateways)
            _row(f"mqtt {host}:{port} x{args.gateways}, size {size:g}, batch {batch}",
                 _one(size, batch, args.seconds, transport))

    if args.mqtt:
        host, _, port = args.mqtt.rpartition(":")
        through(host, int(port))
    if args.spawn_mosquitto:
        with _mosquitto() as (host, port):
            through(host, port)


if __name__ == "__main__":
    main()
