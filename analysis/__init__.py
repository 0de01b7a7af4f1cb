"""Answers for analysts from the `kpi` bucket: `citystream report` and `citystream baseline learn`.

`report` and `baseline` are pure (KPI records in, rows or a city model out); `influx` reads the
records from InfluxDB; `chart` draws the report with matplotlib; `cli` holds the commands. The
report covers every registered kind (`models.kinds`): the built-in ones and the feeds the city
file declares.
"""
