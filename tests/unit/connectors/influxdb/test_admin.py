"""The management API client without a server (provisioning against a real InfluxDB:
tests/integration/test_influx_setup.py)."""

from __future__ import annotations

import socket

import pytest

from connectors.influxdb.admin import InfluxAdmin, ProvisionError
from models.errors import CitystreamError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_answer_is_a_provision_error_without_status() -> None:
    admin = InfluxAdmin(f"http://127.0.0.1:{free_port()}", "token", timeout=2)
    with pytest.raises(ProvisionError, match="cannot reach InfluxDB") as caught:
        admin.call("GET", "/api/v2/orgs")
    assert caught.value.status is None
    assert isinstance(caught.value, CitystreamError)
