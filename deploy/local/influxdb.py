"""InfluxDB 2.x for the local stack: `influxd` built from its Go module (build-influxd.sh), ready
once /health says `pass`; then onboarded and provisioned at every start (org, buckets with
retention, InfluxQL mappings, the roll-up task) and given its two narrow tokens: the dashboard's
read-only one and the pipeline's write-only one. Every request goes through
`connectors.influxdb.admin`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from connectors.influxdb.admin import InfluxAdmin, can_write, healthy, onboard
from deploy.influxdb.provision import (
    ensure_buckets,
    provision,
    read_authorization,
    write_authorization,
)
from deploy.local.credentials import Credentials
from deploy.local.settings import StackSettings
from deploy.local.supervision import Progress, Service, check_port, say, wait_ready
from models.errors import ProvisionError, StackError

HERE = Path(__file__).resolve().parent
DASHBOARD_TOKEN_DESCRIPTION = "citystream dashboard: read the kpi and telemetry buckets"
PIPELINE_TOKEN_DESCRIPTION = "citystream pipeline: write telemetry and kpi only"


def influxd_path(s: StackSettings) -> Path:
    return s.cache / f"influxdb-{s.influxdb_version}" / "bin" / "influxd"


def install(s: StackSettings, say: Progress = say) -> Path:
    """``influxd`` built from its Go module by build-influxd.sh, cached by version."""
    binary = influxd_path(s)
    if binary.exists():
        return binary
    say(f"building influxd {s.influxdb_version} from source (first run only: 15-25 min, "
        f"log in {s.cache}/influxd-build.log)")
    s.cache.mkdir(parents=True, exist_ok=True)
    log = s.cache / "influxd-build.log"
    env = {**os.environ, "CITYSTREAM_CACHE": str(s.cache),
           "CITYSTREAM_INFLUXDB_VERSION": s.influxdb_version}
    with log.open("w") as out:
        rc = subprocess.call(["bash", str(HERE / "build-influxd.sh")], stdout=out,
                             stderr=subprocess.STDOUT, env=env)
    if rc != 0 or not binary.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise StackError(f"building influxd failed (exit {rc}); full log {log}:\n{tail}")
    return binary


def start(s: StackSettings, home: Path, svc: Service, creds: Credentials,
          say: Progress = say) -> None:
    """Start influxd with its files under ``<home>/influxdb``, wait until healthy, then onboard
    and provision it and make sure both narrow tokens in `creds` work (saving new ones)."""
    check_port(s.influxdb_port, "INFLUXDB_PORT", s.host)
    binary = install(s, say)
    d = home / "influxdb"
    d.mkdir(parents=True, exist_ok=True)
    svc.spawn([str(binary), "run",
               f"--http-bind-address={s.host}:{s.influxdb_port}",
               f"--bolt-path={d}/influxd.bolt", f"--engine-path={d}/engine",
               f"--sqlite-path={d}/influxd.sqlite",
               "--reporting-disabled", "--ui-disabled", "--log-level=info"])
    wait_ready("influxdb", svc, lambda: healthy(InfluxAdmin(s.influxdb_url, timeout=5.0)),
               s.ready_timeout_s)
    try:
        _onboard(s, home, creds, say)
    except ProvisionError as exc:
        raise StackError(f"influxdb: onboarding (org, buckets, InfluxQL mappings, the roll-up "
                         f"task, tokens) failed: {exc}") from exc


def _onboard(s: StackSettings, home: Path, creds: Credentials, say: Progress) -> None:
    if onboard(InfluxAdmin(s.influxdb_url), username="admin", password=creds.influxdb_password,
               org=s.influxdb_org, bucket=s.bucket_telemetry, token=creds.influxdb_token):
        say(f"influxdb: onboarded org {s.influxdb_org!r}, buckets {s.bucket_telemetry!r} and "
            f"{s.bucket_kpi!r}")
    provision(InfluxAdmin(s.influxdb_url, creds.influxdb_token), s.influx_plan())
    ensure_read_token(s, home, creds)
    buckets = [s.bucket_telemetry, s.bucket_kpi]
    if not (creds.influxdb_write_token
            and can_write(s.influxdb_url, creds.influxdb_write_token, s.influxdb_org, buckets)):
        creds.influxdb_write_token = create_write_token(s, creds, buckets,
                                                        PIPELINE_TOKEN_DESCRIPTION)
        creds.save(home)


def ensure_read_token(s: StackSettings, home: Path, creds: Credentials) -> str:
    """The dashboard's token (READ on the two buckets), kept in `creds` and ``secrets.json``:
    made again if InfluxDB lost it or the buckets were re-created."""
    admin = InfluxAdmin(s.influxdb_url, creds.influxdb_token)
    org_id = admin.org_id(s.influxdb_org)
    ids = ensure_buckets(admin, org_id, s.influx_plan().buckets)
    token = read_authorization(s.influxdb_url, creds.influxdb_token, org_id,
                               [ids[s.bucket_telemetry], ids[s.bucket_kpi]],
                               DASHBOARD_TOKEN_DESCRIPTION, creds.influxdb_read_token)
    if token != creds.influxdb_read_token:
        creds.influxdb_read_token = token
        creds.save(home)
    return token


def create_write_token(s: StackSettings, creds: Credentials, buckets: list[str],
                       description: str) -> str:
    """A new token that may write `buckets` and nothing else (made with the operator token)."""
    return write_authorization(InfluxAdmin(s.influxdb_url, creds.influxdb_token),
                               s.influxdb_org, buckets, description)
