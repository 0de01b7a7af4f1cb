"""What the benchmark reads from the machine: process CPU and memory from /proc, load, CPU
steal, and the versions of everything measured."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads; reaped children included), or
    0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 of stat(5); index 0 here is field 3
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now (`rss_mb`) and its peak (`hwm_mb`) in MiB; zeros if gone."""
    out = {"rss_mb": 0.0, "hwm_mb": 0.0}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            out["rss_mb"] = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            out["hwm_mb"] = int(line.split()[1]) / 1024
    return out


@dataclass
class CpuMeter:
    """CPU seconds used by a set of processes between `start` and `stop` (processes that exit
    in between count up to their last reading)."""

    pids: dict[str, int]
    _start: dict[str, float] | None = None
    _last: dict[str, float] | None = None

    def start(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._last = dict(self._start)
        return self

    def sample(self) -> None:
        """Remember the latest readings (call now and then: a process that has exited reads 0)."""
        assert self._last is not None
        for name, pid in self.pids.items():
            now = cpu_seconds(pid)
            if now > 0:
                self._last[name] = now

    def stop(self) -> dict[str, float]:
        """CPU seconds per process name."""
        self.sample()
        assert self._start is not None and self._last is not None
        return {name: max(0.0, self._last[name] - self._start[name]) for name in self.pids}


WORKER_MEMORY_LINE = re.compile(
    r"(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+).* worker \S+ memory: RSS (?P<rss_mb>\d+) MB, "
    r"of which table stores (?P<table_mb>\d+) MB in (?P<partitions>\d+) partitions.*; "
    r"(?P<pymalloc_blocks>\d+) pymalloc blocks; engines hold (?P<entities>\d+) entities with "
    r"(?P<windows>\d+) windows and (?P<sensors>\d+) sensors, and (?P<dedupe_pairs>\d+) ")


def worker_memory_lines(log: str) -> list[dict[str, float]]:
    """The memory lines a worker logs with its counters (`Worker.log_memory`), in order: `at`
    (epoch s of the log's timestamp), `rss_mb`, `table_mb` (RocksDB's own accounting),
    `partitions`, `pymalloc_blocks`, and what the engines hold (`entities`, `windows`, `sensors`,
    `dedupe_pairs`)."""
    out = []
    for line in log.splitlines():
        if (m := WORKER_MEMORY_LINE.search(line)) is None:
            continue
        row = {key: float(value) for key, value in m.groupdict().items() if key != "at"}
        row["at"] = datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append(row)
    return out


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_times() -> dict[str, int]:
    """Machine-wide jiffies from /proc/stat: total, idle (incl. iowait) and steal."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    parts = dict(zip(names, values, strict=False))
    return {"total": sum(values[:8]), "idle": parts["idle"] + parts["iowait"],
            "steal": parts.get("steal", 0)}


@dataclass
class HostMeter:
    """Load and machine-wide CPU use over a measurement: how busy the box was, by us and by
    anyone else, so a figure can be read against its conditions."""

    t0: float = 0.0
    c0: dict[str, int] | None = None
    load0: list[float] | None = None

    def start(self) -> HostMeter:
        self.t0, self.c0, self.load0 = time.time(), cpu_times(), loadavg()
        return self

    def stop(self) -> dict[str, Any]:
        assert self.c0 is not None
        c1 = cpu_times()
        total = max(1, c1["total"] - self.c0["total"])
        return {"seconds": time.time() - self.t0,
                "load_before": self.load0, "load_after": loadavg(),
                "busy_pct": 100 * (1 - (c1["idle"] - self.c0["idle"]) / total),
                "steal_pct": 100 * (c1["steal"] - self.c0["steal"]) / total}


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def _package_versions(names: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    """The machine: CPUs, model, memory, kernel, Python."""
    model = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": sys.version.split()[0],
            "platform": platform.platform()}


def versions(mosquitto: str | None = None, influxd: str | None = None,
             kafka_version: str | None = None, telegraf: str | None = None,
             quix: str | None = None) -> dict[str, Any]:
    """Versions of the services, peers and the Python packages on the measured paths."""
    out: dict[str, Any] = _package_versions(
        ["citystream", "faust-streaming", "aiokafka", "paho-mqtt", "pydantic", "pydantic-core",
         "orjson", "urllib3", "rocksdict"])
    if mosquitto:
        line = _first_line([mosquitto, "-h"]) or ""
        match = re.search(r"version\s+(\S+)", line)
        out["mosquitto"] = match.group(1) if match else line or None
    if influxd:
        out["influxdb"] = _first_line([influxd, "version"])
    out["kafka"] = kafka_version
    if telegraf:
        out["telegraf"] = _first_line([telegraf, "--version"])
    out["quixstreams"] = quix
    return out
