"""Sending jobs to the queue when the queue (broker and result store) does not answer."""

from __future__ import annotations

import pytest

from service.db import session_scope
from service.errors import ServiceUnavailableError
from workers.options import JobOptions
from service.jobs import cancel_job, get_job, submit_job
from service.settings import Settings
from service.submit import retry

SHA = "b" * 40


@pytest.mark.slow  # Celery gives up on the result store after about 20 s
def test_a_retry_while_the_queue_is_down_is_refused_as_unavailable_and_keeps_the_job(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    from service.db import upgrade

    upgrade(url)
    with session_scope(url) as session:
        job_id = submit_job(session, source_repo="org/model", source_sha=SHA,
                            options=JobOptions(namespace="org")).job.id
        cancel_job(session, job_id)
    settings = Settings(database_url=url, broker_url="redis://127.0.0.1:1/0")
    with pytest.raises(ServiceUnavailableError, match=f"job {job_id} is recorded, but the queue at "
                                                      "redis://127.0.0.1:1 does not answer"):
        retry(job_id, settings=settings)
    with session_scope(url) as session:
        assert get_job(session, job_id).state == "queued"  # recorded: the reaper sends it once the queue is back


def test_a_controlled_unet_for_an_sdxl_source_is_refused_before_a_job_is_recorded() -> None:
    from types import SimpleNamespace

    from service.submit import check_request
    from workers.errors import OptionsError

    source = SimpleNamespace(id="org/sdxl", pipeline_class="StableDiffusionXLPipeline", extras=())
    with pytest.raises(OptionsError, match="--controlled-unet is for SD 1.x / 2.x pipelines"):
        check_request(source, JobOptions(namespace="org", controlled_unet=True), settings=Settings())
    check_request(source, JobOptions(namespace="org"), settings=Settings())  # no sizes, no ControlNet: nothing read
