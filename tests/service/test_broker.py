"""Reading the broker: the jobs with a message waiting in Celery's Redis queues, and when Redis started."""

from __future__ import annotations

import pytest
import redis

from service.broker import broker_started_at, job_of, waiting_jobs
from service.models import utcnow
from service.settings import Settings
from service.submit import enqueue

BROKER = "redis://127.0.0.1:6379/7"  # its own db: flushed here


@pytest.fixture
def broker():
    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    yield client
    client.flushdb()


def test_the_jobs_waiting_in_the_queues_are_read_from_their_messages(broker) -> None:
    settings = Settings(broker_url=BROKER)
    enqueue(41, ["unet-original"], packages_only=True, settings=settings)
    enqueue(42, ["text_encoder"], packages_only=False, settings=settings)
    assert waiting_jobs(BROKER) == {41, 42}
    broker.lpop("convert")  # a worker took one (it sits in `unacked` until acknowledged)
    assert len(waiting_jobs(BROKER)) == 1


def test_other_messages_and_garbage_name_no_job(broker) -> None:
    broker.lpush("default", b"not json", b'{"headers": {"task": "coreml_publisher.reap"}, "body": "W1tdLCB7fSwge31d",'
                            b' "properties": {"body_encoding": "base64"}}', b'{"headers": {"task": "other.task"}}')
    assert waiting_jobs(BROKER) == set()
    assert job_of(b"[]") is None and job_of(b'{"headers": null}') is None


def test_an_unreadable_broker_is_unknown_not_empty() -> None:
    assert waiting_jobs("redis://127.0.0.1:1/0") is None
    assert waiting_jobs("amqp://guest@127.0.0.1//") is None


def test_the_broker_start_time_comes_from_redis() -> None:
    started = broker_started_at("redis://127.0.0.1:6379/0")
    assert started is not None and started <= utcnow()
    assert broker_started_at("redis://127.0.0.1:1/0") is None  # nothing listens: no comparison this pass
    assert broker_started_at("amqp://guest@127.0.0.1//") is None
