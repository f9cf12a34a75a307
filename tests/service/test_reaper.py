"""No job without a live task: jobs never sent and stages whose worker went silent are sent again (or failed
after ``max_revivals``); heartbeats keep long stages alive; a stage another live runner holds is left to it.
On SQLite and PostgreSQL, with the broker replaced by a recorder (the real queue is in test_queue.py)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from kombu.exceptions import OperationalError

from service import runner
from service.db import session_scope
from service.errors import JobError, ServiceUnavailableError
from tests.helpers import start_stage
from workers.options import JobOptions
from service.jobs import get_job, set_state, stage_result, submit_job
from service.models import JobState, utcnow
from service.reaper import reap
from service.settings import Settings
from service.submit import retry, send

SHA = "b" * 40


@pytest.fixture
def world(database_url: str, monkeypatch: pytest.MonkeyPatch):
    sent: list[int] = []
    broker = {"up": True}

    def enqueue(job_id: int, parts: list[str], *, packages_only: bool, settings=None) -> str:
        if not broker["up"]:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        sent.append(job_id)
        return f"task-{job_id}-{len(sent)}"

    monkeypatch.setattr("service.submit.enqueue", enqueue)
    settings = Settings(database_url=database_url, broker_url="redis://user:pw@127.0.0.1:6379/0",
                        heartbeat_interval=0.05, heartbeat_timeout=60, max_revivals=2)
    return {"settings": settings, "sent": sent, "broker": broker, "url": database_url}


def _job(url: str, *, bits: int = 6) -> int:
    with session_scope(url) as session:
        return submit_job(session, source_repo="org/model", source_sha=SHA,
                          options=JobOptions(namespace="org", bits=bits)).job.id


def _age(url: str, job_id: int, seconds: float) -> None:
    """Make a job look recorded (and its running stages last heard of) ``seconds`` ago."""
    with session_scope(url) as session:
        job = get_job(session, job_id)
        job.created_at = utcnow() - timedelta(seconds=seconds)
        job.enqueued_at = None if job.task_id is None else job.created_at
        for result in job.stages:
            result.heartbeat_at = result.started_at = job.created_at


def test_a_job_whose_send_failed_is_sent_by_the_next_reaper_pass_once_the_broker_is_back(world) -> None:
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    world["broker"]["up"] = False
    with pytest.raises(ServiceUnavailableError, match=f"job {job_id} is recorded") as caught:
        send(job_id, JobOptions(namespace="org"), settings=settings)
    assert "pw" not in caught.value.one_line() and "redis://127.0.0.1:6379" in caught.value.one_line()
    assert [(r.job_id, r.action) for r in reap(settings=settings)] == [(job_id, "not sent")]  # still down
    world["broker"]["up"] = True
    done = reap(settings=settings)  # at once: no heartbeat timeout to wait for
    assert [(r.job_id, r.action) for r in done] == [(job_id, "sent again")]
    assert "last send to the queue failed" in done[0].reason
    with session_scope(url) as session:
        job = get_job(session, job_id)
        assert job.task_id == f"task-{job_id}-1" and job.state == "queued"
        assert any("sent again" in e.message for e in job.events)
    assert reap(settings=settings) == []  # it has a task now


def test_a_submit_again_after_a_failed_send_sends_at_once(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal says the job is sent "by submitting again": the second submit, as soon as the broker is
    back, sends it (it used to answer "already exists (queued)" until the heartbeat timeout)."""
    from types import SimpleNamespace

    from service.submit import create_job

    settings = world["settings"]
    source = SimpleNamespace(sha=SHA, extras=(), to_dict=lambda: {"repo_id": "org/model"})
    monkeypatch.setattr("workers.source.resolve.resolve_source", lambda *a, **k: source)
    world["broker"]["up"] = False
    with pytest.raises(ServiceUnavailableError):
        create_job(source_repo="org/model", options=JobOptions(namespace="org"), settings=settings)
    world["broker"]["up"] = True
    again = create_job(source_repo="org/model", options=JobOptions(namespace="org"), settings=settings)
    assert not again.created and world["sent"] == [again.job.id]
    assert any("last send to the queue failed" in note for note in again.notes)


def test_a_job_recorded_but_never_sent_is_sent_by_the_reaper_after_the_timeout(world) -> None:
    """The submitting process died between recording the job and sending it."""
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    assert reap(settings=settings) == []  # not stuck yet: recorded less than heartbeat_timeout ago
    _age(url, job_id, 120)
    done = reap(settings=settings)
    assert [(r.job_id, r.action) for r in done] == [(job_id, "sent again")]
    assert "never reached the queue" in done[0].reason


@pytest.mark.parametrize("between", ["fetch", "merge", None])
def test_a_job_whose_next_message_was_lost_is_sent_again(world, monkeypatch, between) -> None:
    """A worker killed between two stages (after ``between`` succeeded), or before acknowledging a message it
    took (nothing ran yet): no stage runs, no message waits in the queues."""
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    waiting: set[int] = set()
    monkeypatch.setattr("service.reaper.waiting_jobs", lambda url: waiting)
    with session_scope(url) as session:
        job = get_job(session, job_id)
        job.task_id = "first"
        if between:
            set_state(session, job, JobState.RUNNING)
            for stage in ("fetch", "merge")[:("fetch", "merge").index(between) + 1]:
                result = stage_result(session, job, stage)
                result.state, result.started_at, result.finished_at = "succeeded", utcnow(), utcnow()
    assert reap(settings=settings) == []  # idle for less than the heartbeat timeout: maybe just taken
    _age(url, job_id, 120)
    with session_scope(url) as session:
        for result in get_job(session, job_id).stages:
            result.finished_at = utcnow() - timedelta(seconds=100)
    waiting.add(job_id)
    assert reap(settings=settings) == []  # its next message waits in a queue (behind other work)
    waiting.clear()
    done = reap(settings=settings)
    assert [(r.job_id, r.action) for r in done] == [(job_id, "sent again")]
    assert "was lost" in done[0].reason and (between is None or f"after {between}" in done[0].reason)
    with session_scope(url) as session:
        assert get_job(session, job_id).task_id == f"task-{job_id}-1"
    assert reap(settings=settings) == []  # sent just now


def test_without_a_readable_broker_an_idle_job_is_left_alone(world, monkeypatch) -> None:
    """Another broker than Redis (or one that does not answer): queued work cannot be seen, so an idle job
    is not taken for lost."""
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    monkeypatch.setattr("service.reaper.waiting_jobs", lambda url: None)
    with session_scope(url) as session:
        get_job(session, job_id).task_id = "first"
    _age(url, job_id, 600)
    assert reap(settings=settings) == []


def test_a_stage_whose_worker_went_silent_is_sent_again_and_a_live_one_is_not(world) -> None:
    url, settings = world["url"], world["settings"]
    silent, alive = _job(url, bits=6), _job(url, bits=4)
    for job_id in (silent, alive):
        with session_scope(url) as session:
            job = get_job(session, job_id)
            job.task_id = "first"
            set_state(session, job, JobState.RUNNING)
            start_stage(session, stage_result(session, job, "convert", "shared"), runner="first")
    _age(url, silent, 300)
    done = reap(settings=settings)
    assert [(r.job_id, r.action) for r in done] == [(silent, "sent again")]
    assert "went silent during convert shared" in done[0].reason
    with session_scope(url) as session:
        stage = get_job(session, silent).stages[0]
        assert stage.state == "pending" and stage.error.startswith("interrupted:")
        assert get_job(session, alive).stages[0].state == "running"
    assert world["sent"] == [silent]


def test_a_job_stuck_again_and_again_fails_with_its_reason(world) -> None:
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    for _ in range(settings.max_revivals):
        _age(url, job_id, 600)
        with session_scope(url) as session:
            get_job(session, job_id).task_id = None
        assert reap(settings=settings)[0].action == "sent again"
    _age(url, job_id, 600)
    with session_scope(url) as session:
        get_job(session, job_id).task_id = None
    assert reap(settings=settings)[0].action == "failed"
    with session_scope(url) as session:
        job = get_job(session, job_id)
        assert job.state == "failed" and job.error.startswith("stuck: it never reached the queue")


def test_while_the_broker_is_down_the_reaper_keeps_the_job_for_its_next_pass(world) -> None:
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    _age(url, job_id, 600)
    world["broker"]["up"] = False
    assert [r.action for r in reap(settings=settings)] == ["not sent"]
    with session_scope(url) as session:
        assert get_job(session, job_id).state == "queued"
    world["broker"]["up"] = True
    _age(url, job_id, 600)
    assert [r.action for r in reap(settings=settings)] == ["sent again"]


def test_retry_revives_a_stuck_job_and_refuses_a_live_one(world) -> None:
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    with session_scope(url) as session:
        job = get_job(session, job_id)
        job.task_id = "first"
        set_state(session, job, JobState.RUNNING)
        start_stage(session, stage_result(session, job, "fetch"), runner="first")
    with pytest.raises(JobError, match="alive"):
        retry(job_id, settings=settings)
    _age(url, job_id, 600)
    retry(job_id, settings=settings)
    assert world["sent"] == [job_id]
    with session_scope(url) as session:
        assert get_job(session, job_id).stages[0].state == "pending"


def test_heartbeats_keep_a_long_stage_alive_and_a_second_delivery_waits_for_it(world, monkeypatch) -> None:
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    calls: list[str] = []
    second: dict[str, str] = {}

    def slow_fetch(spec, part, settings_):
        calls.append("run")
        if len(calls) == 1:  # meanwhile a second delivery of the same stage (another chain) arrives
            thread = threading.Thread(target=lambda: second.update(
                state=runner.run_stage(job_id, "fetch", settings=settings, runner="second")))
            thread.start()
            second["thread"] = thread
            time.sleep(0.6)
            with session_scope(url) as session:
                result = get_job(session, job_id).stages[0]
                second["beats"] = (result.heartbeat_at - result.started_at).total_seconds()
        return {}, None

    monkeypatch.setitem(runner.STAGES, "fetch", slow_fetch)
    assert runner.run_stage(job_id, "fetch", settings=settings, runner="first") == "succeeded"
    second["thread"].join(timeout=30)
    assert second["state"] == "succeeded" and calls == ["run"]  # it waited for the first, and did not run it
    assert second["beats"] > 0.2  # stamped while the stage ran


def test_a_stage_held_by_a_silent_runner_is_taken_over(world, monkeypatch) -> None:
    url, settings = world["url"], world["settings"]
    job_id = _job(url)
    with session_scope(url) as session:
        job = get_job(session, job_id)
        set_state(session, job, JobState.RUNNING)
        start_stage(session, stage_result(session, job, "fetch"), runner="dead")
    _age(url, job_id, 600)
    monkeypatch.setitem(runner.STAGES, "fetch", lambda spec, part, settings_: ({}, None))
    assert runner.run_stage(job_id, "fetch", settings=settings, runner="new") == "succeeded"
    with session_scope(url) as session:
        stage = get_job(session, job_id).stages[0]
        assert stage.runner == "new" and stage.attempts == 2


def test_work_sent_before_the_broker_restarted_is_sent_again_and_live_stages_are_left_alone(world, monkeypatch) -> None:
    url, settings = world["url"], world["settings"]
    before, after = _job(url, bits=6), _job(url, bits=4)
    with session_scope(url) as session:
        for job_id in (before, after):
            job = get_job(session, job_id)
            job.task_id = "first"
            set_state(session, job, JobState.RUNNING)
            start_stage(session, stage_result(session, job, "convert", "shared"), runner="alive")
        get_job(session, before).enqueued_at = utcnow() - timedelta(seconds=30)
        get_job(session, after).enqueued_at = utcnow()
    monkeypatch.setattr("service.reaper.broker_started_at", lambda url: utcnow() - timedelta(seconds=10))
    done = reap(settings=settings)
    assert [(r.job_id, r.action) for r in done] == [(before, "sent again")]
    assert "broker restarted" in done[0].reason
    with session_scope(url) as session:
        job = get_job(session, before)
        assert job.stages[0].state == "running" and job.stages[0].runner == "alive"  # its runner goes on
        assert job.state == "running" and job.task_id == f"task-{before}-1"
    assert reap(settings=settings) == []  # sent after the restart now


def test_a_full_disk_fails_the_stage_with_one_line_and_retry_resumes(world, monkeypatch, tmp_path) -> None:
    """The artifact store on a 1 MB tmpfs (a real ENOSPC), then room again: the job fails saying so, and
    `retry` (here run in-process) finishes it."""
    import shutil
    import subprocess

    url, settings = world["url"], world["settings"]
    disk = tmp_path / "store"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine cannot mount a small tmpfs (needs root)")
    try:
        job_id = _job(url)

        def save(spec, part, settings_):
            with open(disk / "artifact.bin", "wb") as f:
                f.write(b"\0" * 2_000_000)
            return {}, str(disk / "artifact.bin")

        monkeypatch.setitem(runner.STAGES, "fetch", save)
        with pytest.raises(OSError):
            runner.run_stage(job_id, "fetch", settings=settings)
        with session_scope(url) as session:
            job = get_job(session, job_id)
            assert job.state == "failed" and "\n" not in job.error
            assert job.error.startswith("fetch: no space left on the device") and f"retry {job_id}" in job.error
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        retry(job_id, settings=settings)
        assert runner.run_stage(job_id, "fetch", settings=settings) == "succeeded"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
        shutil.rmtree(disk, ignore_errors=True)
