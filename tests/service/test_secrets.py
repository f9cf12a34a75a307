"""No secret leaks: one job through the real service (API, webhook, worker, database, broker, artifact store,
published repos) with distinctive secrets, then every place the service writes is searched for them."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import pytest

from tests.conftest import _postgres_database
from tests.helpers import free_port as _free_port
from tests.helpers import wait_for as _wait

pytestmark = pytest.mark.slow  # real API and worker processes, a conversion

HF_TOKEN = "hf_SECRETtoken1234567890abcdef"
API_TOKEN = "api-SECRET-0987654321"
WEBHOOK_SECRET = "hook-SECRET-1122334455"
SECRETS = {"the HF token": HF_TOKEN, "the API token": API_TOKEN, "the webhook secret": WEBHOOK_SECRET}
REDIS = "redis://127.0.0.1:6379/12"  # not the db test_queue flushes
SOURCE = "studio/tiny-secret"






def _http(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urlopen(Request(url, data, headers, method=method), timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except URLError as e:  # not listening yet
        return 0, str(e)


def _leaks(where: str, data: bytes | str) -> list[str]:
    """One line per secret found in ``data`` (raw, or as the base64 Celery uses for message bodies)."""
    raw = data.encode(errors="surrogateescape") if isinstance(data, str) else data
    found = []
    for name, secret in SECRETS.items():
        if secret.encode() in raw:
            found.append(f"{name} in {where}")
    return found


def _message_bodies(value: bytes) -> list[bytes]:
    """Kombu messages keep their body base64-encoded: decode it so the search sees the task's arguments."""
    try:
        message = json.loads(value)
    except ValueError:
        return []
    messages = message if isinstance(message, list) else [message]
    bodies = []
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("body"), str) \
                and (m.get("properties") or {}).get("body_encoding") == "base64":
            try:
                bodies.append(base64.b64decode(m["body"]))
            except ValueError:
                pass
    return bodies


def _redis_dump(client) -> dict[str, list[bytes]]:
    """Every key of the db with every value it holds (strings, lists, hashes, sets, sorted sets)."""
    dump: dict[str, list[bytes]] = {}
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = [kind.encode()]
        values = [v for v in values if v is not None]
        dump[key.decode(errors="replace")] = [key, *values, *(b for v in values for b in _message_bodies(v))]
    return dump


def _database_dump(url: str) -> dict[str, list[str]]:
    """Every column of every row of every table, as text."""
    from sqlalchemy import MetaData, create_engine, select

    engine = create_engine(url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        dump = {}
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                rows = connection.execute(select(table)).all()
                dump[table.name] = [json.dumps(list(row), default=str) for row in rows]
        return dump
    finally:
        engine.dispose()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_no_secret_reaches_logs_database_broker_artifacts_or_published_repos(tmp_path: Path) -> None:
    import redis
    from huggingface_hub import HfApi, snapshot_download

    from service.db import upgrade
    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store
    from workers.devtools.tiny import build_tiny_pipeline

    Store(tmp_path / "hub").add_token("alice", token=HF_TOKEN, orgs=["studio"])
    broker = redis.Redis.from_url(REDIS)
    broker.flushdb()
    db_url, drop = _postgres_database(f"coreml_publish_secrets_{os.getpid()}")
    processes: list[subprocess.Popen] = []
    logs: list[Path] = []
    broker_seen: dict[str, set[bytes]] = {}  # every key and value seen while the job ran (messages come and go)

    def look_at_broker() -> None:
        for key, values in _redis_dump(broker).items():
            broker_seen.setdefault(key, set()).update(values)

    try:
        upgrade(db_url)
        with running_devhub(tmp_path / "hub") as hub:
            hf = HfApi(endpoint=hub, token=HF_TOKEN)
            source = build_tiny_pipeline(tmp_path / "tiny-secret", style="sd2", seed=11)
            hf.create_repo(SOURCE)
            hf.upload_folder(repo_id=SOURCE, folder_path=str(source))
            port = _free_port()
            api_url = f"http://127.0.0.1:{port}"
            env = {**os.environ, "HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": HF_TOKEN,
                   "HF_HOME": str(tmp_path / "hf-home"), "PYTHONUNBUFFERED": "1",
                   "COREML_PUBLISH_DATABASE_URL": db_url, "COREML_PUBLISH_BROKER_URL": REDIS,
                   "COREML_PUBLISH_ARTIFACT_STORE": str(tmp_path / "artifacts"),
                   "COREML_PUBLISH_SCRATCH": str(tmp_path / "scratch"),
                   "COREML_PUBLISH_DEFAULT_NAMESPACE": "studio", "COREML_PUBLISH_HEARTBEAT_INTERVAL": "1",
                   "COREML_PUBLISH_API_TOKEN": API_TOKEN, "COREML_PUBLISH_WEBHOOK_SECRET": WEBHOOK_SECRET}

            def start(name: str, *args: str) -> Path:
                log = tmp_path / f"{name}.log"
                logs.append(log)
                with open(log, "w") as out:
                    processes.append(subprocess.Popen(["coreml-publish", *args], stdout=out, stderr=subprocess.STDOUT,
                                                      start_new_session=True, env=env))
                return log

            api_log = start("api", "api", "--port", str(port))
            worker_log = start("worker", "worker", "--queues", "convert,default,publish")
            _wait(lambda: _http("GET", f"{api_url}/health")[0] == 200 if processes[0].poll() is None
                  else pytest.fail(f"the API exited: {api_log.read_text()}"), 60, "the API")
            _wait(lambda: "ready." in worker_log.read_text() if processes[1].poll() is None
                  else pytest.fail(f"the worker exited: {worker_log.read_text()}"), 90, "the worker")

            # watch the repo through the API, and point a Hub webhook at the API with the secret
            status, body = _http("POST", f"{api_url}/watches", {"repo": SOURCE, "attentions": ["original"], "bits": 6,
                                                                "packages_only": True}, token=API_TOKEN)
            assert status == 201, body
            status, body = _http("POST", f"{hub}/_devhub/webhooks", {"url": f"{api_url}/webhooks/hub",
                                                                     "secret": WEBHOOK_SECRET, "repos": [SOURCE]},
                                 token=HF_TOKEN)
            assert status == 200, body
            # a credential in a query string (the API ignores it; its access log must not show it)
            status, _ = _http("GET", f"{api_url}/jobs?token={API_TOKEN}&limit=5")
            assert status == 401  # reads need the bearer header: a token in a URL is not taken

            # a push to main: the Hub's webhook starts the job
            hf.upload_file(repo_id=SOURCE, path_or_fileobj=b"a new commit\n", path_in_repo="NOTES.txt")

            def webhook_job():
                look_at_broker()
                jobs = _http("GET", f"{api_url}/jobs", token=API_TOKEN)[1]
                return next((j for j in jobs if j["source_repo"] == SOURCE and j["trigger"] == "webhook"), None)

            job = _wait(webhook_job, 30, "the webhook's job")

            def finished():
                look_at_broker()
                if "raised unexpected" in worker_log.read_text():  # the job would stay running: fail now
                    pytest.fail(f"a task crashed: {worker_log.read_text()[-3000:]}")
                current = _http("GET", f"{api_url}/jobs/{job['id']}", token=API_TOKEN)[1]
                return current if current["state"] in ("succeeded", "failed", "cancelled") else None

            job = _wait(finished, 150, "the job to finish")
            assert job["state"] == "succeeded", job["error"]
            published = [p["repo_id"] for p in job["published"]]
            assert published == ["studio/coreml-tiny-secret", "studio/coreml-tiny-secret-palettized"]

            downloads = tmp_path / "downloads"
            for repo in published:
                snapshot_download(repo, endpoint=hub, token=HF_TOKEN, local_dir=downloads / repo,
                                  cache_dir=tmp_path / "download-cache")
            for process in processes:  # every log line written before the search
                _stop(process)
        look_at_broker()
        database = _database_dump(db_url)
    finally:
        for process in processes:
            _stop(process)
        drop()
        broker.flushdb()

    # the places searched hold what they should: the search means something
    api_text = api_log.read_text()
    assert "/jobs?token=***&limit=5" in api_text, api_text[-2000:]
    assert '"POST /webhooks/hub HTTP/1.1" 202' in api_text and '"POST /watches HTTP/1.1" 201' in api_text
    assert "succeeded" in worker_log.read_text()
    assert database["jobs"] and database["job_events"] and database["watched_repos"]
    assert any(k.startswith("celery-task-meta-") for k in broker_seen)  # results
    assert any(v.startswith(f"[[{job['id']}".encode()) for values in broker_seen.values() for v in values)  # messages, decoded
    reports = list((tmp_path / "artifacts").rglob("report.json"))
    assert any(r.parent.name == "out" for r in reports), reports
    downloaded = _files(downloads)
    assert any(p.name == "README.md" for p in downloaded) and any(".mlpackage" in str(p) for p in downloaded)

    leaks = []
    for log in logs:
        leaks += _leaks(f"the log {log.name}", log.read_bytes())
    for table, rows in database.items():
        for i, row in enumerate(rows):
            leaks += _leaks(f"row {i} of table {table}: {row[:200]}", row)
    for key, values in broker_seen.items():
        for value in values:
            leaks += _leaks(f"Redis key {key}", value)
    for folder in ("artifacts", "scratch", "hf-home"):  # what the worker wrote, its Hub cache included
        for path in _files(tmp_path / folder):
            leaks += _leaks(str(path.relative_to(tmp_path)), path.read_bytes())
    for path in downloaded:
        leaks += _leaks(f"published file {path.relative_to(downloads)}", path.read_bytes())
    assert not leaks, "\n".join(leaks)
