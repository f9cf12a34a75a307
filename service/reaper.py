"""The reaper: finds jobs with no live task and sends them again, or fails them after ``max_revivals``.

A job is stuck when it was recorded but never reached the queue (the broker was down at submit), when a
running stage's heartbeats stopped (its worker was killed as a whole, its host lost power), when nothing of
it has run or waited in a queue for the heartbeat timeout (a worker died holding its next message, before
acknowledging it or between two stages, see :mod:`service.broker`), or when it was sent before the broker
last restarted (a Redis without persistence forgets queued messages and chord state).  Stages are
idempotent and skip themselves once done, and a second delivery of a running stage waits for it, so sending
a job again resumes it where it stopped.  The scheduler runs a pass every minute; ``coreml-publish reap``
runs one by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from service.broker import broker_started_at, waiting_jobs
from service.db import session_scope
from service.errors import ServiceUnavailableError
from service.jobs import record_event, revive_job, sent_before_restart, set_state, stuck_reason
from service.models import Job, JobState, utcnow
from service.settings import Settings, get_settings
from service.submit import send
from workers.options import JobOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reaped:
    job_id: int
    action: str  # "sent again", "failed", or "not sent" (the broker is still down)
    reason: str


def reap(*, settings: Settings | None = None, now: datetime | None = None) -> list[Reaped]:
    """One pass over the unfinished jobs; returns what it did to each stuck one."""
    settings = settings or get_settings()
    now = now or utcnow()
    restarted = broker_started_at(settings.broker_url)
    waiting = waiting_jobs(settings.broker_url)
    done, resend = [], []
    with session_scope(settings.database_url) as session:
        unfinished = [JobState.QUEUED.value, JobState.RUNNING.value, JobState.WAITING.value]
        query = select(Job).where(Job.state.in_(unfinished)) \
            .order_by(Job.id).with_for_update(skip_locked=True)  # two reapers never take the same job
        for job in session.scalars(query):
            reason = stuck_reason(job, now=now, timeout=settings.heartbeat_timeout, waiting=waiting)
            timeout: float | None = settings.heartbeat_timeout
            if reason is None:
                reason, timeout = sent_before_restart(job, restarted), None
            if reason is None:
                continue
            if job.revivals >= settings.max_revivals:
                set_state(session, job, JobState.FAILED,
                          error=f"stuck: {reason} (sent again {job.revivals} times already)")
                record_event(session, job.id, f"failed by the reaper: {reason}", level="error")
                done.append(Reaped(job.id, "failed", reason))
                continue
            revive_job(session, job, reason, timeout=timeout)
            resend.append((job.id, JobOptions.from_dict(job.options), reason))
    for job_id, options, reason in resend:
        try:
            send(job_id, options, settings=settings)
            done.append(Reaped(job_id, "sent again", reason))
        except ServiceUnavailableError as e:  # stays queued without a task: the next pass tries again
            log.warning("%s", e.one_line())
            done.append(Reaped(job_id, "not sent", e.message))
    for item in done:
        log.warning("job %s %s: %s", item.job_id, item.action, item.reason)
    return done
