"""The local stack's secrets: generated once per home, kept in ``<home>/secrets.json``."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from models.settings import LOCAL_STACK_SERVICE_USER

MQTT_GATEWAY_USER = "gateway"
MQTT_SERVICE_USER = LOCAL_STACK_SERVICE_USER


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by this user only (mode 600), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class Credentials:
    """Secrets generated once per stack home and kept in ``<home>/secrets.json`` (mode 600).

    `influxdb_read_token` is made by InfluxDB during onboarding (READ on the two buckets, for
    the dashboard); it is empty until then.
    `influxdb_token` is the operator's (all access: setup, `status --json`);
    `influxdb_write_token` is the pipeline's, allowed only to write the two buckets. InfluxDB
    makes that one at onboarding, so it is empty until InfluxDB first started in this home.
    """

    mqtt_gateway_password: str
    mqtt_service_password: str
    influxdb_password: str
    influxdb_token: str
    influxdb_read_token: str = ""
    influxdb_write_token: str = ""

    @classmethod
    def load_or_create(cls, home: Path) -> Credentials:
        path = home / "secrets.json"
        if path.exists():
            saved = json.loads(path.read_text())
            return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})
        creds = cls(mqtt_gateway_password=secrets.token_urlsafe(18),
                    mqtt_service_password=secrets.token_urlsafe(18),
                    influxdb_password=secrets.token_urlsafe(18),
                    influxdb_token=secrets.token_urlsafe(48))
        creds.save(home)
        return creds

    def save(self, home: Path) -> None:
        """Write ``<home>/secrets.json`` (mode 600), keeping keys this version does not know."""
        path = home / "secrets.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        write_private(path, json.dumps({**saved, **self.__dict__}, indent=2))

    def all(self) -> dict[str, str]:
        """Every secret by name (for tests that prove none of them leaks)."""
        return {k: v for k, v in self.__dict__.items() if v}
