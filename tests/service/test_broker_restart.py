"""A broker restarted mid-job, without persistence: its queued messages and chord state are gone, the reaper
sends the job again, and it finishes with one commit per repo.  A private redis-server (not the shared one),
a real worker, PostgreSQL and the dev Hub."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from service.reaper import reap
from service.settings import Settings
from tests.conftest import _postgres_database
from tests.helpers import free_port, service_env, start_worker, stop_processes, tiny_source, wait_for
from tests.service.cli.test_cli import run
from tests.service.test_queue import _job, _job_id

pytestmark = pytest.mark.slow


def _redis(port: int, root: Path) -> subprocess.Popen:
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(root)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: run_ping(port), 30, "redis-server")
    return process


def run_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


def test_a_broker_restarted_mid_job_loses_its_queue_and_the_reaper_resumes_the_job(tmp_path: Path) -> None:
    from service.db import upgrade
    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store

    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    url, drop = _postgres_database(f"coreml_publish_restart_{os.getpid()}")
    upgrade(url)
    Store(tmp_path / "hub").add_token("alice", token="alice-token", orgs=["studio"])
    processes: list[subprocess.Popen] = [_redis(port, tmp_path)]
    try:
        with running_devhub(tmp_path / "hub") as hub:
            api = tiny_source(hub, "studio/tiny-restart", tmp_path / "tiny", seed=5)
            env = service_env(hub, url, broker, tmp_path)
            log = tmp_path / "worker.log"
            processes.append(start_worker(env, log))
            result = run("submit", "studio/tiny-restart", "--packages-only", "--bits", "0", "--attention", "original",
                         env=env)
            job_id = _job_id(result.stdout)
            service = {"db": url}
            # one convert part runs while the other waits in the queue (one worker, one task at a time)
            wait_for(lambda: "running" in [s for (stage, _), s in _job(service, job_id)[1].items()
                                           if stage == "convert"], 180, "a running convert part", (log,))
            os.killpg(processes[0].pid, signal.SIGKILL)
            processes[0].wait(timeout=30)
            processes[0] = _redis(port, tmp_path)  # empty: the queued part and the chord's state are gone
            wait_for(lambda: "running" not in _job(service, job_id)[1].values(), 180, "the running part to end",
                     (log,))
            settings = Settings(database_url=url, broker_url=broker)
            done = wait_for(lambda: [r for r in reap(settings=settings) if r.job_id == job_id], 30, "the reaper")
            assert done[0].action == "sent again" and "broker restarted" in done[0].reason
            wait_for(lambda: _job(service, job_id)[0] in ("succeeded", "failed"), 240, "the job to finish", (log,))
            state, stages, published, error = _job(service, job_id)
            assert state == "succeeded", error
            assert published == ["studio/coreml-tiny-restart"]
            commits = [c for c in api.list_repo_commits(published[0]) if c.title != "initial commit"]
            assert len(commits) == 1
    finally:
        stop_processes(list(reversed(processes)))
        drop()
