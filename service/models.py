"""Database models: jobs, their per-stage results, published repos, and the events a user sees."""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # e.g. for a macOS worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Trigger(str, enum.Enum):
    CLI = "cli"
    API = "api"
    WEBHOOK = "webhook"
    NIGHTLY = "nightly"
    PAGE = "page"  # the status page's submit form


class Job(Base):
    """One conversion and publication of one source commit with one set of options and toolchain."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("dedupe_key", name="uq_jobs_dedupe_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_repo: Mapped[str] = mapped_column(String(200), index=True)
    requested_revision: Mapped[str | None] = mapped_column(String(200))
    source_sha: Mapped[str | None] = mapped_column(String(64))
    options: Mapped[dict] = mapped_column(JSON)
    # the Source resolved at submit (workers.source.source.Source.to_dict): stages fetch by it; None for jobs
    # recorded before sources were stored, which resolve again at their recorded commit
    source: Mapped[dict | None] = mapped_column(JSON)
    toolchain: Mapped[str] = mapped_column(String(300))
    dedupe_key: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value, index=True)
    trigger: Mapped[str] = mapped_column(String(16), default=Trigger.CLI.value)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    task_id: Mapped[str | None] = mapped_column(String(64))  # the Celery chain it was last sent as
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revivals: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # times the reaper re-sent it

    stages: Mapped[list[StageResult]] = relationship(back_populates="job", order_by="StageResult.id",
                                                     cascade="all, delete-orphan")
    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id",
                                                  cascade="all, delete-orphan")
    published: Mapped[list[PublishedRepo]] = relationship(back_populates="job", order_by="PublishedRepo.id",
                                                          cascade="all, delete-orphan")


class StageResult(Base):
    """One stage (optionally for one variant) of one job: state, attempts, where, how long, what it made."""

    __tablename__ = "stage_results"
    __table_args__ = (UniqueConstraint("job_id", "stage", "part", name="uq_stage_results_job_stage_part"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    part: Mapped[str] = mapped_column(String(64), default="")  # variant / component group, "" for whole-job stages
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_host: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration: Mapped[float | None] = mapped_column(Float)
    artifact_uri: Mapped[str | None] = mapped_column(String(500))
    figures: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # last sign of life while running
    runner: Mapped[str | None] = mapped_column(String(64))  # the task delivery (or local process) running it
    progress: Mapped[dict | None] = mapped_column(JSON)  # where a running stage is (service.progress), kept at the end

    job: Mapped[Job] = relationship(back_populates="stages")


class PublishedRepo(Base):
    """A repo a job published to, and the commit it made (or found already there)."""

    __tablename__ = "published_repos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    repo_id: Mapped[str] = mapped_column(String(200))
    commit: Mapped[str] = mapped_column(String(64))
    changed: Mapped[bool] = mapped_column(Boolean)
    tag: Mapped[str | None] = mapped_column(String(200))
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="published")


class JobEvent(Base):
    """A line of the job's log, as ``coreml-publish logs`` shows it."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    stage: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="events")


class WatchState(str, enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"
    GONE = "gone"  # deleted or renamed
    PRIVATE = "private"  # no longer visible with our token
    GATED = "gated"


class WatchedRepo(Base):
    """A source repo whose Core ML versions the service keeps current."""

    __tablename__ = "watched_repos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[str] = mapped_column(String(200), unique=True)
    options: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=WatchState.ACTIVE.value)
    reason: Mapped[str | None] = mapped_column(Text)
    last_seen_sha: Mapped[str | None] = mapped_column(String(64))
    last_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_check_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
