"""Starting work: turn a request into job options, resolve the source, record the job, enqueue its stages.

The one place where a job goes from the database to the queue (``create_job`` and ``retry``), used by the
CLI, the HTTP API, the webhook receiver and the nightly sweep.  ``service.jobs`` records state and never
enqueues; stages are sent by task name, so sending work never imports the tasks that do it.
"""

from __future__ import annotations

from typing import Iterable

from service.db import session_scope
from service.errors import OptionsError
from service.jobs import JobOptions, Submitted, get_job, retry_job, submit_job
from service.models import Trigger
from service.settings import Settings, get_settings


def requested_options(*, namespace: str | None, attentions: Iterable[str], bits: int | None, private: bool = False,
                      packages_only: bool = False, settings: Settings | None = None) -> JobOptions:
    """Options as a user asks for them: the service's namespace when none is given, 0 bits meaning float16 only."""
    settings = settings or get_settings()
    return JobOptions(namespace=namespace or settings.default_namespace or "", attentions=tuple(attentions),
                      bits=bits or None, private=private, packages_only=packages_only)


def create_job(*, source_repo: str, options: JobOptions, revision: str | None = None,
               trigger: Trigger = Trigger.CLI, local: bool = False, settings: Settings | None = None) -> Submitted:
    """Resolve a Hub repo to its commit, record the job (deduplicated), commit, then enqueue it.

    With ``local`` nothing is enqueued: the caller runs the stages in-process.  Raises SourceError (and
    subclasses) for sources that cannot be converted, before any job is recorded.
    """
    from workers.resolve import looks_like_repo_id, resolve_source

    settings = settings or get_settings()
    if not looks_like_repo_id(source_repo) or "/" not in source_repo:
        raise OptionsError(f"{source_repo!r} is not a Hub repo id",
                           hint="Jobs take org/name; convert a local folder with `coreml-publish convert`.")
    source = resolve_source(source_repo, revision=revision, endpoint=settings.hub_endpoint,
                            max_bytes=int(settings.max_source_gb * 1e9),
                            need_safety_checker=options.components is None or "safety_checker" in options.components)
    with session_scope(settings.database_url) as session:
        submitted = submit_job(session, source_repo=source_repo, source_sha=source.sha, options=options,
                               revision=revision, trigger=trigger)
        job_id = submitted.job.id
    if submitted.created and not local:
        enqueue(job_id, options.parts(), packages_only=options.packages_only)
    return submitted


def retry(job_id: int, *, settings: Settings | None = None) -> None:
    """Queue a failed or cancelled job again; finished stages are skipped by the workers."""
    settings = settings or get_settings()
    with session_scope(settings.database_url) as session:
        retry_job(session, job_id)
        options = JobOptions.from_dict(get_job(session, job_id).options)
    enqueue(job_id, options.parts(), packages_only=options.packages_only)


def enqueue(job_id: int, parts: list[str], *, packages_only: bool) -> str:
    """Send a job's stages: fetch, the convert parts in parallel, then merge, compile/package, publish.

    Call after the job's row is committed.  Returns the Celery id of the chain.
    """
    from celery import chain, chord

    from service.celery_app import stage_signature as stage  # loaded only by what sends work

    finish = stage("package", job_id) if packages_only else stage("compile", job_id)
    flow = chain(stage("fetch", job_id), chord([stage("convert", job_id, p) for p in parts], stage("merge", job_id)),
                 finish, stage("publish", job_id))
    return flow.apply_async().id
