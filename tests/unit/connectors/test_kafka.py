"""KafkaSink and LibrdkafkaSink never wait forever: a broker that accepts connections but never
answers (a hung or half-dead Kafka) makes `start` and `send` fail within the timeout, so
ingest's retry loop keeps running and recovers when Kafka does (the real outage is in
tests/integration)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from aiokafka.errors import KafkaError

from connectors.kafka import KafkaSink, LibrdkafkaSink, OutRecord, _Librdkafka
from models.settings import KafkaSettings


@pytest.fixture
def black_hole() -> Iterator[str]:
    """host:port of a TCP server that accepts and then never says anything."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def test_start_against_a_silent_broker_fails_in_time(black_hole: str) -> None:
    sink = KafkaSink(KafkaSettings(bootstrap=black_hole), timeout_s=2.0)

    async def run() -> float:
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, OSError)):
            await sink.start()
        return time.monotonic() - t0

    elapsed = asyncio.run(asyncio.wait_for(run(), 60))
    assert sink._producer is None
    print(f"start gave up after {elapsed:.1f}s")


def test_send_without_a_broker_raises_and_the_next_send_retries(black_hole: str) -> None:
    sink = KafkaSink(KafkaSettings(bootstrap=black_hole), timeout_s=2.0)

    async def run() -> int:
        failures = 0
        for _ in range(2):
            try:
                await sink.send([OutRecord("t", b"k", b"v")])
            except Exception:  # TimeoutError or a KafkaError, never a hang
                failures += 1
        await sink.close()
        return failures

    assert asyncio.run(asyncio.wait_for(run(), 60)) == 2


def test_librdkafka_start_against_a_silent_broker_fails_in_time(black_hole: str) -> None:
    sink = LibrdkafkaSink(KafkaSettings(bootstrap=black_hole), timeout_s=2.0)

    async def run() -> float:
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, OSError)):
            await sink.start()
        return time.monotonic() - t0

    assert asyncio.run(asyncio.wait_for(run(), 60)) < 10
    assert sink._producer is None


def test_librdkafka_send_without_a_broker_raises_and_the_next_send_retries(
        black_hole: str) -> None:
    sink = LibrdkafkaSink(KafkaSettings(bootstrap=black_hole), timeout_s=2.0)

    async def run() -> int:
        failures = 0
        for _ in range(2):
            try:
                await sink.send([OutRecord("t", b"k", b"v")])
            except (KafkaError, TimeoutError):
                failures += 1
        await sink.close()
        return failures

    assert asyncio.run(asyncio.wait_for(run(), 60)) == 2


def test_librdkafka_refusal_is_a_kafka_error_and_the_producer_is_replaced(
        black_hole: str) -> None:
    """A record librdkafka refuses at once (over `message.max.bytes`) fails the send with
    aiokafka's `KafkaError`, as every other Kafka failure of a sink does."""
    sink = LibrdkafkaSink(KafkaSettings(bootstrap=black_hole), timeout_s=2.0)

    async def run() -> None:
        sink._producer = _Librdkafka(sink._config())  # as if started
        with pytest.raises(KafkaError, match="refused a record"):
            await sink.send([OutRecord("t", b"k", b"x" * (5 << 20))])
        assert sink._producer is None
        await sink.close()

    asyncio.run(asyncio.wait_for(run(), 60))
