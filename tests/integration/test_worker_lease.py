"""The group lease (streams/lease.py) on a real consumer group: renewed by the heartbeats Kafka
answers, lapsed when they go unanswered for most of the session timeout (the member's requests
to the coordinator made to hang, as across a partition), renewed again when they are answered.
The whole worker cut off in a real network partition: tests/integration/test_cluster.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from deploy.local.stack import Stack
from streams import lease

pytestmark = [pytest.mark.kafka]

SESSION_MS = 6000


async def _wait(what: str, condition: Any, timeout_s: float) -> float:
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


def test_a_member_whose_heartbeats_go_unanswered_loses_its_lease(stack: Stack) -> None:
    lease.install()
    bootstrap = stack.client_info()["kafka"]["bootstrap"]
    group = f"lease-{uuid.uuid4().hex[:8]}"
    topic = f"{group}.topic"

    async def run() -> dict[str, float]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                    session_timeout_ms=SESSION_MS, heartbeat_interval_ms=500,
                                    request_timeout_ms=SESSION_MS + 5000)
        await consumer.start()
        try:
            await consumer.getmany(timeout_ms=100)
            joined = await _wait("joined", lambda: bool(consumer.assignment()), 30)
            await asyncio.sleep(3)  # several answered heartbeats
            assert lease.lapsed(group) is None

            coordinator = consumer._coordinator
            send = coordinator._send_req
            cut = asyncio.Event()

            async def unanswered(request: Any) -> Any:
                await cut.wait()
                return await send(request)

            coordinator._send_req = unanswered
            t0 = time.monotonic()
            await _wait("lapsed", lambda: lease.lapsed(group) is not None, SESSION_MS / 1000)
            lapsed_after = time.monotonic() - t0
            coordinator._send_req = send
            cut.set()
            renewed = await _wait("renewed", lambda: lease.lapsed(group) is None, 60)
            return {"joined": joined, "lapsed_after": lapsed_after, "renewed": renewed}
        finally:
            await consumer.stop()

    figures = asyncio.run(run())
    print(figures)
    share = lease.LEASE_FRACTION * SESSION_MS / 1000
    assert share - 2.0 <= figures["lapsed_after"] <= share + 1.0, figures


def test_a_restarted_worker_waits_for_a_coordinator_that_answers(stack: Stack) -> None:
    """What a worker restarted in place waits for before it starts Faust again."""
    from aiokafka.errors import KafkaError

    from connectors.kafka import brokers_answer, group_coordinator_answers
    from models.settings import KafkaSettings

    live = KafkaSettings(bootstrap=stack.client_info()["kafka"]["bootstrap"])
    asyncio.run(asyncio.wait_for(group_coordinator_answers(live, "lease-any-group"), 30))
    asyncio.run(asyncio.wait_for(brokers_answer(live), 30))
    dead = KafkaSettings(bootstrap="127.0.0.1:9")
    with pytest.raises((KafkaError, OSError)):
        asyncio.run(asyncio.wait_for(group_coordinator_answers(dead, "lease-any-group"), 30))
    with pytest.raises((KafkaError, OSError)):
        asyncio.run(asyncio.wait_for(brokers_answer(dead), 30))
