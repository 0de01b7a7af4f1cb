"""Points of an import to InfluxDB: batched, written from a thread of their own, retried while
InfluxDB cannot take them; and `CountingWriter`, the writer that stores nothing."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors.influxdb.write import PointWriter, SinkBackpressure, write_isolating
from ingest.history import HistoryError

log = logging.getLogger(__name__)


@dataclass
class CountingWriter:
    """A `PointWriter` that stores nothing and counts lines (dry runs, benchmarks)."""

    lines: dict[str, int] = field(default_factory=dict)

    def write(self, bucket: str, lines: list[str]) -> None:
        self.lines[bucket] = self.lines.get(bucket, 0) + len(lines)

    def close(self) -> None:
        return None


class PointOut:
    """Lines to InfluxDB in requests of `batch_points`, written by a thread of their own so
    that the engine goes on meanwhile. `flush` returns once every line added is written (or
    refused: `take_refused`). While InfluxDB is unavailable a request is retried with backoff
    for up to `retry_for_s` (or until `stopped`), then `flush` raises `HistoryError`."""

    def __init__(self, writer: PointWriter, batch_points: int, retry_for_s: float,
                 stopped: Callable[[], bool] = lambda: False) -> None:
        self.writer = writer
        self.batch_points = batch_points
        self.retry_for_s = retry_for_s
        self.stopped = stopped  # asked to stop: no more retrying
        self.pending: dict[str, list[str]] = {}
        self.refused: list[tuple[str, str, str]] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, list[str]] | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, name="import-writer", daemon=True)
        self._thread.start()

    def add(self, bucket: str, line: str) -> None:
        """Queue one line for `bucket`; called by the partition's thread only. Hands a full
        request to the writing thread (blocking while four are waiting); raises what the
        writing thread failed with, if it did."""
        lines = self.pending.get(bucket)
        if lines is None:
            lines = self.pending[bucket] = []
        lines.append(line)
        if len(lines) >= self.batch_points:
            self._send(bucket)

    def _send(self, bucket: str) -> None:
        self._check()
        self._queue.put((bucket, self.pending.pop(bucket)))

    def flush(self) -> None:
        """Called before a checkpoint: on return every line added so far is in InfluxDB or
        refused (`take_refused`); raises `HistoryError` if InfluxDB did not take them."""
        for bucket in list(self.pending):
            self._send(bucket)
        self._queue.join()
        self._check()

    def take_refused(self) -> list[tuple[str, str, str]]:
        """(bucket, line, InfluxDB's message) of every line refused since the last call."""
        with self._lock:
            refused, self.refused = self.refused, []
        return refused

    def close(self) -> None:
        """Called once, when the partition ends (also on failure): waits up to a minute for
        the requests handed to the writing thread, drops lines not handed over yet (the last
        checkpoint does not count on them), closes the writer."""
        self._queue.put(None)
        self._thread.join(timeout=60)
        self.writer.close()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    self._write(*item)
            except BaseException as exc:  # handed to the partition at its next flush
                self.error = exc
            finally:
                self._queue.task_done()

    def _write(self, bucket: str, lines: list[str]) -> None:
        delay, since = 0.5, None
        while True:
            try:
                refused = write_isolating(self.writer, bucket, lines)
            except SinkBackpressure as exc:
                now = time.monotonic()
                if since is None:
                    since = now
                    log.warning("InfluxDB cannot take the import's points (%s); retrying for "
                                "up to %.0f s", exc, self.retry_for_s)
                if now - since >= self.retry_for_s or self.stopped():
                    raise HistoryError(
                        f"InfluxDB has not taken the import's points for {now - since:.0f} s "
                        f"({exc}); the import stopped at its last checkpoint: run the same "
                        "command again to resume") from None
                time.sleep(max(delay, min(exc.retry_after_s, 30.0)))
                delay = min(delay * 2, 30.0)
                continue
            if since is not None:
                log.warning("InfluxDB takes the import's points again")
            if refused:
                with self._lock:
                    self.refused.extend((bucket, lines[i], message) for i, message in refused)
            return

