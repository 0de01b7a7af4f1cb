"""Session fixtures: the real local stack (Mosquitto, Kafka, InfluxDB) on free loopback ports.

The stack is started through deploy/local (the code behind `citystream up`) in a per-session
home directory and torn down at the end. A test marked `mqtt`, `kafka` or `influxdb` gets the
service started for it; if the service cannot be started the test FAILS (never skips), in CI and
locally alike. Set CITYSTREAM_TEST_KEEP_STACK=1 to leave the stack running for inspection.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from deploy.local.stack import Stack, StackSettings, free_port

SERVICE_MARKERS = {"mqtt": "mosquitto", "kafka": "kafka", "influxdb": "influxdb"}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's stack object; services start on demand through `ensure`."""
    home = tmp_path_factory.mktemp("stack")
    settings = StackSettings(
        home=home, mqtt_port=free_port(), mqtt_tls_port=free_port(), kafka_port=free_port(),
        kafka_controller_port=free_port(), influxdb_port=free_port(),
        dashboard_port=free_port())
    st = Stack(settings, say=lambda msg: print(f"[stack] {msg}", flush=True))
    try:
        yield st
    finally:
        if not os.environ.get("CITYSTREAM_TEST_KEEP_STACK"):
            st.down()


@pytest.fixture(autouse=True)
def _services_for_markers(request: pytest.FixtureRequest) -> None:
    needed = [svc for marker, svc in SERVICE_MARKERS.items()
              if request.node.get_closest_marker(marker)]
    if request.node.get_closest_marker("e2e"):
        needed = list(Stack.SERVICES)
    if not needed:
        return
    st: Stack = request.getfixturevalue("stack")
    for svc in needed:
        st.ensure(svc)
