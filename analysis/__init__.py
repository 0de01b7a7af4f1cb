"""Answers for analysts from the `kpi` bucket: `citystream report` and `citystream baseline learn`.

`report`, `quality` (`report --quality`: each sensor's `sensor_quality` over the period) and
`baseline` are pure (KPI records or rows in, rows or a city model out); `influx` reads them
from InfluxDB; `chart` draws the report with matplotlib; `cli` holds the commands. The
report covers every registered kind (`models.kinds`): the built-in ones and the feeds the city
file declares. `erase` is the operators' `citystream erase`: one sensor's points deleted from
`telemetry` and `kpi` for a GDPR erasure request, with an audit line.
"""
