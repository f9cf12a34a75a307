"""Job lifecycle: submit (deduplicated), state changes, stage results, events, cancel, retry.

Plain keyword-only functions taking a session; the CLI, the HTTP API, the Celery tasks and the webhook
receiver all go through them.  Recording functions used from inside stages (``record_event``) never raise:
a failing log line must not fail a conversion.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, not_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import JobError, JobNotFoundError, OptionsError
from service.models import Job, JobEvent, JobState, PublishedRepo, StageResult, Trigger, utcnow
from service.progress import finished
from workers.options import JobOptions
from workers.versions import toolchain

log = logging.getLogger(__name__)


def toolchain_fingerprint() -> str:
    """The versions that change a conversion's output."""
    versions = toolchain()
    return "; ".join(f"{k} {versions[k]}" for k in ("converter", "coremltools", "torch", "diffusers", "transformers"))


def dedupe_key(source_repo: str, source_sha: str, options: JobOptions, fingerprint: str) -> str:
    return hashlib.sha256("\n".join([source_repo, source_sha, options.key(), fingerprint]).encode()).hexdigest()


@dataclass
class Submitted:
    job: Job
    created: bool  # False: an identical job already existed and is returned instead
    notes: list[str] = field(default_factory=list)
    publications: list["Publication"] = field(default_factory=list)  # earlier ones of the source, these options


def submit_job(session: Session, *, source_repo: str, source_sha: str, options: JobOptions,
               revision: str | None = None, trigger: Trigger = Trigger.CLI, source: dict | None = None) -> Submitted:
    """Record a job, or return the existing one for the same (repo, sha, options, toolchain).

    Uniqueness is the database's (a constraint, not check-then-insert), so concurrent submits of the
    same thing yield one job.  ``source`` is the resolved source (``Source.to_dict()``) its stages fetch by.
    The caller commits and then enqueues.
    """
    fingerprint = toolchain_fingerprint()
    key = dedupe_key(source_repo, source_sha, options, fingerprint)
    existing = session.scalar(select(Job).where(Job.dedupe_key == key))
    if existing is not None:
        return Submitted(existing, False)
    job = Job(source_repo=source_repo, requested_revision=revision, source_sha=source_sha,
              options=options.stored(), source=source, toolchain=fingerprint, dedupe_key=key, state=JobState.QUEUED.value,
              trigger=trigger.value)
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        existing = session.scalar(select(Job).where(Job.dedupe_key == key))
        if existing is None:
            raise
        return Submitted(existing, False)
    session.add(JobEvent(job_id=job.id, message=f"submitted {source_repo}@{source_sha[:10]} via {trigger.value}"))
    return Submitted(job, True)


@dataclass(frozen=True)
class Publication:
    """A finished job that published a source with the same options: the repos it made, and from which commit."""

    job_id: int
    source_sha: str
    repos: tuple[str, ...]
    finished_at: datetime | None
    same_commit: bool  # False: an older (or other) commit of the source


def earlier_publications(session: Session, *, source_repo: str, source_sha: str, options: JobOptions,
                         exclude: int | None = None, limit: int = 200) -> list[Publication]:
    """The succeeded jobs that published ``source_repo`` with the same options (as a dedupe key tells them apart;
    any toolchain), newest first: those of ``source_sha`` marked ``same_commit``, the others older commits a new
    job would re-convert.  ``exclude``: a job not to list (the one just submitted)."""
    key = options.key()
    found = []
    query = select(Job).where(Job.source_repo == source_repo, Job.state == JobState.SUCCEEDED.value) \
        .order_by(Job.id.desc()).limit(limit)
    for job in session.scalars(query):
        if job.id == exclude or not job.published:
            continue
        try:
            same_options = JobOptions.from_dict(job.options).key() == key
        except Exception:  # options stored by an older version that no longer load: not comparable
            continue
        if same_options:
            found.append(Publication(job.id, job.source_sha or "", tuple(p.repo_id for p in job.published),
                                     job.finished_at, job.source_sha == source_sha))
    return found


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id}", job_id=job_id, hint="List jobs with `coreml-publish jobs`.")
    return job


def list_jobs(session: Session, *, state: str | None = None, limit: int = 50, search: str | None = None,
              trigger: str | None = None, offset: int = 0) -> list[Job]:
    """Jobs newest first: of one ``state``, one ``trigger``, whose source repo id holds ``search`` (any case),
    ``limit`` of them after the first ``offset``."""
    query = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
    if state:
        if state not in {s.value for s in JobState}:
            raise OptionsError(f"unknown state {state!r}", hint=f"Use one of {', '.join(s.value for s in JobState)}.")
        query = query.where(Job.state == state)
    if trigger:
        if trigger not in {t.value for t in Trigger}:
            raise OptionsError(f"unknown trigger {trigger!r}", hint=f"Use one of {', '.join(t.value for t in Trigger)}.")
        query = query.where(Job.trigger == trigger)
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Job.source_repo.ilike(f"%{escaped}%", escape="\\"))
    return list(session.scalars(query))


def record_event(session: Session, job_id: int, message: str, *, stage: str | None = None,
                 level: str = "info") -> None:
    """Append a line to the job's log; never raises."""
    try:
        session.add(JobEvent(job_id=job_id, message=message[:4000], stage=stage, level=level))
        session.flush()
    except Exception:  # a log line must never fail the job
        log.exception("could not record an event for job %s", job_id)


def set_state(session: Session, job: Job, state: JobState, *, error: str | None = None) -> None:
    """Move a job to ``state`` (timestamps kept); a finished job only leaves its state through retry."""
    now = utcnow()
    if state is JobState.RUNNING and job.started_at is None:
        job.started_at = now
    if state.finished:
        job.finished_at = now
    job.state = state.value
    if error is not None:
        job.error = error
    session.flush()


def stage_result(session: Session, job: Job, stage: str, part: str = "") -> StageResult:
    """The job's result row for a stage (created pending on first use)."""
    result = session.scalar(select(StageResult).where(StageResult.job_id == job.id, StageResult.stage == stage,
                                                      StageResult.part == part))
    if result is None:
        result = StageResult(job_id=job.id, stage=stage, part=part, state="pending", attempts=0)
        try:
            with session.begin_nested():
                session.add(result)
                session.flush()
        except IntegrityError:  # another worker created it first
            result = session.scalar(select(StageResult).where(StageResult.job_id == job.id,
                                                              StageResult.stage == stage, StageResult.part == part))
    return result


def claim_stage(session: Session, result: StageResult, *, runner: str, timeout: float) -> bool:
    """Take a stage to run it, atomically: refused while another runner holds it with a heartbeat fresher
    than ``timeout`` seconds (two deliveries of one stage never run it at once)."""
    now = utcnow()
    held = and_(StageResult.state == "running", or_(StageResult.runner.is_(None), StageResult.runner != runner),
                StageResult.heartbeat_at.is_not(None),
                StageResult.heartbeat_at >= now - timedelta(seconds=timeout))
    taken = session.execute(
        update(StageResult).where(StageResult.id == result.id, StageResult.state != "succeeded", not_(held))
        .values(state="running", runner=runner, started_at=now, heartbeat_at=now, error=None, progress=None,
                attempts=StageResult.attempts + 1, worker_host=socket.gethostname())
        .execution_options(synchronize_session=False))
    if taken.rowcount != 1:
        return False
    session.refresh(result)
    return True


def beat(session: Session, result_id: int) -> None:
    """A running stage's sign of life."""
    session.execute(update(StageResult).where(StageResult.id == result_id, StageResult.state == "running")
                    .values(heartbeat_at=utcnow()))


def aware(value: datetime) -> datetime:
    """A timestamp read back from the database, in UTC (SQLite returns them without a zone)."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def silent_for(result: StageResult, now: datetime) -> float:
    """Seconds since a running stage's last heartbeat."""
    beat = result.heartbeat_at or result.started_at
    return float("inf") if beat is None else (now - aware(beat)).total_seconds()


UNSENT = "unsent"  # the task id of a job whose last send to the queue failed


def last_activity(job: Job) -> datetime:
    """When the job was last sent, or one of its stages last started, beat or finished."""
    moments = [job.enqueued_at or job.created_at] + [t for r in job.stages
                                                      for t in (r.started_at, r.heartbeat_at, r.finished_at) if t]
    return max(aware(t) for t in moments)


def stuck_reason(job: Job, *, now: datetime, timeout: float, waiting: set[int] | None = None) -> str | None:
    """Why an unfinished job has no live task, or None.

    Stuck: its last send failed; it never reached the queue; a running stage's worker went silent; or,
    when ``waiting`` (the ids of the jobs with a message waiting in the broker's queues) is known, nothing of
    it ran or waited for ``timeout`` seconds: its next stage's message was lost with a worker that died
    holding it (before acknowledging it, or between two stages) or with the broker.  A job waiting for a
    macOS worker, or queued behind other work after being sent, is not stuck.
    """
    if job.state not in (JobState.QUEUED.value, JobState.RUNNING.value):
        return None
    if job.task_id == UNSENT:
        return "its last send to the queue failed"
    for result in job.stages:
        if result.state == "running" and silent_for(result, now) > timeout:
            where = f"{result.stage}{' ' + result.part if result.part else ''}"
            return f"the worker on {result.worker_host} went silent during {where}"
    idle = (now - last_activity(job)).total_seconds() > timeout
    if job.state == JobState.QUEUED.value and job.task_id is None and idle:
        return "it never reached the queue"
    if waiting is not None and job.task_id is not None and idle and job.id not in waiting \
            and not any(result.state == "running" for result in job.stages):
        done = [r for r in job.stages if r.state == "succeeded"]
        after = f" after {max(done, key=lambda r: aware(r.finished_at or r.started_at)).stage}" if done else ""
        return f"its next stage{after} was lost (no worker runs it and none waits in the queue)"
    return None


def sent_before_restart(job: Job, broker_started_at: datetime | None) -> str | None:
    """Why an unfinished job's queued work may be gone: it was sent before the broker last started (a broker
    without persistence forgets queued messages and chord state), or None."""
    if broker_started_at is None or job.task_id in (None, UNSENT) or job.state not in (
            JobState.QUEUED.value, JobState.RUNNING.value, JobState.WAITING.value):
        return None
    if aware(job.enqueued_at or job.created_at) < broker_started_at:
        return "it was sent before the broker restarted, which may have lost its queued work"
    return None


def revive_job(session: Session, job: Job, reason: str, *, timeout: float | None = None) -> None:
    """Make a stuck job runnable again (the caller sends it): stages silent longer than ``timeout`` seconds back
    to pending; stages whose runners are alive, and every running stage when ``timeout`` is None, are left to
    their runners (a second delivery waits for them)."""
    now = utcnow()
    for result in job.stages:
        if result.state == "running" and timeout is not None and silent_for(result, now) > timeout:
            result.state, result.error, result.runner = "pending", f"interrupted: {reason}", None
    if not any(result.state == "running" for result in job.stages):
        job.state = JobState.QUEUED.value
    job.error, job.finished_at = None, None
    job.task_id, job.enqueued_at = None, now
    job.revivals += 1
    record_event(session, job.id, f"sent again: {reason}", level="warning")
    session.flush()


def record_unsent(session: Session, job_id: int) -> None:
    """Mark a job whose send to the queue failed: the reaper's next pass, or a submit of the same job, sends it
    at once (without waiting for the heartbeat timeout)."""
    job = get_job(session, job_id)
    if job.task_id is None:
        job.task_id = UNSENT
        session.flush()


def record_sent(session: Session, job_id: int, task_id: str) -> None:
    """Tie a job to the task chain it was sent as."""
    job = get_job(session, job_id)
    job.task_id, job.enqueued_at = task_id[:64], utcnow()
    session.flush()


def finish_stage(session: Session, result: StageResult, *, state: str, figures: dict | None = None,
                 artifact_uri: str | None = None, error: str | None = None) -> None:
    result.state, result.finished_at = state, utcnow()
    if result.started_at is not None:
        result.duration = (result.finished_at - aware(result.started_at)).total_seconds()
    result.figures, result.artifact_uri, result.error = figures, artifact_uri, error
    result.progress = finished(result.progress, succeeded=state == "succeeded")
    session.flush()


def record_published(session: Session, job: Job, *, repo_id: str, commit: str, changed: bool,
                     tag: str | None) -> None:
    session.add(PublishedRepo(job_id=job.id, repo_id=repo_id, commit=commit, changed=changed, tag=tag))
    session.flush()


def cancel_job(session: Session, job_id: int) -> Job:
    """Cancel a job that has not finished; running stages stop at their next step."""
    job = get_job(session, job_id)
    if JobState(job.state).finished:
        raise JobError(f"job {job_id} already {job.state}", job_id=job_id, hint="Nothing to cancel.")
    set_state(session, job, JobState.CANCELLED, error="cancelled by user")
    record_event(session, job.id, "cancelled")
    return job


def retry_job(session: Session, job_id: int) -> Job:
    """Queue a failed or cancelled job again; stages that succeeded are not redone."""
    job = get_job(session, job_id)
    if job.state not in (JobState.FAILED.value, JobState.CANCELLED.value):
        raise JobError(f"job {job_id} is {job.state} and alive; only failed, cancelled or stuck jobs can be retried",
                       job_id=job_id, hint="Wait for it to finish, or cancel it first.")
    for result in job.stages:
        if result.state != "succeeded":
            result.state, result.error = "pending", None
    job.state, job.error, job.finished_at = JobState.QUEUED.value, None, None
    record_event(session, job.id, "queued again (retry)")
    session.flush()
    return job


def is_cancelled(session: Session, job_id: int) -> bool:
    """Whether the job was cancelled, read fresh from the database."""
    state = session.scalar(select(Job.state).where(Job.id == job_id).execution_options(populate_existing=True))
    return state == JobState.CANCELLED.value


def job_summary(job: Job) -> dict:
    """A JSON-ready view of a job with its stages, repos and figures (the API's and `status`'s data)."""
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": job.id, "source_repo": job.source_repo, "revision": job.requested_revision,
        "source_sha": job.source_sha, "state": job.state, "trigger": job.trigger, "options": job.options,
        "toolchain": job.toolchain, "error": job.error, "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "stages": [{"stage": s.stage, "part": s.part, "state": s.state, "attempts": s.attempts,
                    "worker_host": s.worker_host, "duration": s.duration, "figures": s.figures,
                    "error": s.error, "artifact_uri": s.artifact_uri, "progress": s.progress} for s in job.stages],
        "published": [{"repo_id": p.repo_id, "commit": p.commit, "changed": p.changed, "tag": p.tag}
                      for p in job.published],
    }


def publication_notes(publications: list[Publication], *, hub: str, source_sha: str) -> list[str]:
    """What a user submitting is told of earlier publications: those of this commit, else the newest older one."""
    same = [p for p in publications if p.same_commit]
    if same:
        p = same[0]
        return [f"already published from commit {p.source_sha[:10]} with these options by job {p.job_id}: "
                + ", ".join(f"{hub}/{repo}" for repo in p.repos)]
    if publications:
        p = publications[0]
        when = f" on {p.finished_at:%Y-%m-%d}" if p.finished_at else ""
        return [f"an older commit {p.source_sha[:10]} was published with these options by job {p.job_id}{when}: "
                + ", ".join(f"{hub}/{repo}" for repo in p.repos) + f"; this job converts {source_sha[:10]}"]
    return []


def publication_summary(publication: Publication, hub: str) -> dict:
    """A publication as the API returns it."""
    return {"job_id": publication.job_id, "source_sha": publication.source_sha,
            "same_commit": publication.same_commit,
            "finished_at": publication.finished_at.isoformat() if publication.finished_at else None,
            "repos": list(publication.repos), "urls": [f"{hub}/{repo}" for repo in publication.repos]}
