"""Running one stage of a job: the same function for Celery tasks and for ``submit --local``.

Each stage reads the job from the database, skips itself when already done (so a redelivered or retried
task resumes instead of redoing work), calls the library functions of the conversion engine and the
publisher, and records its result, figures and events.  Stages pass artifact URLs, never big objects.

Stages, with the queue that serves them::

    fetch (convert) → convert[part] (convert) → merge (default) → compile (macos) | package (default) → publish
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from service.db import session_scope
from service.errors import CoreMLPublishError, HubUnavailableError, JobCancelled, ValidationError
from service.jobs import (
    beat,
    claim_stage,
    finish_stage,
    get_job,
    is_cancelled,
    record_event,
    record_published,
    set_state,
    stage_result,
)
from service.models import JobState
from service.settings import Settings, get_settings
from service.artifacts import ArtifactStore
from workers.options import JobOptions

if TYPE_CHECKING:
    from workers.source.source import Source

log = logging.getLogger(__name__)
WAITING_FOR_MACOS = "waiting for a macOS worker"


@dataclass(frozen=True)
class JobSpec:
    """The facts of a job a stage needs, read once so no session is held during long work."""

    id: int
    source_repo: str
    source_sha: str
    options: JobOptions
    source: dict | None = None  # the Source pinned at submit (Source.to_dict); None for older jobs


def stage_sequence(options: JobOptions) -> list[tuple[str, str]]:
    """Every (stage, part) of a job, in order (convert parts can run in parallel)."""
    stages = [("fetch", "")] + [("convert", p) for p in options.parts()] + [("merge", "")]
    stages.append(("package", "") if options.packages_only else ("compile", ""))
    return stages + [("publish", "")]


def run_stage(job_id: int, stage: str, part: str = "", *, settings: Settings | None = None,
              macos_worker_alive: Callable[[], bool] | None = None, runner: str | None = None) -> str:
    """Run one stage of a job and record it; returns the stage's final state.

    ``runner`` names this delivery of the stage (a Celery task id; the same when a task is redelivered).
    While another live runner holds the stage (heartbeats fresh), this one waits for its outcome, and takes
    the stage over if that runner goes silent.
    Raises the stage's error after recording it (so a task queue stops the job's chain);
    HubUnavailableError is left for the caller to retry and does not fail the job.
    """
    settings = settings or get_settings()
    runner = runner or f"local-{os.getpid()}"
    while True:
        with session_scope(settings.database_url) as session:
            job = get_job(session, job_id)
            if job.state in (JobState.CANCELLED.value, JobState.FAILED.value, JobState.SUCCEEDED.value):
                return job.state
            result = stage_result(session, job, stage, part)
            if result.state == "succeeded":
                return "succeeded"
            if claim_stage(session, result, runner=runner, timeout=settings.heartbeat_timeout):
                if job.state != JobState.RUNNING.value:
                    set_state(session, job, JobState.RUNNING)
                record_event(session, job.id, f"{stage}{' ' + part if part else ''} started on "
                             f"{result.worker_host}", stage=stage)
                spec = JobSpec(job.id, job.source_repo, job.source_sha or "", JobOptions.from_dict(job.options),
                               job.source)
                result_id = result.id
                break
        time.sleep(min(settings.heartbeat_interval, 5.0))  # another runner has it: wait for its outcome
    try:
        with heartbeats(result_id, settings):
            figures, uri = STAGES[stage](spec, part, settings)
    except JobCancelled:
        with session_scope(settings.database_url) as session:
            finish_stage(session, stage_result(session, get_job(session, job_id), stage, part), state="cancelled")
        return "cancelled"
    except HubUnavailableError as e:
        with session_scope(settings.database_url) as session:
            finish_stage(session, stage_result(session, get_job(session, job_id), stage, part), state="retrying",
                         error=e.one_line())
            record_event(session, job_id, f"{stage}: {e.one_line()} (will retry)", stage=stage, level="warning")
        raise
    except Exception as e:
        reason = failure_reason(e, job_id)
        figures = _report_figures(e.report) if isinstance(e, ValidationError) and e.report is not None else None
        with session_scope(settings.database_url) as session:
            job = get_job(session, job_id)
            finish_stage(session, stage_result(session, job, stage, part), state="failed", error=reason,
                         figures=figures)
            if not is_cancelled(session, job_id):
                set_state(session, job, JobState.FAILED, error=f"{stage}{' ' + part if part else ''}: {reason}")
            record_event(session, job_id, f"{stage} failed: {reason}", stage=stage, level="error")
        raise
    with session_scope(settings.database_url) as session:
        job = get_job(session, job_id)
        finish_stage(session, stage_result(session, job, stage, part), state="succeeded", figures=figures,
                     artifact_uri=uri)
        record_event(session, job_id, f"{stage}{' ' + part if part else ''} done", stage=stage)
        if stage == "merge" and not spec.options.packages_only and macos_worker_alive is not None \
                and not macos_worker_alive():
            set_state(session, job, JobState.WAITING)
            record_event(session, job_id, WAITING_FOR_MACOS, stage="compile", level="warning")
        if stage == "publish":
            set_state(session, job, JobState.SUCCEEDED)
    return "succeeded"


def run_local(job_id: int, *, settings: Settings | None = None) -> None:
    """Run every stage of a job in this process, in order (no broker needed)."""
    settings = settings or get_settings()
    with session_scope(settings.database_url) as session:
        options = JobOptions.from_dict(get_job(session, job_id).options)
    for stage, part in stage_sequence(options):
        if run_stage(job_id, stage, part, settings=settings) in ("cancelled", JobState.CANCELLED.value):
            return


def failure_reason(error: BaseException, job_id: int) -> str:
    """One line for a failed stage: the library's own, a full disk said as such, else the exception."""
    if isinstance(error, CoreMLPublishError):
        return error.one_line()
    cause: BaseException | None = error
    while cause is not None:  # a full disk often reaches us wrapped by the library that was writing
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            where = f" holding {cause.filename}" if cause.filename else ""
            return (f"no space left on the device{where}. Free space (or point COREML_PUBLISH_ARTIFACT_STORE and "
                    f"COREML_PUBLISH_SCRATCH elsewhere), then `coreml-publish retry {job_id}`.")
        cause = cause.__cause__ or cause.__context__
    return f"{error.__class__.__name__}: {error}"


@contextmanager
def heartbeats(result_id: int, settings: Settings) -> Iterator[None]:
    """While the block runs, stamp the stage's heartbeat every ``heartbeat_interval`` seconds (a thread), so the
    reaper can tell a long stage from a dead worker."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.heartbeat_interval):
            try:
                with session_scope(settings.database_url) as session:
                    beat(session, result_id)
            except Exception as e:  # the database away for a moment: the next beat tries again
                log.warning("heartbeat of stage result %s failed: %s", result_id, e.__class__.__name__)

    thread = threading.Thread(target=loop, name=f"heartbeat-{result_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# --- the stages ---------------------------------------------------------------------------------------

def _events(spec: JobSpec, settings: Settings, *, stage: str, part: str):
    """Engine events → job log, and their progress → the stage's result (throttled); stops the work when the job
    was cancelled.  A database away for a moment costs a log line, not the conversion."""
    from sqlalchemy.exc import OperationalError

    from service.progress import ProgressRecorder

    record_progress = ProgressRecorder(settings.database_url, job_id=spec.id, stage=stage, part=part)

    def on_event(event) -> None:
        if event.progress is not None:
            record_progress(event.progress.to_dict())
        if event.status == "progress":  # coremltools' counters: progress only, not a log line
            return
        try:
            with session_scope(settings.database_url) as session:
                if is_cancelled(session, spec.id):
                    raise JobCancelled(f"job {spec.id} was cancelled")
                if event.status in ("done", "failed"):
                    label = ", ".join(x for x in (event.variant, event.precision) if x)
                    seconds = f" {event.seconds:.1f} s" if event.seconds is not None else ""
                    record_event(session, spec.id, f"{event.stage} {event.component}"
                                 f"{f' ({label})' if label else ''} {event.status}{seconds}", stage=event.stage)
        except OperationalError as e:
            log.warning("job %s: progress not recorded, the database did not answer (%s)", spec.id,
                        e.__class__.__name__)
    return on_event


def _pinned(spec: JobSpec, settings: Settings) -> Source:
    """The job's source as it was resolved at submit (a job recorded before sources were stored is resolved
    again, at its recorded commit)."""
    from workers.source.resolve import resolve_source
    from workers.source.source import Source

    if spec.source is not None:
        return Source.from_dict(spec.source)
    return resolve_source(spec.source_repo, revision=spec.source_sha, endpoint=settings.hub_endpoint,
                          max_bytes=int(settings.max_source_gb * 1e9), vae=spec.options.vae,
                          refiner=spec.options.refiner, vae_revision=spec.options.vae_sha,
                          refiner_revision=spec.options.refiner_sha, base=spec.options.base,
                          base_revision=spec.options.base_sha, checkpoint=spec.options.checkpoint,
                          config=spec.options.config, config_revision=spec.options.config_sha,
                          loras=spec.options.loras, lora_revisions=spec.options.lora_shas)


MANIFEST = "manifest.json"  # what the fetch stage fetched (workers.source.fetch.Manifest), in its artifact


@contextmanager
def _source(spec: JobSpec, settings: Settings) -> Iterator[Source]:
    """The job's source fetched exactly as the fetch stage fetched it (its manifest: files, sizes, hashes), for
    the length of a ``with`` block (a composed folder is removed after it).  The fetch stage checked the
    values; a file this host downloads again is held to the hash the fetch stage recorded."""
    import json

    from workers.source.fetch import Manifest, fetched

    store = ArtifactStore(settings.artifact_store, scratch=settings.scratch_path())
    recorded = store.pull(spec.id, "fetch") / MANIFEST
    manifest = Manifest.from_dict(json.loads(recorded.read_text())) if recorded.is_file() else None
    with fetched(_pinned(spec, settings), endpoint=settings.hub_endpoint, manifest=manifest,
                 check_values=manifest is None) as source:
        yield source


def _fetch(spec: JobSpec, part: str, settings: Settings) -> tuple[dict, str | None]:
    import json

    from workers.source.fetch import fetched, manifest_of
    from workers.validate.report import write_json

    store = ArtifactStore(settings.artifact_store, scratch=settings.scratch_path())
    # the files checked and recorded; a checkpoint is unpacked (and LoRAs fused) where it is converted
    with fetched(_pinned(spec, settings), endpoint=settings.hub_endpoint, prepare=False) as source:
        manifest = manifest_of(source)
    folder = store.path(spec.id, "fetch")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / MANIFEST, json.loads(json.dumps(manifest.to_dict())))
    return {"files": manifest.files, "bytes": manifest.bytes, "sha": source.sha}, store.push(spec.id, "fetch")


def _convert(spec: JobSpec, part: str, settings: Settings) -> tuple[dict, str | None]:
    from workers.components import CHUNKED, depends_on_attention
    from workers.convert.engine import convert_pipeline
    from workers.convert.run import select_components
    from workers.names import Attention

    options = spec.options
    with _source(spec, settings) as source:
        wanted = select_components(source, options.conversion())
        if part == "shared":
            components = tuple(c for c in wanted if not depends_on_attention(c))
            attentions = options.attentions
        else:
            components = tuple(c for c in wanted if depends_on_attention(c))  # the UNet, a refiner's
            attentions = (Attention(part.removeprefix("unet-")),)
        store = ArtifactStore(settings.artifact_store, scratch=settings.scratch_path())
        out = store.path(spec.id, "parts", part)
        shutil.rmtree(out, ignore_errors=True)
        chunk = options.chunk_unet and any(c in CHUNKED for c in components)
        report = convert_pipeline(source, out, options.conversion(
            attentions=attentions, components=components, bars=settings.validation_bars(),
            analyses=str(settings.analyses_path()), mixed_min_weights=settings.mixed_min_weights, chunk_unet=chunk,
            chunks_only=chunk and options.chunks_only), on_event=_events(spec, settings, stage="convert", part=part),
            processes=settings.convert_processes)
    return _report_figures(report), store.push(spec.id, "parts", part)


def _report_figures(report) -> dict:
    figures = {}
    for p in report.packages:
        if p.shared_from:
            continue
        checks = {c.name: c for c in p.checks}
        figure = {"size_bytes": p.size_bytes, "status": p.status}
        for name in ("psnr_program", "psnr_torch"):
            check = checks.get(name)
            figure[name] = check.value if check else None
            figure[f"{name}_threshold"] = check.threshold if check else None
        figures[f"{p.component}/{p.variant}/{p.precision}"] = figure
    if report.recipes:  # what the status page plots of each mixed-bit analysis
        figures["recipes"] = {component: {key: recipe.get(key) for key in
                                          ("target", "bits", "measured_psnr", "predicted_psnr", "weights", "passes")}
                              for component, recipe in report.recipes.items()}
    return figures


def _merge(spec: JobSpec, part: str, settings: Settings) -> tuple[dict, str | None]:
    from workers.convert.merge import merge_outputs
    from workers.package.repos import source_tokenizer
    from workers.source.fetch import checkpoint_tokenizers, fetch_files

    store = ArtifactStore(settings.artifact_store, scratch=settings.scratch_path())
    parts = [store.pull(spec.id, "parts", p) for p in spec.options.parts()]
    out = store.path(spec.id, "out")
    shutil.rmtree(out, ignore_errors=True)
    report = merge_outputs(parts, out)
    # the tokenizer and card travel with the output, so a macOS worker elsewhere can bundle them
    source = _pinned(spec, settings)
    folder = fetch_files(source, ("tokenizer", "tokenizer_2"), names=("README.md",), endpoint=settings.hub_endpoint)
    (out / "_source").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizers = folder if source.checkpoint is None else \
            checkpoint_tokenizers(source, Path(scratch) / "configs", endpoint=settings.hub_endpoint)
        if spec.options.base is None:  # a ControlNet's repos carry no tokenizer: they go beside a base's
            tokenizer = source_tokenizer(tokenizers)
            shutil.copytree(tokenizer, out / "_source" / tokenizer.name, dirs_exist_ok=True)
    if (folder / "README.md").is_file():
        shutil.copy(folder / "README.md", out / "_source" / "README.md")
    return {"packages": len(report.packages)}, store.push(spec.id, "out")


def _package(spec: JobSpec, part: str, settings: Settings, *, compiled: bool = False) -> tuple[dict, str | None]:
    from workers.package.compile import require_compiler
    from workers.package.repos import package_output

    store = ArtifactStore(settings.artifact_store, scratch=settings.scratch_path())
    out = store.pull(spec.id, "out")
    trees = package_output(out, namespace=spec.options.namespace, compiled=compiled,
                           compiler=require_compiler() if compiled else None, source_dir=out / "_source")
    return {"repos": [t.name for t in trees], "compiled": compiled}, store.push(spec.id, "out")


def _compile(spec: JobSpec, part: str, settings: Settings) -> tuple[dict, str | None]:
    return _package(spec, part, settings, compiled=True)


def _publish(spec: JobSpec, part: str, settings: Settings) -> tuple[dict, str | None]:
    from workers.hub.publish import publish_tree, source_private
    from workers.package.repos import load_trees

    store = ArtifactStore(settings.artifact_store, scratch=settings.scratch_path())
    trees = load_trees(store.pull(spec.id, "out"))  # refuses an incomplete tree before anything is published
    figures = {}
    private = spec.options.private
    if private is None:  # follow the source: a private model's conversion must not become public
        pinned = (spec.source or {}).get("private")  # what the Hub said when the job was resolved
        private = bool(pinned) if pinned is not None else source_private(spec.source_repo,
                                                                          endpoint=settings.hub_endpoint)
        with session_scope(settings.database_url) as session:
            record_event(session, spec.id, f"publishing {'private' if private else 'public'} repos, as "
                         f"{spec.source_repo} is {'private (or not visible)' if private else 'public'}",
                         stage="publish")
    for tree in trees:
        retried: list[BaseException] = []  # transient Hub errors retried (a metric: coreml_publish_hub_retries)
        result = publish_tree(tree, namespace=spec.options.namespace, source_sha=spec.source_sha,
                              private=private, endpoint=settings.hub_endpoint, on_retry=retried.append)
        with session_scope(settings.database_url) as session:
            record_published(session, get_job(session, spec.id), repo_id=result.repo_id, commit=result.commit,
                             changed=result.changed, tag=result.tag)
            record_event(session, spec.id, f"published {result.repo_id} at {result.commit[:10]}"
                         + ("" if result.changed else " (no changes)"), stage="publish")
        figures[result.repo_id] = {"commit": result.commit, "changed": result.changed, "hub_retries": len(retried)}
    return figures, None


STAGES: dict[str, Callable[[JobSpec, str, Settings], tuple[dict, str | None]]] = {
    "fetch": _fetch, "convert": _convert, "merge": _merge, "compile": _compile, "package": _package,
    "publish": _publish,
}
