"""Job lifecycle on SQLite and PostgreSQL: dedupe under concurrency, states, events, cancel, retry."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import pytest
from sqlalchemy import inspect, select

from service.db import engine_for, session_scope
from service.errors import JobError, JobNotFoundError, OptionsError
from service.jobs import (
    JobOptions,
    Publication,
    cancel_job,
    get_job,
    list_jobs,
    publication_notes,
    record_event,
    retry_job,
    set_state,
    stage_result,
    submit_job,
)
from service.models import JobEvent, JobState, Trigger

SHA = "a" * 40


def test_migrations_create_the_schema(database_url: str) -> None:
    tables = set(inspect(engine_for(database_url)).get_table_names())
    assert {"jobs", "stage_results", "published_repos", "job_events", "alembic_version"} <= tables


def test_options_are_normalised_so_equal_requests_dedupe() -> None:
    a = JobOptions(namespace="org", attentions=("split_einsum_v2", "original", "original"))
    b = JobOptions(namespace="org", attentions=("original", "split_einsum_v2"))
    assert a.key() == b.key() and a.attentions == ("original", "split_einsum_v2")
    assert a.parts() == ["shared", "unet-original", "unet-split_einsum_v2"]
    assert JobOptions.from_dict({"namespace": "org", "attentions": ["original"], "bits": None}).parts() == [
        "shared", "unet-original"]
    with pytest.raises(OptionsError, match="no namespace"):
        JobOptions(namespace="")
    with pytest.raises(OptionsError, match="unknown attention layouts: flash"):
        JobOptions(namespace="org", attentions=("flash",))
    with pytest.raises(OptionsError, match="--bits 3"):
        JobOptions(namespace="org", bits=3)


def test_deployment_target_and_chunk_options_are_checked_and_keyed_only_when_set() -> None:
    from service.submit import requested_options

    plain = JobOptions(namespace="org")
    chunked = requested_options({"namespace": "org", "attentions": ("original",), "bits": 6, "chunks_only": True})
    assert chunked.chunk_unet and chunked.chunks_only  # --chunks-only implies --chunk-unet
    assert '"chunk_unet":true' in chunked.key() and "chunk" not in plain.key() and "deployment" not in plain.key()
    assert JobOptions.from_dict(json.loads(chunked.key())) == chunked
    assert '"deployment_target":"macOS14"' in JobOptions(namespace="org", deployment_target="macOS14").key()
    with pytest.raises(OptionsError, match="unknown deployment target 'iOS99'"):
        JobOptions(namespace="org", deployment_target="iOS99")
    with pytest.raises(OptionsError, match="6-bit palettized weights need iOS17 / macOS14 or newer, not iOS16"):
        JobOptions(namespace="org", deployment_target="iOS16")
    assert JobOptions(namespace="org", deployment_target="iOS16", bits=None).deployment_target == "iOS16"
    with pytest.raises(OptionsError, match="--chunks-only needs --chunk-unet"):
        JobOptions(namespace="org", chunks_only=True)


def test_same_source_sha_and_options_is_one_job(database_url: str) -> None:
    options = JobOptions(namespace="org")
    with session_scope(database_url) as session:
        first = submit_job(session, source_repo="org/model", source_sha=SHA, options=options)
    with session_scope(database_url) as session:
        again = submit_job(session, source_repo="org/model", source_sha=SHA, options=options, trigger=Trigger.API)
        other = submit_job(session, source_repo="org/model", source_sha="b" * 40, options=options)
        bits = submit_job(session, source_repo="org/model", source_sha=SHA, options=JobOptions(namespace="org", bits=4))
    assert first.created and not again.created and again.job.id == first.job.id
    assert other.created and bits.created and len({first.job.id, other.job.id, bits.job.id}) == 3


def test_concurrent_submits_yield_one_job(database_url: str) -> None:
    options = JobOptions(namespace="org", bits=8)
    barrier = threading.Barrier(6)
    ids: list[int] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait()
            with session_scope(database_url) as session:
                ids.append(submit_job(session, source_repo="org/race", source_sha=SHA, options=options).job.id)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 1
    with session_scope(database_url) as session:
        assert len(list_jobs(session)) == 1


def test_states_events_cancel_and_retry(database_url: str) -> None:
    with session_scope(database_url) as session:
        job = submit_job(session, source_repo="org/model", source_sha=SHA, options=JobOptions(namespace="org")).job
        set_state(session, job, JobState.RUNNING)
        result = stage_result(session, job, "convert", "shared")
        assert stage_result(session, job, "convert", "shared").id == result.id
        result.state = "succeeded"
        stage_result(session, job, "convert", "unet-original").state = "failed"
        record_event(session, job.id, "hello", stage="convert")
        job_id = job.id
    with session_scope(database_url) as session:
        assert get_job(session, job_id).started_at is not None
        cancel_job(session, job_id)
    with session_scope(database_url) as session:
        job = get_job(session, job_id)
        assert job.state == "cancelled" and job.finished_at is not None and job.error == "cancelled by user"
        with pytest.raises(JobError, match="already cancelled"):
            cancel_job(session, job_id)
        retry_job(session, job_id)
    with session_scope(database_url) as session:
        job = get_job(session, job_id)
        assert job.state == "queued" and job.error is None
        assert {(s.part, s.state) for s in job.stages} == {("shared", "succeeded"), ("unet-original", "pending")}
        with pytest.raises(JobError, match="only failed, cancelled or stuck jobs"):
            retry_job(session, job_id)
        messages = [e.message for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
        assert messages[0].startswith("submitted org/model@aaaaaaaaaa via cli")
        assert "hello" in messages and "cancelled" in messages and "queued again (retry)" in messages
        assert [j.id for j in list_jobs(session, state="queued")] == [job_id]
        assert list_jobs(session, state="failed") == []
        with pytest.raises(OptionsError, match="unknown state"):
            list_jobs(session, state="bogus")
        with pytest.raises(JobNotFoundError, match="no job 999"):
            get_job(session, 999)


def test_a_submitter_is_told_the_same_commit_first_else_the_newest_older_one() -> None:
    when = datetime(2026, 12, 1, tzinfo=timezone.utc)
    same = Publication(7, "a" * 40, ("org/coreml-m", "org/coreml-m-palettized"), when, True)
    older = Publication(5, "b" * 40, ("org/coreml-m",), when, False)
    assert publication_notes([older, same], hub="https://hub", source_sha="a" * 40) == [
        "already published from commit aaaaaaaaaa with these options by job 7: https://hub/org/coreml-m, "
        "https://hub/org/coreml-m-palettized"]
    assert publication_notes([older], hub="https://hub", source_sha="c" * 40) == [
        "an older commit bbbbbbbbbb was published with these options by job 5 on 2026-12-01: https://hub/org/coreml-m; "
        "this job converts cccccccccc"]
    assert publication_notes([], hub="https://hub", source_sha="c" * 40) == []
