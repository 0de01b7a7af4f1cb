"""The backfill lane: past readings through the KPI engine, offline, into InfluxDB.

`citystream import` runs the same decoder (`ingest.decode`) and the same engine (`kpi`, the
kinds) as the live pipeline, without MQTT, Kafka or the worker, so live processing is never
disturbed: nothing is published, no Kafka topic or consumer group is touched, alerts go to the
`kpi` bucket only (never to MQTT: they are history). KPI points, `sensor_quality` points,
alerts and (with `raw`) raw readings are encoded by `connectors.influxdb.lineproto` and written
by `connectors.influxdb.write.InfluxWriter`, as the sink writes them.

Windows are final by event time as in the worker (newest reading past end + grace) and, at the
end of the input, every window still open is final: the import says so, not a wall-clock timer
(the worker's quiet-window timer); the hours of `sensor_quality` likewise.

Parallel partitions: the input is read by `workers` processes, each owning the KPI entities
of some units (`ingest.history.Partitioner`) and reading every line but decoding only its own.
Each partition is a complete lane of its own: its engine state, its position in the input,
its counters, its rejects; no partition waits for another.

State and resume: an import has a directory (`<state dir>/<id>`) with `import.json` (the
inputs, options, partition plan) and per partition a SQLite file holding the engine's store
(`kpi.state`'s str -> bytes keys), the input position, the counters, the windows written and
the `rejected` counts per sensor and hour. A partition processes messages in batches of
`batch` messages of the input (numbered from the import's start, so a resumed import makes the
same batches) and checkpoints every `checkpoint_s` at a batch boundary: first every point
produced so far is written to InfluxDB, then the store's changes, the position and the counters
are committed in one SQLite transaction. Killed at any moment, an import resumes at its last
checkpoint and produces again, from the same state and the same input, the same points (a point
is its measurement, tags and time: rewriting it changes nothing).

Running a finished import again reads its input again against its final state: readings whose
window is still in the state are duplicates, older ones are beyond the late-data horizon; no
KPI changes. `--fresh` starts over from an empty state. The same `--id` with other files
continues that state (files in time order, one after the other).

The modules, each importing only those above it:

- `output`: points to InfluxDB from a thread of their own (`PointOut`), `CountingWriter`;
- `job`: `ImportOptions`, the `Job` of one run and its manifest (`prepare`), the lock;
- `state`: what a partition keeps: `Counts`, the engine store (`CheckpointStore`), its SQLite
  file (`PartitionDb`), its rejects and refused files (`PartFile`);
- `partition`: one partition's loop: read, decode, batch, engine, checkpoint (`Partition`);
- `runner`: the partitions run in this process or forked, merged into a `Summary`
  (`run_import`).
"""
