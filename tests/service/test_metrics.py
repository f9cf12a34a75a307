"""``/metrics``: parsed with prometheus-client's own parser, counting real jobs, stages and queues."""

from __future__ import annotations

from pathlib import Path

import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api import create_api
from service.db import session_scope, upgrade
from tests.helpers import start_stage
from workers.options import JobOptions
from service.jobs import finish_stage, set_state, stage_result, submit_job
from service.models import JobState
from service.settings import Settings

BROKER = "redis://127.0.0.1:6379/11"


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_jobs_stages_failures_retries_and_queues(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    with session_scope(url) as session:
        jobs = [submit_job(session, source_repo=f"studio/model-{i}", source_sha=f"{i:040d}",
                           options=JobOptions(namespace="studio")).job for i in range(3)]
        for job, seconds in zip(jobs[:2], (3.0, 400.0)):
            result = stage_result(session, job, "convert", "shared")
            start_stage(session, result)
            finish_stage(session, result, state="succeeded")
            result.duration = seconds
        set_state(session, jobs[0], JobState.SUCCEEDED)
        publish = stage_result(session, jobs[0], "publish")
        finish_stage(session, publish, state="succeeded",
                     figures={"studio/coreml-model-0": {"commit": "c" * 40, "changed": True, "hub_retries": 2}})
        failed = stage_result(session, jobs[1], "convert", "unet-original")
        finish_stage(session, failed, state="failed", error="validation failed: unet (original, float16) ...",
                     figures={"unet/original/float16": {"status": "failed"}, "unet/original/palettized-6bit":
                              {"status": "failed"}, "text_encoder/original/float16": {"status": "passed"}})
        set_state(session, jobs[1], JobState.FAILED, error="convert: validation failed")
    broker = redis.Redis.from_url(BROKER)
    broker.delete("convert")
    broker.rpush("convert", "task-a", "task-b")
    try:
        client = TestClient(create_api(Settings(database_url=url, broker_url=BROKER)))
        response = client.get("/metrics")
    finally:
        broker.delete("convert")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("coreml_publish_jobs", (("state", "queued"),))] == 1
    assert samples[("coreml_publish_jobs", (("state", "succeeded"),))] == 1
    assert samples[("coreml_publish_jobs", (("state", "failed"),))] == 1
    assert samples[("coreml_publish_jobs", (("state", "running"),))] == 0
    convert = (("stage", "convert"),)
    assert samples[("coreml_publish_stage_duration_seconds_count", convert)] == 2
    assert samples[("coreml_publish_stage_duration_seconds_sum", convert)] == 403.0
    assert samples[("coreml_publish_stage_duration_seconds_bucket", (("le", "5"), *convert))] == 1
    assert samples[("coreml_publish_validation_failures_total", ())] == 2
    assert samples[("coreml_publish_hub_retries_total", ())] == 2
    assert samples[("coreml_publish_broker_up", ())] == 1
    assert samples[("coreml_publish_queue_depth", (("queue", "convert"),))] == 2
    down = TestClient(create_api(Settings(database_url=url, broker_url="redis://127.0.0.1:1/0"))).get("/metrics")
    assert _samples(down.text)[("coreml_publish_broker_up", ())] == 0

