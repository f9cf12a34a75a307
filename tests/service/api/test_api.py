"""The API's shape: typed schemas in the OpenAPI document, the webhook's Hub and database work off the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import resolved_source
from fastapi.testclient import TestClient

from service.api import create_api
from service.settings import Settings
from service.webhooks import WebhookOutcome


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}", webhook_secret="hook",
                        broker_url="redis://127.0.0.1:1/0")
    return TestClient(create_api(settings))


def _ref(schema: dict) -> str:
    schema = schema.get("items", schema)
    return schema["$ref"].rsplit("/", 1)[-1]


def test_every_route_documents_typed_schemas(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]

    def response(path: str, method: str, status: str = "200") -> str:
        return _ref(paths[path][method]["responses"][status]["content"]["application/json"]["schema"])

    assert response("/jobs", "get") == "Job" and response("/jobs/{job_id}", "get") == "Job"
    assert response("/jobs", "post", "201") == "Submitted"
    assert _ref(paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]) == "JobRequest"
    assert response("/watches", "get") == "Watch" and response("/sweep", "post") == "SweepResult"
    assert response("/ready", "get") == "Ready"
    job = spec["components"]["schemas"]["Job"]["properties"]
    assert {"id", "state", "source_sha", "stages", "published", "options"} <= set(job)
    assert _ref(job["stages"]) == "Stage"


def test_the_webhook_does_its_work_outside_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    where: list[str] = []

    def handle(body: bytes, *, settings) -> WebhookOutcome:
        try:
            asyncio.get_running_loop()
            where.append("event loop")
        except RuntimeError:
            where.append("worker thread")
        return WebhookOutcome(200, {"ignored": "test"})

    monkeypatch.setattr("service.api.webhooks.handle_hub_webhook", handle)
    answer = client.post("/webhooks/hub", content=b"{}", headers={"X-Webhook-Secret": "hook"})
    assert answer.status_code == 200 and where == ["worker thread"]


def test_a_malformed_content_length_is_refused(client: TestClient) -> None:
    answer = client.post("/webhooks/hub", content=b"{}", headers={"X-Webhook-Secret": "hook", "Content-Length": "x"})
    assert answer.status_code == 400 and answer.json() == {"error": "malformed Content-Length"}


# --- request size, validation errors that do not echo, visibility that follows the source ---------------

@pytest.fixture
def jobs_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """A client on a migrated database; sources resolve without the Hub and nothing is sent to a queue."""
    from service.db import upgrade

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    monkeypatch.setattr("workers.source.resolve.resolve_source", lambda source, **_: resolved_source(source, "a" * 40))
    monkeypatch.setattr("service.submit.enqueue", lambda *a, **k: "task")
    return TestClient(create_api(Settings(database_url=url, broker_url="redis://127.0.0.1:1/0")))


def _one_line_error(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text[:300]
    body = answer.json()
    assert isinstance(body["error"], str) and "\n" not in body["error"] and "hint" in body
    return body


@pytest.mark.parametrize("route", ["/jobs", "/watches"])
def test_huge_bodies_are_refused_before_parsing(client: TestClient, route: str) -> None:
    huge = b'{"repo": "' + b"x" * 10_000_000 + b'"}'
    body = _one_line_error(client.post(route, content=huge, headers={"Content-Type": "application/json"}), 413)
    assert "65536" in body["error"]
    # without a Content-Length (chunked), the limit holds while reading
    chunks = (huge[i:i + 65536] for i in range(0, len(huge), 65536))
    answer = client.post(route, content=chunks, headers={"Content-Type": "application/json"})
    assert _one_line_error(answer, 413) and len(answer.content) < 500


@pytest.mark.parametrize(("field", "value", "limit"), [("repo", "org/" + "x" * 190, 193), ("namespace", "n" * 150, 96),
                                                       ("revision", "r" * 256, 255)])
def test_fields_are_capped_and_refusals_do_not_echo_them(client: TestClient, field: str, value: str,
                                                         limit: int) -> None:
    body = {"repo": "org/model", field: value}
    answer = client.post("/jobs", json=body)
    error = _one_line_error(answer, 422)
    assert f"{field}: " in error["error"] and f"longer than {limit} characters" in error["error"]
    assert value not in answer.text and len(answer.content) < 2000


def test_validation_errors_show_the_field_and_a_short_input(client: TestClient) -> None:
    big = {"k" + str(i): "v" * 1000 for i in range(30)}  # ~50 KB in all: under the size limit, refused by type
    answer = client.post("/jobs", json={"repo": "org/model", "bits": big, "attentions": "x" * 20_000})
    error = _one_line_error(answer, 422)
    assert "bits" in error["error"] and "attentions" in error["error"]
    assert len(answer.content) < 3000 and "v" * 200 not in answer.text and "x" * 200 not in answer.text
    assert all(len(item.get("input", "")) <= 101 for item in error["detail"])


@pytest.mark.parametrize(("sent", "stored"), [({}, None), ({"private": True}, True), ({"private": False}, False)])
def test_visibility_follows_the_source_unless_chosen(jobs_client: TestClient, sent: dict, stored) -> None:
    answer = jobs_client.post("/jobs", json={"repo": "org/model", "namespace": "studio", **sent})
    assert answer.status_code == 201, answer.text
    assert answer.json()["options"]["private"] is stored
    watch = jobs_client.post("/watches", json={"repo": "org/model", "namespace": "studio", **sent})
    assert watch.status_code == 201 and jobs_client.get("/watches").json()[0]["options"]["private"] is stored


def test_deployment_target_and_chunks_are_job_and_watch_options(jobs_client: TestClient) -> None:
    sent = {"repo": "org/model", "namespace": "studio", "deployment_target": "macOS14", "chunks_only": True}
    answer = jobs_client.post("/jobs", json=sent)
    assert answer.status_code == 201, answer.text
    options = answer.json()["options"]
    assert (options["deployment_target"], options["chunk_unet"], options["chunks_only"]) == ("macOS14", True, True)
    watch = jobs_client.post("/watches", json=sent)
    assert watch.status_code == 201 and jobs_client.get("/watches").json()[0]["options"]["chunk_unet"] is True
    refused = jobs_client.post("/jobs", json={**sent, "deployment_target": "iOS16"})
    assert refused.status_code == 422 and "6-bit palettized weights need iOS17" in refused.text


def test_explicit_visibility_keeps_its_dedupe_key() -> None:
    from workers.options import JobOptions

    before = ('{"attentions":["original","split_einsum_v2"],"bits":6,"components":null,"namespace":"studio",'
              '"packages_only":false,"private":false}')
    assert JobOptions(namespace="studio", private=False).key() == before
    assert JobOptions(namespace="studio").key() == before.replace('"private":false', '"private":null')


@pytest.fixture
def restored_logging():
    """Put the logging configuration back after a test configures it as uvicorn would."""
    import logging

    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate,
                 logging.getLogger(n).filters[:]) for n in names}
    yield
    for n, (handlers, level, propagate, filters) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)
        logger.propagate = propagate


def test_the_api_command_masks_tokens_in_its_logs(monkeypatch: pytest.MonkeyPatch, capsys, restored_logging) -> None:
    import logging
    import logging.config

    from service.cli import service

    started: dict = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: started.update(kwargs))
    monkeypatch.setattr("service.settings.get_settings",
                        lambda: Settings(api_token="api-secret-1", webhook_secret="hook-secret-2"))
    service.api(host="127.0.0.1", port=8123)
    logging.config.dictConfig(started["log_config"])  # what uvicorn does with it
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                "/jobs?token=api-secret-1&limit=5&access_token=hf_AbCdEfGhIjKlMnOpQrStUv&X-Api-Key=k123", "1.1", 200)
    logging.getLogger("service.api").warning("webhook with secret hook-secret-2 and Bearer abc.def from %s",
                                             "https://x/?sig=zz")
    logs = capsys.readouterr()
    out = logs.out + logs.err
    assert "GET /jobs?token=***&limit=5&access_token=***&X-Api-Key=*** HTTP/1.1" in out
    for secret in ("api-secret-1", "hf_AbCd", "k123", "hook-secret-2", "abc.def", "zz"):
        assert secret not in out, secret
    assert "Bearer ***" in out and "?sig=***" in out


@pytest.mark.parametrize(("line", "masked"), [
    ("/x?session_id=s1&page=2", "/x?session_id=***&page=2"),
    ("/x?to%6Ben=abc", "/x?to%6Ben=***"),
    ("/jobs?state=queued&limit=5", "/jobs?state=queued&limit=5"),
    ("pushed with hf_abcdefghijklmnopqrstu", "pushed with hf_***"),
])
def test_mask_secrets(line: str, masked: str) -> None:
    from service.cli.service import mask_secrets

    assert mask_secrets(line) == masked


@pytest.mark.parametrize(("source", "sent", "published_private"), [
    ("studio/closed-model", {}, True), ("studio/open-model", {}, False),
    ("studio/closed-model", {"private": False}, False), ("studio/open-model", {"private": True}, True)])
def test_a_job_from_the_api_publishes_with_its_sources_visibility(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, devhub, source: str, sent: dict,
        published_private: bool) -> None:
    from huggingface_hub import HfApi

    from service import runner
    from service.db import session_scope, upgrade
    from workers.options import JobOptions
    from service.jobs import get_job

    alice = HfApi(endpoint=devhub[0], token="alice-token")
    alice.create_repo("studio/open-model", private=False, exist_ok=True)
    alice.create_repo("studio/closed-model", private=True, exist_ok=True)  # the service's token cannot see it
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    settings = Settings(database_url=url, broker_url="redis://127.0.0.1:1/0", hub_endpoint=devhub[0],
                        artifact_store=str(tmp_path / "artifacts"))
    monkeypatch.setattr("workers.source.resolve.resolve_source", lambda source, **_: resolved_source(source, "a" * 40))
    monkeypatch.setattr("service.submit.enqueue", lambda *a, **k: "task")
    answer = TestClient(create_api(settings)).post("/jobs", json={"repo": source, "namespace": "studio", **sent})
    assert answer.status_code == 201, answer.text
    published: list[bool] = []

    def publish_tree(tree, *, private, **_):
        published.append(private)
        return type("Published", (), {"repo_id": f"studio/{tree}", "commit": "b" * 40, "changed": True,
                                      "tag": None})()

    monkeypatch.setattr("workers.hub.publish.publish_tree", publish_tree)
    monkeypatch.setattr("workers.package.repos.load_trees", lambda out: ["coreml-model", "coreml-model-palettized"])
    with session_scope(url) as session:
        job = get_job(session, answer.json()["id"])
        spec = runner.JobSpec(job.id, job.source_repo, job.source_sha, JobOptions.from_dict(job.options))
    runner._publish(spec, "", settings)
    assert published == [published_private, published_private]


def test_twenty_identical_submits_at_once_make_one_job(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from service.db import session_scope
    from service.jobs import list_jobs

    sent: list[int] = []
    monkeypatch.setattr("workers.source.resolve.resolve_source", lambda source, **_: resolved_source(source, "c" * 40))
    monkeypatch.setattr("service.submit.enqueue", lambda job_id, *a, **k: sent.append(job_id) or f"task-{job_id}")
    client = TestClient(create_api(Settings(database_url=database_url, broker_url="redis://127.0.0.1:1/0",
                                            default_namespace="studio")))
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: client.post("/jobs", json={"repo": "studio/tiny-sd"}), range(20)))
    assert sorted(a.status_code for a in answers) == [200] * 19 + [201]
    assert len({a.json()["id"] for a in answers}) == 1 and len(sent) == 1
    with session_scope(database_url) as session:
        assert len(list_jobs(session)) == 1


def test_api_docs_load_their_assets_from_the_api_itself(tmp_path: Path) -> None:
    """/docs and /redoc render offline: every script and style they reference is served by the API."""
    import re

    client = TestClient(create_api(Settings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}")))
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
        for asset in assets:
            served = client.get(asset)
            assert served.status_code == 200 and len(served.content) > 1000, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "coreml-publisher"


@pytest.mark.parametrize("expect", [False, True])
def test_a_large_declared_body_gets_its_413_not_a_reset(tmp_path: Path, expect: bool) -> None:
    """A client sending 10 MB with a Content-Length reads the 413 (it used to be cut off mid-send and see a
    reset); one that asked ``Expect: 100-continue`` gets the 413 without sending the body."""
    import socket
    import threading
    import time

    import uvicorn

    from service.db import upgrade

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    app = create_api(Settings(database_url=url, broker_url="redis://127.0.0.1:1/0"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    size = 10_000_000
    head = (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n{'Expect: 100-continue' + chr(13) + chr(10) if expect else ''}\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
            connection.sendall(head)
            if not expect:
                chunk = b"x" * 65536
                for _ in range(size // len(chunk)):
                    connection.sendall(chunk)
                connection.sendall(b"x" * (size % len(chunk)))
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = connection.recv(65536)
                if not data:
                    break
                answer += data
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request body larger than 65536 bytes" in answer
