import asyncio

import pytest
from aiokafka import errors

from streams.ingest.failures import PERMANENT, permanent


@pytest.mark.parametrize("kind,reason", PERMANENT)
def test_each_permanent_error_names_its_reason(kind: type[BaseException], reason: str) -> None:
    assert permanent(kind("boom")) == reason


@pytest.mark.parametrize("exc", [
    errors.KafkaConnectionError("down"), errors.KafkaTimeoutError(), errors.NotLeaderForPartitionError(),
    errors.RequestTimedOutError(), asyncio.TimeoutError(), OSError("refused"),
    errors.NotEnoughReplicasError(), errors.UnknownTopicOrPartitionError(), errors.CorruptRecordException(),
])
def test_outages_are_retried(exc: BaseException) -> None:
    assert permanent(exc) is None
