"""PostgreSQL restarted (crash-style, every connection cut) while a worker converts: the job still finishes,
with the reaper's help if a write fell in the gap, and publishes once.  A private PostgreSQL cluster (not the
shared one), a real worker, Redis and the dev Hub."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from service.reaper import reap
from service.settings import Settings
from tests.helpers import free_port, service_env, start_worker, stop_processes, tiny_source, wait_for
from tests.service.cli.test_cli import run
from tests.service.test_queue import _job, _job_id

pytestmark = pytest.mark.slow
REDIS = "redis://127.0.0.1:6379/13"  # its own db: it flushes it, and test files run side by side


def _pg_ctl(data: Path, port: int, *args: str) -> None:
    binary = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]
    options = f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1"
    subprocess.run(["runuser", "-u", "postgres", "--", binary, "-D", str(data), "-o", options, "-l",
                    str(data.parent / "postgres.log"), "-w", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def private_postgres(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway cluster on a free port; skipped where it cannot be made (no PostgreSQL binaries, not root)."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL's binaries and root (to run them as the postgres user)")
    root = Path("/tmp") / f"coreml-publish-pg-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(["runuser", "-u", "postgres", "--", initdb[-1], "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    _pg_ctl(data, port, "start")
    try:
        yield data, port
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", initdb[-1].replace("initdb", "pg_ctl"), "-D", str(data),
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_a_database_restarted_mid_job_does_not_lose_the_job(private_postgres, tmp_path: Path) -> None:
    import redis

    from service.db import upgrade
    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store

    data, port = private_postgres
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    upgrade(url)
    redis.Redis.from_url(REDIS).flushdb()
    Store(tmp_path / "hub").add_token("alice", token="alice-token", orgs=["studio"])
    worker = None
    with running_devhub(tmp_path / "hub") as hub:
        try:
            api = tiny_source(hub, "studio/tiny-pg", tmp_path / "tiny", seed=6)
            env = service_env(hub, url, REDIS, tmp_path)
            log = tmp_path / "worker.log"
            worker = start_worker(env, log)
            job_id = _job_id(run("submit", "studio/tiny-pg", "--packages-only", "--bits", "0", "--attention",
                                 "original", env=env).stdout)
            service = {"db": url}
            wait_for(lambda: "running" in [s for (stage, _), s in _job(service, job_id)[1].items()
                                           if stage == "convert"], 180, "a running convert part", (log,))
            _pg_ctl(data, port, "-m", "immediate", "restart")  # every connection cut, as in a crash
            settings = Settings(database_url=url, broker_url=REDIS, heartbeat_timeout=10)

            def finished() -> bool:
                reap(settings=settings)  # what the scheduler does every minute
                return _job(service, job_id)[0] in ("succeeded", "failed")

            wait_for(finished, 300, "the job to finish", (log,))
            state, stages, published, error = _job(service, job_id)
            assert state == "succeeded", error
            assert published == ["studio/coreml-tiny-pg"]
            assert len([c for c in api.list_repo_commits(published[0]) if c.title != "initial commit"]) == 1
        finally:
            stop_processes([worker] if worker is not None else [])
            from service.db import engine_for

            engine_for(url).dispose()
