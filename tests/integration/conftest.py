"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.stack import Stack
from tests.integration.helpers import Lane


@pytest.fixture
def lane(stack: Stack, tmp_path: Path) -> Iterator[Lane]:
    """An isolated pipeline lane on the session's stack; its processes stop at the end."""
    lane = Lane.create(stack, tmp_path)
    try:
        yield lane
    finally:
        lane.stop()
