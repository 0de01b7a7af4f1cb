"""The open-data tests activate their own city's feeds; the registry is put back after each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models import kinds


@pytest.fixture(autouse=True)
def _restore_registered_feeds() -> Iterator[None]:
    before = kinds.feeds()
    yield
    kinds.activate(before)
