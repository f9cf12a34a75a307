"""What the status page shows beyond one job: hosts seen working, Celery workers and queues, the watch list.

Plain keyword-only functions taking a session (or the settings, for the broker); the page's router
(``service.api.status``) only renders what they return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.jobs import aware
from service.models import StageResult, WatchedRepo, utcnow
from service.settings import Settings
from service.watch import watch_rows

RECENT = timedelta(minutes=15)  # a host that ran or beat for a stage this recently counts as seen
PROGRESS_KEYS = ("component", "layout", "precision", "step", "done", "total", "fraction", "eta_seconds", "counter")
WORKERS_MAX_AGE = 5.0  # seconds one broadcast's answer about the workers serves the page


@dataclass
class HostSeen:
    """A worker host as the job database saw it: its last sign of life and the stages it is running."""

    host: str
    last_seen: datetime
    running: list[str] = field(default_factory=list)  # "job 5: convert unet-original"
    finished: int = 0  # stage runs it finished in the window


def hosts_seen(session: Session, *, since: datetime | None = None) -> list[HostSeen]:
    """Hosts that started, beat for or finished a stage since ``since`` (default: the last 15 minutes),
    most recently seen first."""
    since = since or utcnow() - RECENT
    rows = session.scalars(select(StageResult).where(StageResult.worker_host.is_not(None), or_(
        StageResult.heartbeat_at >= since, StageResult.finished_at >= since, StageResult.started_at >= since)))
    hosts: dict[str, HostSeen] = {}
    for result in rows:
        seen = max(aware(t) for t in (result.heartbeat_at, result.finished_at, result.started_at) if t is not None)
        entry = hosts.setdefault(result.worker_host, HostSeen(result.worker_host, seen))
        entry.last_seen = max(entry.last_seen, seen)
        if result.state == "running":
            entry.running.append(f"job {result.job_id}: {result.stage} {result.part}".rstrip())
        elif result.finished_at is not None and aware(result.finished_at) >= since:
            entry.finished += 1
    return sorted(hosts.values(), key=lambda h: h.last_seen, reverse=True)


def celery_workers(settings: Settings, *, timeout: float = 1.0,
                   max_age: float = WORKERS_MAX_AGE) -> dict[str, list[str]] | None:
    """Each running Celery worker and the queues it consumes, from a broadcast answered within ``timeout``
    seconds (shared by the requests of ``max_age`` seconds, see :func:`service.celery_app.active_queues`);
    None when it fails.  Ask only once the broker has answered a quick check
    (:func:`service.metrics.queue_depths`): against a dead broker the broadcast retries its connection."""
    try:
        from service.celery_app import active_queues

        replies = active_queues(settings.broker_url, timeout=timeout, max_age=max_age)
    except Exception:  # a status page reports; it does not raise
        return None
    return {name: sorted(q.get("name", "?") for q in queues) for name, queues in sorted(replies.items())}


def watch_list(session: Session) -> list[dict]:
    """The watch list (as ``watch list`` shows it) with when each repo was last checked."""
    checked = dict(session.execute(select(WatchedRepo.repo_id, WatchedRepo.last_checked_at)).all())
    return [row | {"last_checked_at": checked.get(row["repo_id"])} for row in watch_rows(session)]


def stage_progress(result: StageResult) -> dict | None:
    """A stage's progress when its worker reports one (the ``progress`` column, or a ``progress`` entry of its
    figures): component, layout, precision, step, done, total, fraction (0 to 1), eta_seconds, counter."""
    progress = getattr(result, "progress", None)
    if not progress and isinstance(result.figures, dict):
        progress = result.figures.get("progress")
    if not isinstance(progress, dict):
        return None
    values = {key: progress.get(key) for key in PROGRESS_KEYS}
    fraction, done, total = values["fraction"], values["done"], values["total"]
    if not _number(fraction) and _number(done) and _number(total) and total > 0:
        fraction = done / total
    values["fraction"] = min(1.0, max(0.0, float(fraction))) if _number(fraction) else None
    counter = values["counter"]
    values["counter"] = counter if isinstance(counter, dict) and counter.get("label") else None
    return values


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
