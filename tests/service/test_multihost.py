"""A multi-host run: two workers that share nothing but Redis, PostgreSQL and an S3-compatible artifact store
(moto's S3 server) run one job between them, as workers on separate hosts do.

The convert worker serves `convert` only and the other worker `default,publish`, so every job crosses from one
to the other through the bucket. Each worker has its own HOME, scratch, Hub cache, temp folder and working
directory, and finds the bucket the way a real deployment does: `COREML_PUBLISH_ARTIFACT_STORE=s3://...` and
the standard AWS variables (`AWS_ENDPOINT_URL` for an S3-compatible endpoint), read by botocore under s3fs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from service.db import session_scope, upgrade
from service.jobs import get_job
from tests.conftest import _postgres_database
from tests.service.cli.test_cli import run
from tests.helpers import free_port as _free_port
from tests.helpers import wait_for as _wait

pytestmark = [pytest.mark.slow,  # real worker processes, a conversion
              pytest.mark.timeout(360)]  # a backstop: every wait below is bounded, and the whole run takes ~1.5 min

REDIS = "redis://127.0.0.1:6379/10"  # not the dbs test_queue (9) and test_secrets (12) flush
BUCKET, PREFIX = "coreml-artifacts", "store"
SOURCE = "studio/tiny-sd"
# moto accepts any keys; region and keys stand for a real deployment's (no ~/.aws is read: each host has its HOME)
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
HOSTS = {"convert-host": "convert", "publish-host": "default,publish"}






def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:  # ended meanwhile
                pass
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    for process in processes:  # the workers' pool children: a leader that went first may leave them behind
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _job(db: str, job_id: int):
    with session_scope(db) as session:
        job = get_job(session, job_id)
        return job.state, {(s.stage, s.part): s.state for s in job.stages}, [p.repo_id for p in job.published], \
            job.error


def test_two_workers_sharing_only_redis_postgres_and_s3_run_a_job(tmp_path: Path) -> None:
    import boto3
    import redis

    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store
    from workers.devtools.tiny import build_tiny_pipeline

    processes: list[subprocess.Popen] = []
    drop = None
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto_log = tmp_path / "moto.log"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=AWS["AWS_DEFAULT_REGION"],
                      aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"])
    try:
        processes.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                          stdout=moto_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True))
        url, drop = _postgres_database(f"coreml_publish_multihost_{os.getpid()}")
        _wait(lambda: _listening(port), 60, "moto's S3 server", (moto_log,))
        s3.create_bucket(Bucket=BUCKET)
        upgrade(url)
        redis.Redis.from_url(REDIS).flushdb()
        Store(tmp_path / "hub").add_token("alice", token="alice-token", orgs=["studio"])
        with running_devhub(tmp_path / "hub") as hub:
            api = HfApi(endpoint=hub, token="alice-token")
            api.create_repo(SOURCE)
            api.upload_folder(repo_id=SOURCE, folder_path=str(build_tiny_pipeline(tmp_path / "tiny-sd", style="sd2",
                                                                                  seed=11)))
            shared = {"HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
                      "COREML_PUBLISH_DATABASE_URL": url, "COREML_PUBLISH_BROKER_URL": REDIS,
                      "COREML_PUBLISH_DEFAULT_NAMESPACE": "studio", "COREML_PUBLISH_HEARTBEAT_INTERVAL": "1",
                      "COREML_PUBLISH_ARTIFACT_STORE": f"s3://{BUCKET}/{PREFIX}"}
            base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "XDG_", "COREML_PUBLISH_"))}
            logs = {}
            for name, queues in HOSTS.items():
                host = tmp_path / name
                for folder in ("home", "scratch", "hf", "tmp"):
                    (host / folder).mkdir(parents=True)
                env = {**base, **shared, **AWS, "AWS_ENDPOINT_URL": endpoint, "HOME": str(host / "home"),
                       "COREML_PUBLISH_SCRATCH": str(host / "scratch"), "HF_HOME": str(host / "hf"),
                       "TMPDIR": str(host / "tmp")}
                logs[name] = host / "worker.log"
                processes.append(subprocess.Popen(["coreml-publish", "worker", "--queues", queues], cwd=host, env=env,
                                                  stdout=logs[name].open("w"), stderr=subprocess.STDOUT,
                                                  start_new_session=True))
            all_logs = (*logs.values(), moto_log)
            for name, log in logs.items():
                _wait(lambda: "ready." in log.read_text(errors="replace"), 90, f"the worker on {name}", all_logs)

            submitted = run("submit", SOURCE, "--packages-only", "--bits", "6", "--attention", "original",
                            env=shared)  # the client needs neither the bucket nor a worker's folders
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
            job_id = int(submitted.stdout.split("Job ", 1)[1].split(":")[0].split()[0])
            _wait(lambda: _job(url, job_id)[0] in ("succeeded", "failed", "cancelled"), 180, "the job", all_logs)

            state, stages, published, error = _job(url, job_id)
            assert state == "succeeded", f"{error}\n{run('logs', str(job_id), env=shared).stdout}"
            assert stages == {("fetch", ""): "succeeded", ("convert", "shared"): "succeeded",
                              ("convert", "unet-original"): "succeeded", ("merge", ""): "succeeded",
                              ("package", ""): "succeeded", ("publish", ""): "succeeded"}
            assert published == ["studio/coreml-tiny-sd", "studio/coreml-tiny-sd-palettized"]
            for repo in published:
                files = HfApi(endpoint=hub).list_repo_files(repo)
                for component in ("unet", "text_encoder", "vae_decoder"):
                    package = f"original/packages/Stable_Diffusion_version_studio_tiny-sd_{component}.mlpackage"
                    assert f"{package}/Manifest.json" in files, (repo, component, files)
                assert "README.md" in files

        # the job crossed hosts: each worker ran only its queues' stages ...
        ran = {name: {task for task in ("fetch", "convert", "merge", "package", "publish")
                      if f"coreml_publisher.{task}[" in log.read_text(errors="replace")} for name, log in logs.items()}
        assert ran == {"convert-host": {"fetch", "convert"}, "publish-host": {"merge", "package", "publish"}}, ran
        # ... and the artifacts went through the bucket: the convert host never had the merged output, the other
        # host pulled the parts the convert host pushed
        job_folder = Path("jobs", str(job_id))
        convert_scratch, publish_scratch = (tmp_path / name / "scratch" / job_folder for name in HOSTS)
        assert (convert_scratch / "parts" / "unet-original").is_dir() and not (convert_scratch / "out").exists()
        assert sorted(p.name for p in (publish_scratch / "parts").iterdir()) == ["shared", "unet-original"]
        assert (publish_scratch / "out" / "coreml-tiny-sd-palettized" / "README.md").is_file()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{PREFIX}/{job_folder}/") for o in page.get("Contents", [])]
        folder = f"{PREFIX}/{job_folder}"
        for part in ("shared", "unet-original"):
            assert any(k.startswith(f"{folder}/parts/{part}/") and k.endswith("/Manifest.json") for k in keys), keys
        assert f"{folder}/out/coreml-tiny-sd-palettized/README.md" in keys  # pushed again by package
        assert not any("/out/out/" in k or "/parts/shared/shared/" in k for k in keys)  # pushes replace, not nest
        report = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{folder}/out/report.json")["Body"].read())
        assert report["repos"]["palettized"] == "coreml-tiny-sd-palettized"
    finally:
        _stop(processes)
        if drop:
            drop()

