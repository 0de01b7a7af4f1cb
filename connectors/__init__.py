"""The service I/O layer: each external service is spoken to here, in one place.

`kafka` (producing, topic creation), `mqtt` (the paho client factory) and `influxdb` (line
protocol, Flux escaping, the write and management clients, the error mapping). Components
(ingest, streams, dashboard, opendata, analysis, sensors_sim, deploy, citystream.check) import
from here; nothing here imports a component. README.md says which component uses what.
"""
