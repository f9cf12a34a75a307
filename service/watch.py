"""Watching repos: the watch list, the nightly sweep, and what a Hub webhook starts.

A sweep asks the Hub for each active watched repo's head commit (one call) and submits a job when no job
exists yet for (repo, head sha, options, current toolchain): a new commit or a new toolchain means a
re-conversion; anything else costs that one call and no job.  Because jobs are unique per that key, two
schedulers or a second sweep the same night submit nothing twice.  Repos that are gone, private or gated
are marked with the reason and skipped until resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import (
    GatedSourceError,
    JobError,
    NotWatchedError,
    OptionsError,
    SourceAccessError,
    SourceError,
    SourceNotFoundError,
)
from service import jobs
from service.jobs import aware, dedupe_key
from service.submit import create_job
from service.models import Job, JobState, Trigger, WatchedRepo, WatchState, utcnow
from workers.options import JobOptions
from workers.source.lora import lora_repo

log = logging.getLogger(__name__)
CHECK_INTERVAL = timedelta(hours=24)


def get_watch(session: Session, repo_id: str) -> WatchedRepo:
    watch = session.scalar(select(WatchedRepo).where(WatchedRepo.repo_id == repo_id))
    if watch is None:
        raise NotWatchedError(f"{repo_id} is not watched", hint="See `coreml-publish watch list`.")
    return watch


def add_watch(session: Session, *, repo_id: str, options: JobOptions) -> WatchedRepo:
    """Start watching a repo (its first check is due at once)."""
    from workers.names import looks_like_repo_id

    if not looks_like_repo_id(repo_id) or "/" not in repo_id:
        raise OptionsError(f"{repo_id!r} is not a Hub repo id", hint="Use org/name.")
    watch = WatchedRepo(repo_id=repo_id, options=options.stored(), state=WatchState.ACTIVE.value,
                        next_check_at=utcnow())
    try:
        with session.begin_nested():
            session.add(watch)
            session.flush()
    except IntegrityError as e:
        raise JobError(f"{repo_id} is already watched", hint="Remove it first to change its options.") from e
    return watch


def remove_watch(session: Session, repo_id: str) -> None:
    session.delete(get_watch(session, repo_id))
    session.flush()


def set_paused(session: Session, repo_id: str, paused: bool) -> WatchedRepo:
    """Pause a watch, or resume one (also one marked gone, private or gated: it is checked again)."""
    watch = get_watch(session, repo_id)
    watch.state = WatchState.PAUSED.value if paused else WatchState.ACTIVE.value
    watch.reason = None if not paused else "paused by user"
    if not paused:
        watch.next_check_at = utcnow()
    session.flush()
    return watch


def watch_rows(session: Session) -> list[dict]:
    """The watch list with each repo's last published commit."""
    rows = []
    for watch in session.scalars(select(WatchedRepo).order_by(WatchedRepo.repo_id)):
        published = session.scalar(select(Job).where(Job.source_repo == watch.repo_id,
                                                     Job.state == JobState.SUCCEEDED.value)
                                   .order_by(Job.finished_at.desc()).limit(1))
        rows.append({"repo_id": watch.repo_id, "state": watch.state, "reason": watch.reason,
                     "last_seen_sha": watch.last_seen_sha,
                     "last_published_sha": published.source_sha if published else None,
                     "last_published_at": published.finished_at.isoformat() if published and published.finished_at
                     else None,
                     "next_check_at": watch.next_check_at.isoformat() if watch.next_check_at else None,
                     "options": watch.options})
    return rows


@dataclass(frozen=True)
class SweepResult:
    repo_id: str
    outcome: str  # "submitted", "unchanged", "gone", "private", "gated", "unreachable", "refused"
    sha: str | None = None
    job_id: int | None = None
    detail: str = ""


def sweep(*, now: datetime | None = None, due_only: bool = False, settings=None,
          get_head: Callable[[str], str] | None = None) -> list[SweepResult]:
    """Check every active watched repo (or only those due) and submit the jobs that are missing.

    ``get_head(repo_id)`` asks for a repo's main commit (default: :func:`workers.hub.client.head_sha`); what
    the Hub refuses marks the watch (gated, gone, private), what it cannot answer now is left for the next sweep.
    """
    from service.db import session_scope
    from service.errors import CoreMLPublishError
    from service.settings import get_settings
    from workers.hub.client import head_sha

    settings = settings or get_settings()
    now = now or utcnow()
    get_head = get_head or (lambda repo: head_sha(repo, endpoint=settings.hub_endpoint))
    with session_scope(settings.database_url) as session:
        query = select(WatchedRepo).where(WatchedRepo.state == WatchState.ACTIVE.value)
        watches = [(w.repo_id, w.options, w.next_check_at) for w in session.scalars(query)]
    results = []
    for repo_id, options_data, next_check in watches:
        if due_only and next_check is not None and aware(next_check) > now:
            continue
        try:
            options = JobOptions.from_dict(options_data)
        except (CoreMLPublishError, TypeError) as e:  # saved under older rules: say so, check the others
            detail = e.one_line() if isinstance(e, CoreMLPublishError) else f"unreadable options ({e})"
            with session_scope(settings.database_url) as session:
                get_watch(session, repo_id).reason = detail
            results.append(SweepResult(repo_id, "refused", detail=detail))
            continue
        state, reason, sha = None, None, None
        # the watched repo, then its --vae, --refiner, --config and --lora repos: a new commit to any is a new job
        asked = repo_id
        try:
            sha = get_head(repo_id)
            extras = {}
            for kind in ("vae", "refiner", "config"):
                if getattr(options, kind):
                    asked = f"--{kind} {getattr(options, kind)}"
                    extras[kind] = get_head(getattr(options, kind))
            for i, lora in enumerate(options.loras):
                asked = f"--lora {lora_repo(lora)}"
                extras[f"lora{i}"] = get_head(lora_repo(lora))
            options = options.pinned(extras)
        except GatedSourceError:
            state, reason = WatchState.GATED, "gated: accept its terms with the service's Hub account"
        except SourceNotFoundError:
            state, reason = WatchState.GONE, "not found: deleted, renamed or made private"
        except SourceAccessError as e:
            state, reason = WatchState.PRIVATE, f"not readable with the service's token ({e.status})"
        except SourceError as e:  # the Hub could not answer now (HubUnavailableError), or answered oddly
            detail = f"the Hub answered {e.status}" if e.status else e.__cause__.__class__.__name__
            results.append(SweepResult(repo_id, "unreachable", detail=detail))
            continue
        if reason is not None and asked != repo_id:
            reason = f"{asked} is {reason}"
        with session_scope(settings.database_url) as session:
            watch = get_watch(session, repo_id)
            watch.last_checked_at, watch.next_check_at = now, now + CHECK_INTERVAL
            if state is not None:
                watch.state, watch.reason = state.value, reason
                results.append(SweepResult(repo_id, state.value, detail=reason))
                continue
            watch.last_seen_sha = sha
            key = dedupe_key(repo_id, sha, options, jobs.toolchain_fingerprint())
            existing = session.scalar(select(Job.id).where(Job.dedupe_key == key))
        if existing is not None:
            results.append(SweepResult(repo_id, "unchanged", sha, existing))
            continue
        try:
            submitted = create_job(source_repo=repo_id, options=options, revision=sha, trigger=Trigger.NIGHTLY,
                                   settings=settings)
        except CoreMLPublishError as e:  # e.g. the new commit is no longer convertible: say so, keep watching
            with session_scope(settings.database_url) as session:
                get_watch(session, repo_id).reason = e.one_line()
            results.append(SweepResult(repo_id, "refused", sha, detail=e.one_line()))
            continue
        results.append(SweepResult(repo_id, "submitted" if submitted.created else "unchanged", sha,
                                   submitted.job.id))
    return results
