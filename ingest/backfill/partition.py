"""One partition of an import: its share of the input's messages through `ingest.decode` and
the kinds' engines, their points to InfluxDB, checkpointed (package docstring)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from connectors.influxdb.lineproto import reading_line, to_line_protocol
from ingest.backfill.job import Job
from ingest.backfill.output import PointOut
from ingest.backfill.state import CheckpointStore, Counts, PartFile, PartitionDb
from ingest.decode import decode
from ingest.history import Inputs, Item, Partitioner, Position
from kpi.alerts import AlertKey, AlertRules, AlertSettings
from kpi.engine import KindEngine, Outcome
from kpi.quality import judge, rejected_hour
from kpi.state import Entity
from models import kinds
from models.deadletter import DeadLetter
from models.errors import RecordError
from models.quality import HOUR_MS, SensorQuality
from models.readings import BaseReading
from models.records import Record

log = logging.getLogger(__name__)

NO_AGE_LIMIT_S: Final = 10**10
"""The horizon for a message without a receipt time: none (about 300 years)."""


def _window_key(record: Record) -> tuple[str, str]:
    return record.measurement, "|".join([*record.tags().values(), str(record.time_ms)])


class Partition:
    """One partition of an import: its share of the messages through decode and the engines,
    checkpointed (package docstring). Made and run in the partition's own process. `report`
    gets a progress dict after every batch; `stopping` is asked at every batch boundary and,
    once true, the partition checkpoints there and returns."""

    def __init__(self, job: Job, k: int, report: Callable[[dict[str, Any]], None],
                 stopping: Callable[[], bool]) -> None:
        self.job = job
        self.k = k
        self.report = report
        self.stopping = stopping
        self.inputs = Inputs(job.files, job.mapping)
        self.owner = Partitioner(job.workers, job.assignment)
        rules = AlertRules(AlertSettings(
            timezone=job.city.timezone, quality_min_score=job.quality.min_score,
            quality_alert_hours=job.quality.alert_hours))
        self.engines: dict[str, KindEngine] = kinds.engines_for(job.city, rules=rules)
        self.entity = {kind: engine.entity for kind, engine in self.engines.items()}
        self.horizon_s = job.city.windows.horizon_s
        self.kpi_bucket, self.telemetry_bucket = job.buckets
        self.counts = Counts()
        self.batch: dict[tuple[str, str], list[BaseReading]] = {}
        self.windows: set[tuple[str, str]] = set()
        self.rejected: dict[tuple[str, int], int] = {}
        self.rejected_changed: set[tuple[str, int]] = set()

    def run(self) -> tuple[Counts, bool]:
        """Process the partition's messages to the end of the input, or until `stopping`;
        returns the run's counters and whether the end was reached. Called once. On return
        every point is in InfluxDB and the last checkpoint is committed; on an exception the
        partition resumes from its last checkpoint when the import runs again."""
        job = self.job
        db = PartitionDb(job.dir / f"partition-{self.k}.sqlite")
        meta = db.meta()
        new_run = meta.get("run") != job.run
        if new_run:
            position, sizes = Position(), {"rejects": 0, "refused": 0}
        else:
            position = Position.from_json(meta["position"])
            self.counts = Counts.from_json(meta["counts"])
            sizes = meta["sizes"]
            if meta.get("done"):
                db.close()
                return self.counts, True
        self.stores = {kind: CheckpointStore(db.store(kind)) for kind in self.engines}
        self.rejected = db.rejected()
        self.rejects = PartFile(job.dir / f"rejects-{self.k}.jsonl", sizes["rejects"])
        self.refused = PartFile(job.dir / f"refused-{self.k}.jsonl", sizes["refused"])
        self.out = PointOut(job.writer(), job.batch_points, job.retry_for_s, self.stopping)
        self.db = db
        self._new_run = new_run
        thresholds = gc.get_threshold()
        gc.freeze()  # the city, the engines, the loaded state: never garbage, never scanned
        gc.set_threshold(50_000, 20, 100)  # readings come and go by the thousand
        try:
            done = self._loop(position)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            self.out.close()
            self.rejects.close()
            self.refused.close()
            db.close()
        return self.counts, done

    def _loop(self, start: Position) -> bool:
        job, k, counts = self.job, self.k, self.counts
        batch_size = job.batch
        owner, message, entity, batch = self.owner, self.inputs.message, self.entity, self.batch
        known = owner.known
        raw = job.raw
        now_ms, horizon_s = job.received_at_ms, self.horizon_s
        next_boundary = (start.index // batch_size + 1) * batch_size
        last_checkpoint = time.monotonic()
        first, last = counts.first_ts, counts.last_ts
        # only the messages this partition owns, and each batch's first (its boundary)
        for item in self.inputs.items(start, lambda topic: owner(topic) == k, batch_size):
            if item.n >= next_boundary:
                counts.first_ts, counts.last_ts = first, last
                self._apply_batch()
                next_boundary = (item.n // batch_size + 1) * batch_size
                stop = self.stopping()
                if stop or time.monotonic() - last_checkpoint >= job.checkpoint_s:
                    self._checkpoint(item.position)
                    last_checkpoint = time.monotonic()
                    if stop:
                        return False
                self.report(self._progress(item.position))
            mine = known.get(item.topic)
            if (owner(item.topic) if mine is None else mine) != k:
                continue  # the first message of a batch, read for the boundary only
            counts.messages += 1
            got = item.data  # a recording line's message, read already; else ask
            if type(got) is not tuple:
                got = message(item)
            if type(got) is tuple:
                payload, received = got
                if received is None:
                    decoded = decode(item.topic, payload, now_ms, horizon_s=NO_AGE_LIMIT_S)
                else:
                    decoded = decode(item.topic, payload, received, horizon_s=horizon_s)
                readings = decoded.readings
                if readings:
                    counts.accepted += len(readings)
                    counts.readings += len(readings)
                    for r in readings:
                        kind = r.kind
                        key = (kind, entity[kind](r))
                        held = batch.get(key)
                        if held is None:
                            batch[key] = [r]
                        else:
                            held.append(r)
                        ts = r.ts_ms
                        if first is None or ts < first:
                            first = ts
                        if last is None or ts > last:
                            last = ts
                        if raw:
                            self._raw(r)
                if decoded.dead_letters:
                    for letter in decoded.dead_letters:
                        self._reject(letter, item, horizon_s if received is not None
                                     else NO_AGE_LIMIT_S)
            else:
                self._reject(got.letter(item.topic, now_ms), item, NO_AGE_LIMIT_S)
        counts.first_ts, counts.last_ts = first, last
        self._apply_batch()
        self._finish()
        end = self.inputs.end
        assert end is not None  # the items were read to the end
        self._checkpoint(end, done=True)
        self.report(self._progress(end))
        return True

    def _raw(self, reading: BaseReading) -> None:
        try:
            line = reading_line(reading.__dict__, reading.kind)
        except RecordError as exc:
            self._refuse(self.telemetry_bucket, repr(reading.__dict__), str(exc))
            return
        self.out.add(self.telemetry_bucket, line)
        self.counts.raw_points += 1

    def _reject(self, letter: DeadLetter, item: Item, horizon_s: int) -> None:
        counts = self.counts
        counts.readings += 1
        reason = str(letter.reason)
        counts.rejected[reason] = counts.rejected.get(reason, 0) + 1
        entry = orjson.loads(letter.to_json())
        self.rejects.write(f"{item.n:012d} ".encode() + orjson.dumps(
            {"file": str(self.job.files[item.file].path), "line": item.line, **entry}) + b"\n")
        where = kinds.parse_topic(letter.topic) if not self.job.replay else None
        if where is not None:  # (a replay's rejects were counted by the run it repeats)
            district, kind, sensor_id = where
            hour = rejected_hour(letter.raw, letter.received_at_ms, horizon_s * 1000)
            key = (f"{kind}|{district}|{sensor_id}", hour)
            self.rejected[key] = self.rejected.get(key, 0) + 1
            self.rejected_changed.add(key)

    def _refuse(self, bucket: str, line: str, message: str) -> None:
        self.counts.refused += 1
        self.refused.write(orjson.dumps({"bucket": bucket, "line": line, "detail": message})
                           + b"\n")

    def _apply_batch(self) -> None:
        for (kind, _entity), readings in self.batch.items():
            try:
                outcome = self.engines[kind].process(readings, self.stores[kind])
            except Exception as exc:  # a bug must not stop the import: keep the readings
                log.error("engine error on %d %s readings, kept in rejects: %r", len(readings),
                          kind, exc)
                self.counts.engine_errors += len(readings)
                for r in readings:
                    self.rejects.write(b"999999999999 " + orjson.dumps(
                        {"reason": "engine_error", "detail": repr(exc)[:500],
                         "topic": f"city/{r.district}/{kind}/{r.sensor_id}",
                         "reading": orjson.loads(r.to_json())}) + b"\n")
                continue
            self._emit(outcome)
        self.batch.clear()

    def _emit(self, outcome: Outcome) -> None:
        counts = self.counts
        counts.duplicates += outcome.duplicates
        counts.late += outcome.late
        counts.beyond_horizon += outcome.beyond_horizon
        for record in outcome.records:
            if self._write(record):
                self.windows.add(_window_key(record))
                counts.kpi_points += 1
        counts.quality_points += sum(self._write(point) for point in outcome.quality)
        counts.alerts += sum(self._write(alert) for alert in outcome.alerts)

    def _write(self, record: Record) -> bool:
        """Queue a record's point for the `kpi` bucket; False (and refused) if line protocol
        cannot carry it, as the sink dead-letters such a record."""
        try:
            line = to_line_protocol(record, "ms")
        except RecordError as exc:
            self._refuse(self.kpi_bucket, repr(record), str(exc))
            return False
        self.out.add(self.kpi_bucket, line)
        return True

    def _finish(self) -> None:
        """End of input: every window not yet emitted is final, and every hour of
        `sensor_quality` up to each entity's newest reading is judged (neither is kept in the
        state: a later run with more readings writes them again, completed)."""
        out = Outcome()
        for kind, engine in self.engines.items():
            store = self.stores[kind]
            for entity in engine.entities(store):
                out.records.extend(engine.due(entity, store))
                ent = Entity.read(store, entity)
                if ent.max is None:
                    continue
                active: set[AlertKey] = {(a[0], a[1], a[2]) for a in ent.alerts}
                points, alerts, _hours = judge(
                    engine.kind, ent.quality, ent.max + engine.grace_ms + HOUR_MS + 1,
                    engine.grace_ms, engine.judges_stuck, engine.rules, active, set())
                out.quality.extend(points)
                out.alerts.extend(alerts)
        self._emit(out)

    def _checkpoint(self, position: Position, done: bool = False) -> None:
        """Write every point so far, then commit state, position and counters together."""
        for key in sorted(self.rejected_changed):
            sensor, hour = key
            kind, district, sensor_id = sensor.split("|")
            self._write(SensorQuality(kind=kind, district=district, sensor_id=sensor_id,
                                      hour_end_ms=hour + HOUR_MS, rejected=self.rejected[key]))
        self.out.flush()
        for bucket, line, message in self.out.take_refused():
            self._refuse(bucket, line, message)
        changed = {key: self.rejected[key] for key in self.rejected_changed}
        meta = {"run": self.job.run, "position": position.to_json(),
                "counts": self.counts.to_json(), "done": done,
                "sizes": {"rejects": self.rejects.checkpoint(),
                          "refused": self.refused.checkpoint()}}
        self.db.commit(self.stores, meta, self.windows, changed, new_run=self._new_run)
        self._new_run = False
        self.windows = set()
        self.rejected_changed = set()

    def _progress(self, position: Position) -> dict[str, Any]:
        c = self.counts
        done = self.inputs.done_bytes(position)
        return {"k": self.k, "bytes": done, "readings": c.readings, "accepted": c.accepted,
                "rejected": c.rejected_total, "duplicates": c.duplicates}

