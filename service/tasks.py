"""Celery tasks: one per stage, thin wrappers of ``service.runner.run_stage`` that take ids only.

Only transient Hub errors are retried (with backoff and jitter); conversion and validation failures are
final and already recorded on the job when the task fails.
"""

from __future__ import annotations

from workers.errors import HubUnavailableError
from service.celery_app import app, macos_worker_alive

RETRY = dict(autoretry_for=(HubUnavailableError,), retry_backoff=True, retry_backoff_max=600, retry_jitter=True,
             max_retries=8)


def _run(job_id: int, stage: str, part: str = "") -> str:
    from service.runner import run_stage

    return run_stage(job_id, stage, part, macos_worker_alive=macos_worker_alive if stage == "merge" else None)


@app.task(name="coreml_publisher.fetch", **RETRY)
def fetch(job_id: int) -> str:
    return _run(job_id, "fetch")


@app.task(name="coreml_publisher.convert", **RETRY)
def convert(job_id: int, part: str) -> str:
    return _run(job_id, "convert", part)


@app.task(name="coreml_publisher.merge", **RETRY)
def merge(job_id: int) -> str:
    return _run(job_id, "merge")


@app.task(name="coreml_publisher.compile", **RETRY)
def compile(job_id: int) -> str:  # noqa: A001 - the stage's name
    return _run(job_id, "compile")


@app.task(name="coreml_publisher.package", **RETRY)
def package(job_id: int) -> str:
    return _run(job_id, "package")


@app.task(name="coreml_publisher.publish", **RETRY)
def publish(job_id: int) -> str:
    return _run(job_id, "publish")


@app.task(name="coreml_publisher.sweep")
def sweep() -> list[dict]:
    """The nightly sweep (Celery beat); only repos due for a check are asked about."""
    from dataclasses import asdict

    from service.watch import sweep as run_sweep

    return [asdict(r) for r in run_sweep(due_only=True)]
