"""What the broker holds for each job: the jobs with a message waiting in a queue, and when the broker started.

Celery's Redis transport keeps each queue as a Redis list (and, with priorities, one list per priority step:
``<queue>\\x06\\x16<n>``); a message taken by a worker leaves the list for the ``unacked`` hash until the
worker acknowledges it, and comes back only after the visibility timeout (hours) if the worker died.  So a
job whose work is neither running (a stage with heartbeats) nor in a list has lost its next message.  Read
here with plain Redis commands because Celery has no API to list a queue's messages; other brokers answer
None (unknown), and the reaper then relies on heartbeats alone.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime, timedelta

from service.models import utcnow

log = logging.getLogger(__name__)
QUEUES = ("convert", "default", "publish", "macos")
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # kombu's default steps above 0 (step 0 is the queue's own list)
MAX_MESSAGES = 100_000  # read at most this many messages per list


def is_redis(url: str) -> bool:
    """Whether ``url`` is a Redis broker's (whose queues and start time this module can read)."""
    return url.startswith(("redis://", "rediss://", "unix://"))


def _client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def job_of(raw: bytes) -> int | None:
    """The job id a stage message is for (its first argument), or None for other messages."""
    try:
        message = json.loads(raw)
        task = str((message.get("headers") or {}).get("task", ""))
        if not task.startswith("coreml_publisher."):
            return None
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0]) if args and isinstance(args[0], int) else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def waiting_jobs(url: str) -> set[int] | None:
    """The ids of the jobs with a stage message waiting in one of the queues; None when unknown (not Redis,
    or the broker does not answer)."""
    if not is_redis(url):
        return None
    try:
        client = _client(url)
        waiting: set[int] = set()
        for queue in QUEUES:
            for name in (queue, *(f"{queue}{PRIORITY_SEPARATOR}{n}" for n in PRIORITY_STEPS)):
                for raw in client.lrange(name, 0, MAX_MESSAGES - 1):
                    job = job_of(raw)
                    if job is not None:
                        waiting.add(job)
        client.close()
        return waiting
    except Exception as e:  # the broker is down: nothing to compare with this pass
        log.warning("cannot read the broker's queues: %s", e.__class__.__name__)
        return None


def broker_started_at(url: str) -> datetime | None:
    """When the broker (Redis) last started, rounded late (its uptime counts whole seconds) so that work sent
    in that second counts as sent before; None for other brokers or when it does not answer."""
    if not is_redis(url):
        return None
    try:
        client = _client(url)
        uptime = int(client.info("server")["uptime_in_seconds"])
        client.close()
    except Exception as e:  # the broker is down: nothing to compare with this pass
        log.warning("cannot ask the broker when it started: %s", e.__class__.__name__)
        return None
    return utcnow() - timedelta(seconds=uptime - 1)
