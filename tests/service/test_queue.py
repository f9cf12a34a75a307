"""The job service end to end: real Redis, real `celery worker` subprocesses, the dev Hub, PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from huggingface_hub import HfApi

from service.db import session_scope, upgrade
from service.jobs import get_job
from tests.conftest import DOUBLES, _postgres_database
from tests.service.cli.test_cli import run
from tests.helpers import stop_processes
from tests.helpers import wait_for as _wait

REDIS = "redis://127.0.0.1:6379/9"




@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    """Dev Hub with a tiny source repo, a fresh PostgreSQL database, an empty Redis db, and one Linux worker."""
    import redis

    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store
    from workers.devtools.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("service")
    Store(root / "hub").add_token("alice", token="alice-token", orgs=["studio"])
    redis.Redis.from_url(REDIS).flushdb()
    url, drop = _postgres_database(f"coreml_publish_queue_{os.getpid()}")
    upgrade(url)
    workers: list[subprocess.Popen] = []
    with running_devhub(root / "hub") as hub:
        api = HfApi(endpoint=hub, token="alice-token")
        for name, edit in (("studio/tiny-sd", None), ("studio/broken-sd", {"in_channels": 9})):
            folder = build_tiny_pipeline(root / name.split("/")[1], style="sd2", seed=11)
            if edit:
                config = json.loads((folder / "unet" / "config.json").read_text())
                (folder / "unet" / "config.json").write_text(json.dumps(config | edit))
            api.create_repo(name)
            api.upload_folder(repo_id=name, folder_path=str(folder))
        env = {"HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
               "COREML_PUBLISH_DATABASE_URL": url, "COREML_PUBLISH_BROKER_URL": REDIS,
               "COREML_PUBLISH_ARTIFACT_STORE": str(root / "artifacts"), "COREML_PUBLISH_DEFAULT_NAMESPACE": "studio",
               "COREML_PUBLISH_SCRATCH": str(root / "scratch"), "COREML_PUBLISH_HEARTBEAT_INTERVAL": "1"}

        def start_worker(*extra: str, path: str | None = None) -> subprocess.Popen:
            log = open(root / f"worker-{len(workers)}.log", "w")
            process = subprocess.Popen(
                ["coreml-publish", "worker", *extra], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **env, "PATH": path or os.environ["PATH"]})
            workers.append(process)
            _wait(lambda: "ready." in (root / f"worker-{len(workers) - 1}.log").read_text(), 60, "the worker")
            return process

        start_worker()
        try:
            yield {"env": env, "db": url, "hub": hub, "start_worker": start_worker, "root": root, "workers": workers}
        finally:
            stop_processes(workers)
            drop()


def _job(service, job_id: int):
    with session_scope(service["db"]) as session:
        job = get_job(session, job_id)
        return job.state, {(s.stage, s.part): s.state for s in job.stages}, [p.repo_id for p in job.published], job.error


def _job_id(output: str) -> int:
    return int(output.split("Job ", 1)[1].split(":")[0].split()[0])


def _hub_requests(service) -> dict[tuple[str, str], int]:
    import httpx

    return {(r["method"], r["path"]): r["count"] for r in httpx.get(f"{service['hub']}/_devhub/requests").json()}


def test_submit_wait_publishes_two_repos_with_one_worker(service) -> None:
    import httpx

    httpx.delete(f"{service['hub']}/_devhub/requests")
    result = run("submit", "studio/tiny-sd", "--packages-only", "--bits", "6", "--wait", env=service["env"])
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = _job_id(result.stdout)
    # the source is resolved once, at submit: one model_info for the whole job (publishing reads the visibility
    # it recorded), and each of its files downloaded once on this host (one cache serves every stage)
    requests = _hub_requests(service)
    info = {path: n for (method, path), n in requests.items() if path.startswith("/api/models/studio/tiny-sd")
            and not path.startswith("/api/models/studio/tiny-sd-")}
    assert sum(info.values()) == 1, info
    downloads = {path: n for (method, path), n in requests.items()
                 if method == "GET" and path.startswith("/studio/tiny-sd/resolve/")}
    assert downloads and all(n == 1 for n in downloads.values()), downloads
    assert any(path.endswith("/unet/diffusion_pytorch_model.safetensors") for path in downloads)
    state, stages, published, _ = _job(service, job_id)
    assert state == "succeeded"
    assert published == ["studio/coreml-tiny-sd", "studio/coreml-tiny-sd-palettized"]
    assert stages == {("fetch", ""): "succeeded", ("convert", "shared"): "succeeded",
                      ("convert", "unet-original"): "succeeded", ("convert", "unet-split_einsum_v2"): "succeeded",
                      ("merge", ""): "succeeded", ("package", ""): "succeeded", ("publish", ""): "succeeded"}
    status = run("status", str(job_id), env=service["env"])
    assert "succeeded" in status.stdout and "≥25" in status.stdout and "≥45" in status.stdout
    assert "program" in status.stdout and "≥35" in status.stdout  # the executed program, against its bar
    listing = run("jobs", env={**service["env"], "COLUMNS": "200"})
    assert f"│ {job_id} " in listing.stdout and "studio/coreml-tiny-sd" in listing.stdout
    again = run("submit", "studio/tiny-sd", "--packages-only", "--bits", "6", env=service["env"])
    assert f"Job {job_id} already exists" in again.stdout
    files = HfApi(endpoint=service["hub"]).list_repo_files("studio/coreml-tiny-sd-palettized")
    assert "split_einsum_v2/packages/Stable_Diffusion_version_studio_tiny-sd_unet.mlpackage/Manifest.json" in files


def test_concurrent_duplicate_submits_make_one_job(service) -> None:
    env = {**os.environ, **service["env"], "COLUMNS": "200"}
    processes = [subprocess.Popen(["coreml-publish", "submit", "studio/tiny-sd", "--packages-only", "--bits", "1",
                                   "--attention", "original"], stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(20)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert len({_job_id(o) for o in outputs}) == 1
    job_id = _job_id(outputs[0])
    run("cancel", str(job_id), env=service["env"])  # not needed by later tests


def test_a_failing_stage_fails_the_job_with_its_reason(service) -> None:
    result = run("submit", "studio/broken-sd", "--packages-only", "--wait", env=service["env"])
    assert result.returncode == 1
    state, stages, published, error = _job(service, _job_id(result.stdout))
    assert state == "failed" and published == []
    assert "convert" in error and "9 input channels" in error
    assert "failed" in stages.values() and ("merge", "") not in stages


def test_cancel_mid_job(service) -> None:
    result = run("submit", "studio/tiny-sd", "--packages-only", "--bits", "2", env=service["env"])
    job_id = _job_id(result.stdout)
    _wait(lambda: any(s == "running" for (stage, _), s in _job(service, job_id)[1].items() if stage == "convert"),
          120, "a running convert stage")
    assert run("cancel", str(job_id), env=service["env"]).returncode == 0
    # the running stage stops at its next step (or had just finished); nothing runs after it
    _wait(lambda: "running" not in _job(service, job_id)[1].values(), 120, "the stage to stop")
    time.sleep(2)
    state, stages, published, _ = _job(service, job_id)
    assert state == "cancelled" and published == [] and ("publish", "") not in stages
    assert run("cancel", str(job_id), env=service["env"]).returncode == 1  # already cancelled: one-line error


def test_compiled_output_waits_for_a_macos_worker(service) -> None:
    result = run("submit", "studio/tiny-sd", "--bits", "8", "--attention", "split_einsum_v2", env=service["env"])
    job_id = _job_id(result.stdout)
    _wait(lambda: _job(service, job_id)[0] == "waiting", 240, "the job to wait for a macOS worker")
    logs = run("logs", str(job_id), env=service["env"])
    assert "waiting for a macOS worker" in logs.stdout
    # a worker that finds `xcrun coremlcompiler` (here its test double) subscribes to the macos queue
    service["start_worker"]("--queues", "macos", path=f"{DOUBLES}{os.pathsep}{os.environ['PATH']}")
    _wait(lambda: _job(service, job_id)[0] in ("succeeded", "failed"), 120, "the job to finish")
    state, stages, published, error = _job(service, job_id)
    assert state == "succeeded", error
    assert stages[("compile", "")] == "succeeded"
    files = HfApi(endpoint=service["hub"]).list_repo_files("studio/coreml-tiny-sd-palettized")
    assert "coreml-tiny-sd-palettized_split_einsum_v2_compiled.zip" in files
    assert "split_einsum_v2/compiled/Unet.mlmodelc/coremldata.bin" in files


def _kill_the_linux_worker_then_reap(service, job_id: int, during: str) -> None:
    """SIGKILL the Linux worker's whole process group (no redelivery for hours: the broker's visibility
    timeout), start a new one, and let the reaper find the silent stage and send the job again."""
    from service.reaper import reap
    from service.settings import Settings

    linux = [p for p in service["workers"] if p.poll() is None and "--queues" not in p.args][0]  # every Linux queue
    os.killpg(linux.pid, signal.SIGKILL)
    linux.wait(timeout=30)
    service["start_worker"]()
    settings = Settings(database_url=service["db"], broker_url=REDIS, heartbeat_timeout=5)
    time.sleep(6)
    revived = _wait(lambda: [r for r in reap(settings=settings) if r.job_id == job_id], 30, "the reaper")
    assert revived[0].action == "sent again" and f"went silent during {during}" in revived[0].reason
    _wait(lambda: _job(service, job_id)[0] in ("succeeded", "failed"), 300, "the job to finish")


def _source(service, name: str) -> HfApi:
    api = HfApi(endpoint=service["hub"], token="alice-token")
    api.create_repo(name)
    api.upload_folder(repo_id=name, folder_path=str(service["root"] / "tiny-sd"))
    return api


def _one_commit_each(api: HfApi, repos: list[str]) -> None:
    for repo in repos:
        commits = [c for c in api.list_repo_commits(repo) if c.title != "initial commit"]
        assert len(commits) == 1, f"{repo}: {[c.title for c in commits]}"


def test_a_worker_killed_as_a_whole_mid_convert_is_replaced_and_publishes_once(service) -> None:
    api = _source(service, "studio/tiny-kill")
    result = run("submit", "studio/tiny-kill", "--packages-only", "--bits", "4", "--attention", "original",
                 env=service["env"])
    job_id = _job_id(result.stdout)
    _wait(lambda: any(s == "running" for (stage, _), s in _job(service, job_id)[1].items() if stage == "convert"),
          180, "a running convert stage")
    _kill_the_linux_worker_then_reap(service, job_id, "convert")
    state, stages, published, error = _job(service, job_id)
    assert state == "succeeded", error
    assert published == ["studio/coreml-tiny-kill", "studio/coreml-tiny-kill-palettized"]
    _one_commit_each(api, published)


def test_a_worker_killed_while_its_commit_is_in_flight_leaves_one_commit_per_repo(service) -> None:
    """Killed after the LFS uploads, while the Hub stalls on the commit: the new worker's publish makes the
    only commit of each repo."""
    from urllib.request import Request, urlopen

    api = _source(service, "studio/tiny-kill2")
    body = json.dumps({"route": "commit", "status": 503, "count": 1, "delay": 120}).encode()
    urlopen(Request(f"{service['hub']}/_devhub/faults", body, {"Content-Type": "application/json"}))
    result = run("submit", "studio/tiny-kill2", "--packages-only", "--bits", "0", "--attention", "original",
                 env=service["env"])
    job_id = _job_id(result.stdout)

    def stalled_in_commit() -> bool:
        pending = json.loads(urlopen(f"{service['hub']}/_devhub/faults").read())
        return "commit" not in pending and _job(service, job_id)[1].get(("publish", "")) == "running"

    _wait(stalled_in_commit, 300, "the publish stage's commit to reach the Hub")
    _kill_the_linux_worker_then_reap(service, job_id, "publish")
    state, stages, published, error = _job(service, job_id)
    assert state == "succeeded", error
    assert published == ["studio/coreml-tiny-kill2"]
    _one_commit_each(api, published)


def _lose_the_next_message(job_id: int) -> None:
    """Take the job's waiting message out of its queue into kombu's ``unacked`` hash, as a worker that
    reserved it and was killed before acknowledging it leaves it (redelivered only after the visibility
    timeout, hours later)."""
    import redis

    from service.broker import job_of

    client = redis.Redis.from_url(REDIS)
    for raw in client.lrange("convert", 0, -1):
        if job_of(raw) == job_id:
            client.lrem("convert", 1, raw)
            client.hset("unacked", f"dead-worker-{job_id}", json.dumps([json.loads(raw), "", "convert"]))
            return
    raise AssertionError(f"no message of job {job_id} waits in the convert queue")


@pytest.mark.parametrize("killed", ["before acknowledging fetch", "between fetch and convert"])
def test_a_worker_killed_between_stages_or_before_acknowledging_leaves_no_job_stuck(service, killed) -> None:
    """The reaper sees no running stage and no waiting message, and sends the job again once it has been
    idle for the heartbeat timeout; the job finishes with one commit per repo."""
    from service.reaper import reap
    from service.settings import Settings

    name = f"studio/tiny-lost-{killed.split()[0]}"
    api = _source(service, name)
    for worker in [p for p in service["workers"] if p.poll() is None]:  # nobody takes the message meanwhile
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    result = run("submit", name, "--packages-only", "--bits", "0", "--attention", "original", env=service["env"])
    job_id = _job_id(result.stdout)
    _lose_the_next_message(job_id)
    if killed.startswith("between"):  # the dead worker ran fetch, then died before sending the convert parts
        fetched = subprocess.run(["python", "-c", f"from service.runner import run_stage; run_stage({job_id}, 'fetch')"],
                                 env={**os.environ, **service["env"]}, capture_output=True, text=True, timeout=300)
        assert fetched.returncode == 0, fetched.stderr[-2000:]
        assert _job(service, job_id)[1][("fetch", "")] == "succeeded"
    service["start_worker"]()
    settings = Settings(database_url=service["db"], broker_url=REDIS, heartbeat_timeout=5)
    assert not [r for r in reap(settings=settings) if r.job_id == job_id]  # not idle for 5 s yet, perhaps
    time.sleep(6)
    revived = _wait(lambda: [r for r in reap(settings=settings) if r.job_id == job_id], 30, "the reaper")
    assert revived[0].action == "sent again" and "was lost" in revived[0].reason
    if killed.startswith("between"):
        assert "after fetch" in revived[0].reason
    _wait(lambda: _job(service, job_id)[0] in ("succeeded", "failed"), 300, "the job to finish")
    state, stages, published, error = _job(service, job_id)
    assert state == "succeeded", error
    assert published == [f"studio/coreml-{name.split('/')[1]}"]
    _one_commit_each(api, published)
