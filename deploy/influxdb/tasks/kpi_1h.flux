// citystream: hourly roll-up of the kpi bucket into kpi_1h (docs/analysts.md, "kpi_1h").
// Every hour it recomputes the complete hours of the last 26 h (the late-data horizon of 24 h
// plus margin), so late corrections reach the roll-up too; rewriting an hour overwrites the
// same points. KPI points are stamped at their window END, so they are shifted back by 1 ms
// and a window counts in the hour it lies in. Each hourly point is stamped at the hour's end.
import "date"

option task = {name: "citystream-kpi_1h", every: 1h, offset: 5m}

src = "kpi"
dst = "kpi_1h"
stop = date.truncate(t: now(), unit: 1h)
start = date.sub(d: 26h, from: stop)

// Each group reads storage with its own field regex: InfluxDB pushes `=~` and `==` down to the
// storage engine, while contains() would be evaluated row by row (about 5 times slower here).
hourly = (fields, fn) => from(bucket: src)
    |> range(start: date.add(d: 1ms, to: start), stop: date.add(d: 1ms, to: stop))
    |> filter(fn: (r) => (r._measurement == "water_kpi" or r._measurement == "energy_kpi"
        or r._measurement == "traffic_kpi" or r._measurement == "shuttle_kpi")
        and r._field =~ fields)
    |> timeShift(duration: -1ms)
    |> drop(columns: ["window"])
    |> aggregateWindow(every: 1h, fn: fn, createEmpty: false)

derived = (tables, measurement, fields, name, fn) => tables
    |> filter(fn: (r) => r._measurement == measurement and contains(value: r._field, set: fields))
    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    |> map(fn: (r) => ({r with _field: name, _value: fn(r: r)}))
    |> drop(columns: fields)

sums = hourly(
    fields: /^(consumption_l|baseline_l|energy_kwh|baseline_kwh|vehicles|boardings|disengagements)$/,
    fn: sum,
)
means = hourly(
    fields: /^(flow_veh_h|space_mean_speed_kmh|congestion_index|baseline_congestion_index|occupancy_pct|on_time_pct|availability_pct|mean_battery_pct)$/,
    fn: mean,
)

union(tables: [
    sums,
    means,
    hourly(fields: /^(peak_kw|meters_reporting|vehicles_reporting)$/, fn: max),
    hourly(fields: /^(saving_pct_24h|reduction_pct_24h|target_pct|on_track)$/, fn: last),
    derived(tables: sums, measurement: "water_kpi", fields: ["consumption_l", "baseline_l"],
        name: "saving_pct",
        fn: (r) => if r.baseline_l > 0.0 then 100.0 * (1.0 - r.consumption_l / r.baseline_l)
            else 0.0),
    derived(tables: sums, measurement: "energy_kpi", fields: ["energy_kwh", "baseline_kwh"],
        name: "saving_pct",
        fn: (r) => if r.baseline_kwh > 0.0 then 100.0 * (1.0 - r.energy_kwh / r.baseline_kwh)
            else 0.0),
    derived(tables: means, measurement: "traffic_kpi",
        fields: ["congestion_index", "baseline_congestion_index"], name: "reduction_pct",
        fn: (r) => if r.baseline_congestion_index > 0.0
            then 100.0 * (1.0 - r.congestion_index / r.baseline_congestion_index) else 0.0),
])
    |> set(key: "window", value: "1h")
    |> to(bucket: dst)
