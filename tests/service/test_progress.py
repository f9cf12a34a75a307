"""Live progress of running stages: the column and its migration, the estimate, the throttled recorder, and a real
tiny job on PostgreSQL whose progress reaches 1.0 while `submit --local` and `logs --follow` show it."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from service.api import schemas
from service.db import engine_for, session_scope
from workers.options import JobOptions
from service.jobs import finish_stage, get_job, job_summary, list_jobs, stage_result, submit_job
from service.models import StageResult
from service.progress import ProgressRecorder, estimate_remaining, past_durations
from tests.conftest import _postgres_database
from tests.helpers import wait_for
from tests.service.test_local_and_api import hub_with_source  # noqa: F401  (fixture: a tiny source on a dev Hub)

SHA = "c" * 40
MODEL = "SD 16x16, ~4 MB"


def _progress(done: int, total: int = 4, model: str = MODEL) -> dict:
    return {"component": "unet", "layout": "original", "precision": "float16", "step": "convert", "done": done,
            "total": total, "fraction": done / total, "model": model,
            "counter": {"label": "Running MIL default pipeline", "done": 3, "total": 90}}


def _running_stage(url: str, *, part: str = "unet-original", sha: str = SHA) -> int:
    with session_scope(url) as session:
        job = submit_job(session, source_repo="org/model", source_sha=sha, options=JobOptions(namespace="org")).job
        result = stage_result(session, job, "convert", part)
        result.state, result.started_at = "running", job.created_at
        return job.id


def test_migrations_add_the_progress_column(database_url: str) -> None:
    columns = {c["name"] for c in inspect(engine_for(database_url)).get_columns("stage_results")}
    assert "progress" in columns


def test_estimate_remaining_prefers_past_runs_then_extrapolates() -> None:
    assert estimate_remaining(elapsed=10, fraction=0.25, history=[100, 40, 60]) == 50  # the median, less elapsed
    assert estimate_remaining(elapsed=70, fraction=0.5, history=[60]) == 70  # past the history: extrapolated
    assert estimate_remaining(elapsed=30, fraction=0.25, history=[]) == 90
    assert estimate_remaining(elapsed=30, fraction=0.0, history=[]) is None  # nothing to go on
    assert estimate_remaining(elapsed=0, fraction=0.5, history=[]) is None
    assert estimate_remaining(elapsed=5, fraction=1.0, history=[]) == 0


def test_recorder_writes_throttled_estimates_from_past_runs_of_the_same_size(database_url: str) -> None:
    job_id = _running_stage(database_url)
    with session_scope(database_url) as session:  # two past runs: one of this size class, one of another
        for sha, model, duration in (("d" * 40, MODEL, 300.0), ("e" * 40, "SD 64x64, ~4096 MB", 5000.0)):
            past = submit_job(session, source_repo="org/old", source_sha=sha, options=JobOptions(namespace="org")).job
            old = stage_result(session, past, "convert", "unet-original")
            old.state, old.duration, old.progress = "succeeded", duration, _progress(4, model=model)
        assert past_durations(session, stage="convert", part="unet-original", model=MODEL) == [300.0]
        assert past_durations(session, stage="convert", part="shared", model=MODEL) == []
    record = ProgressRecorder(database_url, job_id=job_id, stage="convert", part="unet-original", interval=60)
    assert record(_progress(1)) is True
    assert record(_progress(2)) is False  # within the interval: not written
    with session_scope(database_url) as session:
        result = stage_result(session, get_job(session, job_id), "convert", "unet-original")
        assert result.progress["done"] == 1 and result.progress["counter"]["total"] == 90
        assert 250 < result.progress["eta_seconds"] <= 300  # the past run of this size took 300 s
        assert result.progress["updated_at"]
        finish_stage(session, result, state="succeeded")
    with session_scope(database_url) as session:
        summary = job_summary(get_job(session, job_id))
        (stage,) = summary["stages"]
        assert stage["progress"]["fraction"] == 1.0 and stage["progress"]["done"] == 4
        assert stage["progress"]["eta_seconds"] == 0 and stage["progress"]["counter"] is None
        assert schemas.Job.model_validate(summary).stages[0].progress.fraction == 1.0
    assert record(_progress(3), force=True) is True  # a finished stage's progress is never overwritten
    with session_scope(database_url) as session:
        assert session.scalar(select(StageResult.progress).where(StageResult.job_id == job_id))["done"] == 4


def test_recorder_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = ProgressRecorder(f"sqlite:///{tmp_path / 'missing' / 'jobs.db'}", job_id=1, stage="convert", part="")
    assert record(_progress(1)) is False
    assert "progress not recorded" in caplog.text


@pytest.fixture
def postgres_url():
    from service.db import upgrade

    url, drop = _postgres_database(f"coreml_publish_progress_{os.getpid()}")
    upgrade(url)
    yield url
    drop()


def test_a_local_job_records_progress_that_reaches_one_and_is_shown_while_followed(
        hub_with_source: str, postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    """`submit --local` of a tiny job on PostgreSQL: its convert stages record progress while they run (with an
    estimate once a step is done) and end at 1.0; `logs --follow` and the submitting command print it."""
    env = {**os.environ, "HF_ENDPOINT": hub_with_source, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
           "COREML_PUBLISH_DATABASE_URL": postgres_url, "COREML_PUBLISH_BROKER_URL": "redis://127.0.0.1:1/0",
           "COREML_PUBLISH_ARTIFACT_STORE": str(tmp_path / "artifacts"), "COREML_PUBLISH_SCRATCH": str(tmp_path),
           "COLUMNS": "200"}
    submit = subprocess.Popen(["coreml-publish", "submit", "studio/tiny-sd", "--local", "--packages-only",
                               "--namespace", "studio", "--bits", "0", "--attention", "split_einsum_v2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    follow: subprocess.Popen | None = None
    try:
        def job_id() -> int | None:
            with session_scope(postgres_url) as session:
                jobs = list_jobs(session)
                return jobs[0].id if jobs else None

        job = wait_for(job_id, 120, "the job")
        follow = subprocess.Popen(["coreml-publish", "logs", str(job), "--follow"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        seen: list[dict] = []
        while submit.poll() is None:  # what a reader of the job sees while it runs
            with session_scope(postgres_url) as session:
                seen += [r.progress for r in session.scalars(select(StageResult).where(
                    StageResult.job_id == job, StageResult.state == "running")) if r.progress]
            time.sleep(0.3)
        submitted = submit.communicate(timeout=60)
        followed = follow.communicate(timeout=120)
    finally:
        for process in (submit, follow):
            if process is not None and process.poll() is None:
                process.kill()
    assert submit.returncode == 0, submitted[0][-3000:] + submitted[1][-3000:]
    assert follow is not None and follow.returncode == 0, followed[1][-3000:]
    assert any(0 < p["fraction"] < 1 and p["eta_seconds"] is not None for p in seen)
    assert any(p.get("counter") for p in seen)  # coremltools' pass counter reached the database
    with session_scope(postgres_url) as session:
        converts = [s for s in get_job(session, job).stages if s.stage == "convert"]
        assert {s.part for s in converts} == {"shared", "unet-split_einsum_v2"}
        for stage in converts:
            assert stage.progress["fraction"] == 1.0 and stage.progress["done"] == stage.progress["total"] > 0
    # text encoder, VAE decoder and encoder, safety checker: load, reference, convert, validate each
    line = re.compile(r"progress convert shared: \d+/16 steps \(\d+%\) · \w+ \w+.* · \d+:\d\d elapsed, "
                      r"(about \d+:\d\d left|no estimate yet)")
    for output in (submitted[1], followed[1]):
        assert line.search(output), output[-3000:]
        assert "progress convert shared: 16/16 steps (100%)" in output
        # the UNet: load, reference, load again in float16 (memory-lean), convert, validate
        assert "progress convert unet-split_einsum_v2: 5/5 steps (100%)" in output
    assert "convert shared done" in followed[0] and "publish done" in followed[0]

