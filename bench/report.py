"""The benchmark's outputs: one table of every figure (median of the runs) and a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .stats import fmt, ratio, table

HEADER = ["measurement", "readings/s", "CPU s/1k", "services CPU s/1k", "p50 s", "p95 s",
          "p99 s", "RSS MB", "compared", "rate over s"]
"""`rate over s`: how long the part of the run that gave readings/s lasted (a drain between
10 % and 90 % of its input, a live feed's second half, the floor's loop)."""

# (key, label) in table order; a key missing from the results is left out
ROWS = [
    ("floor.single", "floor: decode + validate + line protocol, 1 reading/msg (1 core)"),
    ("floor.gateway", "floor: the same, gateway batches of 50 (1 core)"),
    ("ingest.1", "MQTT -> Kafka, 1 ingest"),
    ("ingest.2", "MQTT -> Kafka, 2 ingest"),
    ("ingest.gateway", "MQTT -> Kafka, 1 ingest, batches of 50"),
    ("kpi.1", "Kafka -> KPI, 1 worker"),
    ("kpi.2", "Kafka -> KPI, 2 workers"),
    ("kpi.water", "Kafka -> 15-min water KPI, citystream worker"),
    ("quix.water", "Kafka -> 15-min water consumption, Quix Streams"),
    ("sink", "KPI + raw -> InfluxDB, sink"),
    ("e2e.citystream", "end to end MQTT -> InfluxDB raw, citystream"),
    ("e2e.telegraf", "end to end MQTT -> InfluxDB raw, Telegraf"),
    ("e2e.telegraf-kafka", "end to end, Telegraf via Kafka (citystream's durability)"),
    ("latency", ""),  # one group of rows per percent measured (`_latency_rows`)
    ("steady.citystream", "(a) steady city, citystream"),
    ("steady.citystream/kpi", "(a) window end -> final KPI visible (incl. grace)"),
    ("steady.telegraf", "(a) steady city, Telegraf"),
    ("burst.citystream", "(b) traffic burst 10x, citystream"),
    ("burst.telegraf", "(b) traffic burst 10x, Telegraf"),
    ("gateway.citystream", "(c) gateway batches of 50, citystream"),
    ("gateway.telegraf", "(c) gateway batches of 50, Telegraf"),
    ("gateway.telegraf-kafka", "(c) gateway batches of 50, Telegraf via Kafka"),
    ("replay.citystream", "(d) replay of a recorded day, citystream"),
    ("replay.telegraf", "(d) replay of a recorded day, Telegraf"),
]


def _rate(r: dict[str, Any]) -> float | None:
    value = r.get("rate_per_s")
    if value is None:
        value = r.get("delivered_rate_per_s")
    return value if isinstance(value, int | float) else None


def _services(r: dict[str, Any]) -> float | None:
    values = [v for v in (r.get("services_cpu_s_per_1k") or {}).values() if v is not None]
    return sum(values) if values else None


def _memory(r: dict[str, Any]) -> str:
    mem = r.get("memory_mb") or {}
    parts = [f"{_component(name)} {fmt(m.get('rss_mb'))}" for name, m in mem.items()
             if isinstance(m, dict) and m.get("rss_mb")]
    return ", ".join(parts) if parts else "-"


def _component(process: str) -> str:
    """`worker-0` -> `worker`; `telegraf-edge` stays."""
    head, _, tail = process.rpartition("-")
    return head if tail.isdigit() else process


def _per_cpu(r: dict[str, Any] | None) -> float | None:
    """Readings per CPU-second of the measured processes (not the services)."""
    cpu = (r or {}).get("cpu_s_per_1k")
    return 1000 / cpu if cpu else None


def _compared(key: str, r: dict[str, Any], s: dict[str, Any]) -> str:
    notes = []
    floor = _rate(s.get("floor.gateway" if "gateway" in key else "floor.single", {}))
    if key.startswith(("ingest", "kpi", "sink", "e2e", "gateway.c")) and floor:
        share = ratio(_rate(r), floor)
        if share is not None:
            notes.append(f"{share:.1%} of floor")
    if key in ("e2e.citystream", "gateway.citystream"):
        for peer, name in (("telegraf", "Telegraf"), ("telegraf-kafka", "Telegraf via Kafka")):
            x = ratio(_rate(r), _rate(s.get(f"{key.split('.')[0]}.{peer}") or {}))
            if x is not None:
                notes.append(f"{x:.2f}x {name}")
    if key.startswith("ingest") and s.get("e2e.telegraf"):
        x = ratio(_per_cpu(r), _per_cpu(s["e2e.telegraf"]))
        if x is not None:
            notes.append(f"{x:.2f}x Telegraf per CPU-s")
    if key == "kpi.water" and s.get("quix.water"):
        x = ratio(_rate(r), _rate(s["quix.water"]))
        if x is not None:
            notes.append(f"{x:.2f}x Quix")
    if key.startswith(("latency", "steady", "burst")) and key.endswith("citystream"):
        other = s.get(key.replace("citystream", "telegraf"))
        x = ratio((r.get("latency") or {}).get("p99_s"),
                  ((other or {}).get("latency") or {}).get("p99_s"))
        if x is not None:
            notes.append(f"p99 {x:.2f}x Telegraf")
    if key.startswith(("latency", "steady", "burst")):
        offered = r.get("offered_rate_per_s")
        if offered:
            notes.append(f"offered {fmt(offered)}/s")
        backlog = r.get("backlog_at_end")
        if backlog and offered and backlog > offered:
            notes.append(f"backlog {fmt(backlog)} at end")
    if key.startswith("burst") and r.get("phases"):
        recovery = r["phases"].get("recovery_s")
        notes.append(f"recovers in {fmt(recovery)} s" if recovery is not None else
                     "no probe after the burst: recovery not measured")
    if key.startswith("quix") and (r.get("check") or {}).get("compared"):
        check = r["check"]
        notes.append(f"{check['compared']} windows = citystream's (max diff "
                     f"{fmt(check['max_rel_diff'])})")
    if r.get("rate_samples") == 0 and _rate(r) and r.get("measured_s"):
        notes.append("coarse: no progress sample inside the measured span")
    if r.get("complete") is False:
        notes.append("INCOMPLETE")
    return "; ".join(notes)


def _latency_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The latency stage's rows, per percent of the maximum measured (`--latency-at`)."""
    pcts = sorted({int(k.split(".")[1]) for k in s
                   if k.startswith("latency.") and k.split(".")[1].isdigit()})
    out = []
    for pct in pcts:
        out += [(f"latency.{pct}.citystream", f"latency at {pct} % of max, citystream"),
                (f"latency.{pct}.citystream/kpi",
                 f"window end -> final KPI visible at {pct} % (incl. grace)"),
                (f"latency.{pct}.telegraf", f"latency at {pct} % of max, Telegraf (same feed)")]
    return out


def _rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    return [row for key, label in ROWS
            for row in (_latency_rows(s) if key == "latency" else [(key, label)])]


def summary_rows(s: dict[str, Any]) -> list[list[Any]]:
    """The table's rows from the merged results."""
    rows: list[list[Any]] = []
    for key, label in _rows(s):
        if key.endswith("/kpi"):
            source = s.get(key.split("/")[0]) or {}
            kpi = (source.get("kpi_latency") or {}).get("final")
            if kpi and kpi.get("n"):
                first = source["kpi_latency"]["first"]
                note = (f"{kpi['n']} windows; grace {source['kpi_latency']['grace_s']} s; "
                        f"first seen p50 {fmt(first['p50_s'])} s")
                if source.get("backlog_at_end", 0) > (source.get("offered_rate_per_s") or 0):
                    note += "; pipeline behind: not the steady-state figure"
                rows.append([label, None, None, None, kpi["p50_s"], kpi["p95_s"], kpi["p99_s"],
                             "-", note, None])
            continue
        r = s.get(key)
        if not r:
            continue
        lat = r.get("latency") or {}
        rows.append([label, _rate(r), r.get("cpu_s_per_1k"), _services(r), lat.get("p50_s"),
                     lat.get("p95_s"), lat.get("p99_s"), _memory(r), _compared(key, r, s),
                     r.get("measured_s")])
    for key in sorted(k for k in s if k.startswith("rss.")):
        r = s[key]
        rows.append([f"RSS at {fmt(int(key.split('.')[1]))} sensors, {r.get('system')}", _rate(r),
                     r.get("cpu_s_per_1k"), _services(r), None, None, None, _memory(r),
                     "peak: " + ", ".join(
                         f"{_component(n)} {fmt(m.get('hwm_mb'))}"
                         for n, m in (r.get("memory_mb") or {}).items() if isinstance(m, dict)),
                     r.get("measured_s")])
    return rows


COMPONENTS = ["ingest", "worker", "telegraf", "telegraf-edge", "telegraf-sink", "mosquitto",
              "kafka", "influxdb"]


def cpu_rows(s: dict[str, Any]) -> list[list[Any]]:
    """CPU seconds per 1,000 readings by component (processes of the same component summed),
    for the end-to-end measurements: where each system's CPU goes."""
    rows = []
    for key, label in _rows(s):
        r = s.get(key)
        if not r or not key.startswith(("e2e.", "gateway.")):
            continue
        by: dict[str, float] = {}
        for name, v in {**(r.get("cpu_s_per_1k_by_process") or {}),
                        **(r.get("services_cpu_s_per_1k") or {})}.items():
            if v is not None:
                by[_component(name)] = by.get(_component(name), 0.0) + v
        rows.append([label, *(by.get(c) for c in COMPONENTS), sum(by.values()) or None])
    return rows


def _without_empty_columns(rows: list[list[Any]], header: list[str]
                           ) -> tuple[list[list[Any]], list[str]]:
    keep = [i for i in range(len(header)) if i == 0 or any(r[i] is not None for r in rows)]
    return [[r[i] for i in keep] for r in rows], [header[i] for i in keep]


def table_text(rows: list[list[Any]], results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    c = results.get("conditions", {})
    head = (f"citystream bench: median of {results.get('runs')} run(s)"
            f"{' (quick)' if results.get('quick') else ''}; {m.get('cpus')} CPUs "
            f"({m.get('cpu_model')}), load {c.get('load_before')} -> {c.get('load_after')}, "
            f"busy {fmt(c.get('busy_pct'))} %, steal {fmt(c.get('steal_pct'))} %")
    text = head + "\n\n" + table(rows, HEADER)
    cpu = cpu_rows(results.get("summary") or {})
    if cpu:
        text += ("\n\nCPU s per 1,000 readings by component (worker includes its sink)\n\n"
                 + table(*_without_empty_columns(cpu, ["measurement", *COMPONENTS, "total"])))
    return text


def chart(s: dict[str, Any], path: Path, results: dict[str, Any]) -> None:
    """Two panels: sustained readings/s per stage and peer; probe latency p50/p95/p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat_keys = [k for k, _ in _rows(s) if k.startswith(("latency", "steady", "burst")) and k in s
                and (s[k].get("latency") or {}).get("p50_s") is not None]
    if lat_keys:
        fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5),
                                          gridspec_kw={"width_ratios": [1.1, 1]})
    else:  # no latency measured in this run: throughput alone
        fig, left = plt.subplots(1, 1, figsize=(8, 6.5))
    bars = [(label, _rate(s[key]), "tab:gray" if key.startswith("floor") else
             "tab:orange" if key.endswith(("telegraf", "quix.water")) or key.startswith("quix")
             else "tab:blue") for key, label in _rows(s)
            if key in s and _rate(s[key]) and not key.startswith(("latency", "steady", "burst"))]
    if bars:
        labels, values, colours = zip(*bars, strict=True)
        left.barh(range(len(values)), values, color=colours)
        left.set_yticks(range(len(values)), [x.replace(", ", "\n", 1) for x in labels],
                      fontsize=7)
        left.invert_yaxis()
        left.set_xscale("log")
        left.set_xlabel("readings per second (log scale; floor = one core)")
        left.set_title("Sustained throughput (blue citystream, orange peers)")
        for i, v in enumerate(values):
            left.text(v, i, f" {v:,.0f}", va="center", fontsize=7)
    if lat_keys:
        width = 0.27
        for j, q in enumerate(("p50_s", "p95_s", "p99_s")):
            right.bar([i + (j - 1) * width for i in range(len(lat_keys))],
                      [s[k]["latency"][q] for k in lat_keys], width, label=q[:3])
        right.set_xticks(range(len(lat_keys)),
                         [k.replace(".citystream", "\ncitystream").replace(".telegraf",
                                                                          "\nTelegraf")
                          for k in lat_keys], fontsize=7)
        right.set_yscale("log")
        right.set_ylabel("seconds, publish -> point in InfluxDB (log scale)")
        right.set_title("Raw-point latency of probe readings")
        right.legend()
    m = results.get("machine", {})
    fig.suptitle(f"citystream bench, {m.get('cpus')} CPUs, median of {results.get('runs')} "
                 f"run(s){' (quick)' if results.get('quick') else ''}, {results.get('started')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
