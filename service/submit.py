"""Starting work: turn a request into job options, resolve the source, record the job, enqueue its stages.

The one place where a job goes from the database to the queue (``create_job`` and ``retry``), used by the
CLI, the HTTP API, the webhook receiver and the nightly sweep.  ``service.jobs`` records state and never
enqueues; stages are sent by task name, so sending work never imports the tasks that do it.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from service.broker import waiting_jobs
from service.db import session_scope
from service.errors import OptionsError, ServiceUnavailableError
from service.jobs import (
    Submitted,
    dedupe_key,
    toolchain_fingerprint,
    earlier_publications,
    get_job,
    record_sent,
    record_unsent,
    retry_job,
    revive_job,
    stuck_reason,
    submit_job,
)
from service.models import Job, Trigger, utcnow
from service.settings import Settings, get_settings
from workers.options import JobOptions

log = logging.getLogger(__name__)
LOCAL = "local"  # the task id of jobs run in the submitting process (`submit --local`)


def requested_options(values: dict, *, settings: Settings | None = None,
                      options_type: type[JobOptions] = JobOptions) -> JobOptions:
    """A job's options as a user asks for them (the CLI's or the API's typed values, see
    :meth:`workers.declare.Options.from_user`), publishing under the service's namespace when none is given."""
    settings = settings or get_settings()
    return options_type.from_user(**{**values, "namespace": values.get("namespace") or settings.default_namespace
                                     or ""})


def create_job(*, source_repo: str, options: JobOptions, revision: str | None = None,
               trigger: Trigger = Trigger.CLI, local: bool = False, settings: Settings | None = None) -> Submitted:
    """Resolve a Hub repo (and its ``--vae``/``--refiner`` repos) to their commits, record the job
    (deduplicated by them), commit, then enqueue it.

    With ``local`` nothing is enqueued: the caller runs the stages in-process.  Raises SourceError (and
    subclasses) for sources that cannot be converted, before any job is recorded.
    """
    settings = settings or get_settings()
    source, options = _resolved(source_repo, options, revision, settings)
    with session_scope(settings.database_url) as session:
        submitted = submit_job(session, source_repo=source_repo, source_sha=source.sha, options=options,
                               revision=revision, trigger=trigger, source=source.to_dict())
        job_id = submitted.job.id
        submitted.publications = earlier_publications(session, source_repo=source_repo, source_sha=source.sha,
                                                      options=options,
                                                      exclude=job_id if submitted.created else None)
        revived = None
        if not submitted.created and not local:  # the same job again: if it is stuck, this revives it
            revived = stuck_reason(submitted.job, now=utcnow(), timeout=settings.heartbeat_timeout)
            if revived:
                revive_job(session, submitted.job, f"submitted again after {revived}", timeout=settings.heartbeat_timeout)
                submitted.notes.append(f"it was stuck ({revived}) and is sent again")
        if local and submitted.created:
            record_sent(session, job_id, LOCAL)
    if (submitted.created or revived) and not local:
        send(job_id, options, settings=settings)
    return submitted


def _resolved(source_repo: str, options: JobOptions, revision: str | None, settings: Settings):
    """The source a job of ``source_repo`` would convert (resolved at its commits, checked) and the options pinned
    to the commits of the other sources it takes weights from.  Raises OptionsError and SourceError."""
    from workers.names import looks_like_repo_id
    from workers.source.resolve import resolve_source

    if not looks_like_repo_id(source_repo) or "/" not in source_repo:
        raise OptionsError(f"{source_repo!r} is not a Hub repo id",
                           hint="Jobs take org/name; convert a local folder with `coreml-publish convert`.")
    source = resolve_source(source_repo, revision=revision, endpoint=settings.hub_endpoint,
                            max_bytes=int(settings.max_source_gb * 1e9),
                            need_safety_checker=options.components is None or "safety_checker" in options.components,
                            vae=options.vae, refiner=options.refiner, vae_revision=options.vae_sha,
                            refiner_revision=options.refiner_sha, base=options.base,
                            base_revision=options.base_sha, checkpoint=options.checkpoint, config=options.config,
                            config_revision=options.config_sha, loras=options.loras,
                            lora_revisions=options.lora_shas)
    check_request(source, options, settings=settings)
    options = options.pinned({kind: extra.sha for kind, extra in source.extras})
    return source, options


def check_job(session, *, source_repo: str, options: JobOptions, revision: str | None = None,
              settings: Settings | None = None) -> tuple[str, int | None, list]:
    """What submitting would do, recording nothing: the commit a job would convert, the id of the job that
    already exists for it with these options (None: a new one would be made), and the earlier publications of
    the source with these options (:func:`service.jobs.earlier_publications`)."""
    settings = settings or get_settings()
    source, options = _resolved(source_repo, options, revision, settings)
    key = dedupe_key(source_repo, source.sha, options, toolchain_fingerprint())
    existing = session.scalar(select(Job.id).where(Job.dedupe_key == key))
    return source.sha, existing, earlier_publications(session, source_repo=source_repo, source_sha=source.sha,
                                                      options=options)


def check_request(source, options: JobOptions, *, settings: Settings) -> None:
    """What the source's configs refuse of the options, said before a job is recorded (the conversion checks
    again): image sizes it cannot take, a ControlledUnet for SDXL.  Raises OptionsError, SourceError."""
    from workers.convert.geometry import check_resolutions, native_image
    from workers.source.checkpoint import configs_of
    from workers.source.controlnet import BASE_FILES, read_configs
    from workers.source.pipelines import XL_PIPELINES

    if options.controlled_unet and source.pipeline_class in XL_PIPELINES:
        raise OptionsError("--controlled-unet is for SD 1.x / 2.x pipelines: Apple's Swift pipeline runs no SDXL "
                           "ControlNet", hint="Drop --controlled-unet for this SDXL source.")
    if options.resolutions:
        # a ControlNet takes its base's sizes; a single-file checkpoint its configs' (--config's, or the shipped)
        sizes_from = dict(source.extras).get("base") or dict(source.extras).get("config") or configs_of(source)
        unet, vae = read_configs(sizes_from, BASE_FILES, token=None, endpoint=settings.hub_endpoint)
        native, step = native_image(unet, vae, source=sizes_from.id)
        check_resolutions(options.resolutions, native=native, step=step)


def retry(job_id: int, *, settings: Settings | None = None) -> None:
    """Queue a failed, cancelled or stuck job again; finished stages are skipped by the workers."""
    settings = settings or get_settings()
    with session_scope(settings.database_url) as session:
        job = get_job(session, job_id)
        reason = stuck_reason(job, now=utcnow(), timeout=settings.heartbeat_timeout,
                              waiting=waiting_jobs(settings.broker_url))
        if reason:
            revive_job(session, job, f"retried after {reason}", timeout=settings.heartbeat_timeout)
        else:
            retry_job(session, job_id)
        options = JobOptions.from_dict(job.options)
    send(job_id, options, settings=settings)


def send(job_id: int, options: JobOptions, *, settings: Settings) -> str:
    """Send a recorded job's stages to the queue and tie the job to the chain's task id.

    Raises ServiceUnavailableError when the broker does not answer; the job stays recorded and queued, and
    the reaper (or the next submit of the same job) sends it once the broker is back.
    """
    try:
        task_id = enqueue(job_id, options.parts(), packages_only=options.packages_only, settings=settings)
    except Exception as e:  # kombu/redis connection errors: their classes vary with the transport
        if not _broker_error(e):
            raise
        _mark_unsent(job_id, settings)
        raise ServiceUnavailableError(
            f"job {job_id} is recorded, but the queue at {_where(settings.broker_url)} does not answer "
            f"({e.__class__.__name__})",
            hint="It is sent once the queue is back (by the scheduler's reaper, or by submitting again).") from e
    with session_scope(settings.database_url) as session:
        record_sent(session, job_id, task_id)
    return task_id


def _mark_unsent(job_id: int, settings: Settings) -> None:
    """Record the failed send, so that the next submit of the job (or the reaper's next pass) sends it at once."""
    try:
        with session_scope(settings.database_url) as session:
            record_unsent(session, job_id)
    except Exception as e:  # the database went too: the reaper finds the job after the heartbeat timeout
        log.warning("could not record that job %s was not sent: %s", job_id, e.__class__.__name__)


def _broker_error(error: BaseException) -> bool:
    from kombu.exceptions import OperationalError

    try:
        from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeout
    except ImportError:  # another transport
        RedisConnectionError = RedisTimeout = OSError  # noqa: N806
    # a chord needs the result store (the same Redis): Celery gives up on it with a bare RuntimeError
    store_lost = isinstance(error, RuntimeError) and "reconnect to the Celery result store" in " ".join(str(error).split())
    return store_lost or isinstance(error, (OperationalError, RedisConnectionError, RedisTimeout, OSError))


def _where(url: str) -> str:
    """A broker URL without its credentials."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def enqueue(job_id: int, parts: list[str], *, packages_only: bool, settings: Settings | None = None) -> str:
    """Send a job's stages: fetch, the convert parts in parallel, then merge, compile/package, publish.

    Call after the job's row is committed.  Returns the Celery id of the chain.
    """
    from celery import chain, chord

    from service.celery_app import stage_signature  # loaded only by what sends work

    def stage(name: str, *args):
        return stage_signature(name, *args, settings=settings)

    finish = stage("package", job_id) if packages_only else stage("compile", job_id)
    flow = chain(stage("fetch", job_id), chord([stage("convert", job_id, p) for p in parts], stage("merge", job_id)),
                 finish, stage("publish", job_id))
    return flow.apply_async().id
