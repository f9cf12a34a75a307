"""Celery tasks: one per stage, thin wrappers of ``service.runner.run_stage`` that take ids only.

Only transient Hub errors are retried (with backoff and jitter); conversion and validation failures are
final and already recorded on the job when the task fails.  A stage another live worker is running is
waited for (see ``run_stage``), so two chains of one job (the reaper's and a redelivered one) both go on.
"""

from __future__ import annotations

from celery import Task

from service.celery_app import app, macos_worker_alive
from workers.errors import HubUnavailableError

RETRY = dict(autoretry_for=(HubUnavailableError,), retry_backoff=True, retry_backoff_max=600, retry_jitter=True,
             max_retries=8, bind=True)


def _run(task: Task, job_id: int, stage: str, part: str = "") -> str:
    from service.runner import run_stage

    return run_stage(job_id, stage, part, runner=task.request.id,
                     macos_worker_alive=macos_worker_alive if stage == "merge" else None)


@app.task(name="coreml_publisher.fetch", **RETRY)
def fetch(self: Task, job_id: int) -> str:
    return _run(self, job_id, "fetch")


@app.task(name="coreml_publisher.convert", **RETRY)
def convert(self: Task, job_id: int, part: str) -> str:
    return _run(self, job_id, "convert", part)


@app.task(name="coreml_publisher.merge", **RETRY)
def merge(self: Task, job_id: int) -> str:
    return _run(self, job_id, "merge")


@app.task(name="coreml_publisher.compile", **RETRY)
def compile(self: Task, job_id: int) -> str:  # noqa: A001 - the stage's name
    return _run(self, job_id, "compile")


@app.task(name="coreml_publisher.package", **RETRY)
def package(self: Task, job_id: int) -> str:
    return _run(self, job_id, "package")


@app.task(name="coreml_publisher.publish", **RETRY)
def publish(self: Task, job_id: int) -> str:
    return _run(self, job_id, "publish")


@app.task(name="coreml_publisher.sweep")
def sweep() -> list[dict]:
    """The nightly sweep (Celery beat); only repos due for a check are asked about."""
    from dataclasses import asdict

    from service.watch import sweep as run_sweep

    return [asdict(r) for r in run_sweep(due_only=True)]


@app.task(name="coreml_publisher.reap")
def reap() -> list[dict]:
    """The reaper's pass (Celery beat, every minute): stuck jobs are sent again or failed."""
    from dataclasses import asdict

    from service.reaper import reap as run_reap

    return [asdict(r) for r in run_reap()]
