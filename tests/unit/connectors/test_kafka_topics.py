"""Topic creation carries the replication settings (CITYSTREAM_KAFKA__REPLICATION_FACTOR,
__MIN_INSYNC_REPLICAS) wherever topics are made: ingest's, the worker's and its changelogs, the
Faust app's own; a refusal by Kafka is an error, never silence (the real cluster is in
tests/integration/test_cluster.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiokafka.errors import InvalidReplicationFactorError

from connectors import kafka
from models.settings import ConfigError, KafkaSettings, Settings
from streams.app import FaustHost, worker_topics
from streams.worker import WorkerOptions

REPLICATED = KafkaSettings(bootstrap="k1:9092,k2:9092,k3:9092", partitions=6,
                           replication_factor=3, min_insync_replicas=2)


class FakeAdmin:
    """The part of `AIOKafkaAdminClient` that `ensure_topics` uses."""

    existing: ClassVar[dict[str, int]] = {}  # topic -> replicas of its partitions
    created: ClassVar[list[Any]] = []
    errors: ClassVar[list[tuple[Any, ...]]] = []

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return list(self.existing)

    async def create_topics(self, topics: list[Any]) -> Any:
        FakeAdmin.created.extend(topics)

        class Response:
            topic_errors = FakeAdmin.errors or [(t.name, 0, None) for t in topics]

        return Response()

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        return [{"topic": t, "partitions": [{"partition": 0, "replicas": list(
            range(self.existing[t]))}]} for t in topics]


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", FakeAdmin)
    FakeAdmin.existing, FakeAdmin.created, FakeAdmin.errors = {}, [], []
    return FakeAdmin


def test_missing_topics_get_the_partitions_replicas_and_min_insync(
        admin: type[FakeAdmin]) -> None:
    admin.existing = {"old": 3}
    asyncio.run(kafka.ensure_topics(REPLICATED, {"old": {}, "new": {},
                                                 "log": {"cleanup.policy": "compact"}}))
    made = {t.name: t for t in admin.created}
    assert set(made) == {"new", "log"}
    for topic in made.values():
        assert (topic.num_partitions, topic.replication_factor) == (6, 3)
        assert topic.topic_configs["min.insync.replicas"] == "2"
    assert made["log"].topic_configs["cleanup.policy"] == "compact"


def test_the_defaults_stay_one_copy(admin: type[FakeAdmin]) -> None:
    asyncio.run(kafka.ensure_topics(KafkaSettings(), ["t"]))
    (topic,) = admin.created
    assert topic.replication_factor == 1
    assert topic.topic_configs == {"min.insync.replicas": "1"}


def test_a_refused_topic_raises_naming_the_setting(admin: type[FakeAdmin]) -> None:
    """Kafka answers 'invalid replication factor' per topic, which aiokafka returns without
    raising: on a single broker, topics would otherwise be auto-created with one copy."""
    admin.errors = [("t", InvalidReplicationFactorError.errno,
                     "only 1 broker(s) are registered")]
    with pytest.raises(InvalidReplicationFactorError,
                       match="CITYSTREAM_KAFKA__REPLICATION_FACTOR") as err:
        asyncio.run(kafka.ensure_topics(REPLICATED, ["t"]))
    assert "only 1 broker(s)" in str(err.value)


def test_an_existing_topic_with_fewer_copies_is_a_warning(
        admin: type[FakeAdmin], caplog: pytest.LogCaptureFixture) -> None:
    admin.existing = {"thin": 1, "fine": 3}
    with caplog.at_level(logging.WARNING, logger="connectors.kafka"):
        asyncio.run(kafka.ensure_topics(REPLICATED, ["thin", "fine"]))
    assert admin.created == []
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "thin has partitions with 1 replicas" in warned[0]


def test_min_insync_above_the_replicas_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_KAFKA__BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("CITYSTREAM_KAFKA__REPLICATION_FACTOR", "2")
    monkeypatch.setenv("CITYSTREAM_KAFKA__MIN_INSYNC_REPLICAS", "3")
    with pytest.raises(ConfigError, match="CITYSTREAM_KAFKA__MIN_INSYNC_REPLICAS"):
        Settings.load()


def test_the_worker_creates_its_topics_and_faust_its_own_replicated(
        admin: type[FakeAdmin], tmp_path: Path) -> None:
    settings = Settings(kafka=REPLICATED)
    asyncio.run(kafka.ensure_topics(settings.kafka, worker_topics(settings)))
    changelogs = [t for t in admin.created if t.name.endswith("-changelog")]
    assert changelogs and all(t.replication_factor == 3 and
                              t.topic_configs["min.insync.replicas"] == "2" and
                              t.topic_configs["cleanup.policy"] == "compact"
                              for t in changelogs)
    host = FaustHost(settings, WorkerOptions(data_dir=tmp_path, store="memory://"))
    assert host.app.conf.topic_replication_factor == 3
    assert host.app.conf.producer_acks == -1
