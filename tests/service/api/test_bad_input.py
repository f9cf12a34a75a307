"""Bad input at the HTTP API and the Hub webhook: a 4xx with a one-line JSON error for the caller's mistakes,
503 with Retry-After when the job database or queue does not answer, never a 500, and no job left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import resolved_source
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api import create_api
from service.db import engine_for, session_scope
from service.errors import HubUnavailableError, ServiceUnavailableError
from workers.options import JobOptions
from service.models import Job
from service.settings import Settings
from service.watch import add_watch

AUTH = {"Authorization": "Bearer api"}
HOOK = {"X-Webhook-Secret": "hook", "Content-Type": "application/json"}
SHA = "0123456789abcdef0123456789abcdef01234567"
BAD_NAMESPACES = ["-bad", "bad-", ".x", "a" * 200, "a" * 97, "../../x", "a--b", "a..b", "org/name", "spaced out",
                  "ünï", "tab\there"]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file watching studio/tiny-sd; each test gets its own copy."""
    from service.db import upgrade

    path = tmp_path_factory.mktemp("template") / "jobs.db"
    upgrade(f"sqlite:///{path}")
    with session_scope(f"sqlite:///{path}") as session:
        add_watch(session, repo_id="studio/tiny-sd", options=JobOptions(namespace="studio", packages_only=True))
    engine_for(f"sqlite:///{path}").dispose()  # the last connection closing folds the WAL into the file we copy
    return path


@pytest.fixture
def database(migrated: Path, tmp_path: Path) -> str:
    shutil.copy(migrated, tmp_path / "jobs.db")
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def resolved(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hub lookups made (none should be, for bad input); each resolves to SHA without the network."""
    calls: list[str] = []

    def resolve(source: str, **_: object):
        calls.append(source)
        return resolved_source(source, SHA)

    monkeypatch.setattr("workers.source.resolve.resolve_source", resolve)
    monkeypatch.setattr("service.submit.send", lambda *a, **k: "task", raising=False)
    monkeypatch.setattr("service.submit.enqueue", lambda *a, **k: "task", raising=False)
    return calls


def _client(database: str) -> TestClient:
    settings = Settings(database_url=database, webhook_secret="hook", api_token="api", default_namespace="studio",
                        broker_url="redis://127.0.0.1:1/0", hub_endpoint="http://127.0.0.1:1")
    return TestClient(create_api(settings))


@pytest.fixture
def client(database: str, resolved: list[str]) -> TestClient:
    return _client(database)


def _jobs(database: str) -> int:
    with session_scope(database) as session:
        return session.scalar(select(func.count()).select_from(Job))


def refused(answer, status: int, *fragments: str) -> dict:
    """The answer has ``status`` and a one-line JSON ``error`` containing each fragment; no traceback."""
    assert answer.status_code == status, answer.text
    assert "Traceback" not in answer.text
    body = answer.json()
    assert isinstance(body.get("error"), str) and body["error"].strip(), body
    assert "\n" not in body["error"] and len(body["error"]) <= 500, body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body


@pytest.mark.parametrize("method, path, fragment", [
    ("get", "/jobs/99999999999999999999", "less than or equal to 2147483647"),
    ("get", "/jobs/2147483648", "less than or equal to 2147483647"),
    ("get", "/jobs/0", "greater than or equal to 1"),
    ("get", "/jobs/-1", "greater than or equal to 1"),
    ("get", "/jobs/abc", "valid integer"),
    ("get", "/jobs/1.5", "valid integer"),
    ("post", "/jobs/99999999999999999999/cancel", "job_id"),
    ("post", "/jobs/99999999999999999999/retry", "job_id"),
    ("get", "/jobs?limit=-1", "query.limit"),
    ("get", "/jobs?limit=0", "query.limit"),
    ("get", "/jobs?limit=501", "query.limit"),
    ("get", "/jobs?limit=99999999999999999999", "query.limit"),
    ("get", "/jobs?limit=ten", "query.limit"),
    ("get", "/jobs?state=" + "x" * 100, "query.state"),
    ("get", "/jobs?state=weird", "unknown state 'weird'"),
])
def test_ids_and_query_parameters_are_bounded(client: TestClient, database: str, method: str, path: str,
                                              fragment: str) -> None:
    refused(getattr(client, method)(path, headers=AUTH), 422, fragment)
    assert _jobs(database) == 0


def test_an_unknown_job_in_range_is_404(client: TestClient) -> None:
    refused(client.get("/jobs/2147483647", headers=AUTH), 404, "no job 2147483647")


@pytest.mark.parametrize("route", ["/jobs", "/watches"])
@pytest.mark.parametrize("namespace", BAD_NAMESPACES, ids=lambda n: repr(n[:12]))
def test_bad_namespaces_are_refused_before_any_work(client: TestClient, database: str, resolved: list[str],
                                                    route: str, namespace: str) -> None:
    answer = client.post(route, json={"repo": "studio/other", "namespace": namespace}, headers=AUTH)
    refused(answer, 422, "is not a valid Hub namespace")
    assert resolved == [] and _jobs(database) == 0
    watches = client.get("/watches", headers=AUTH).json()
    assert watches[0]["repo_id"] == "studio/tiny-sd" and len(watches) == 1


@pytest.mark.parametrize("route", ["/jobs", "/watches"])
@pytest.mark.parametrize("body, fragment", [
    ({"repo": ""}, "is not a Hub repo id"),
    ({"repo": "name-only"}, "is not a Hub repo id"),
    ({"repo": "org/a/b"}, "is not a Hub repo id"),
    ({"repo": "../../etc"}, "is not a Hub repo id"),
    ({"repo": "org/" + "x" * 300}, "is not a Hub repo id"),
    ({"repo": "studio/other", "bits": "six"}, "bits"),
    ({"repo": "studio/other", "bits": 3}, "--bits 3 is not supported"),
    ({"repo": "studio/other", "attentions": ["flash"]}, "unknown attention layouts: flash"),
    ({"repo": "studio/other", "attentions": []}, "no attention layout selected"),
    ({"repo": "studio/other", "attentions": "original"}, "attentions"),
    ({"repo": ["studio/other"]}, "repo"),
    ({"repo": 7}, "repo"),
    ({"repo": "studio/other", "namespace": 7}, "namespace"),
    ({"repo": "studio/other", "resolutions": ["tall"]}, "'tall' is not an image size"),
    ({"repo": "studio/other", "resolutions": [f"{64 * i}x512" for i in range(1, 10)]}, "resolutions: List should have at most 8 items"),
    ({"repo": "studio/other", "batch_size": 1}, "batch_size: Extra inputs are not permitted"),
    ({"repo": "studio/other", "resolution": ["512x768"]}, "resolution: Extra inputs are not permitted"),
    ({}, "repo"),
])
def test_bad_job_requests_get_one_line(client: TestClient, database: str, resolved: list[str], route: str,
                                       body: dict, fragment: str) -> None:
    refused(client.post(route, json=body, headers=AUTH), 422, fragment)
    assert resolved == [] and _jobs(database) == 0


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'"repo"', b"[" * 5000 + b"]" * 5000])
def test_bodies_that_are_not_a_request_get_one_line(client: TestClient, database: str, content: bytes) -> None:
    answer = client.post("/jobs", content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text
    refused(answer, answer.status_code)
    assert _jobs(database) == 0


def _payload(**changes) -> dict:
    payload = {"event": {"action": "update", "scope": "repo.content"},
               "repo": {"type": "model", "name": "studio/tiny-sd", "id": "abc"},
               "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "1" * 40, "newSha": SHA}]}
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = payload
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        elif value is _DROP:
            del target[last]
        else:
            target[last] = value
    return payload


_DROP = object()
WRONG = [None, True, 7, 1.5, "text", [], ["x"], {}, {"a": 1}]


def _wrong_typed() -> list:
    """Every field the receiver reads, replaced by each JSON type it is not (and dropped, when required)."""
    cases = []
    for field, right in (("event", dict), ("event__scope", str), ("repo", dict), ("repo__name", str),
                         ("updatedRefs", list), ("updatedRefs__0", dict), ("updatedRefs__0__ref", str),
                         ("updatedRefs__0__newSha", str), ("repo__type", str)):
        optional = field in ("updatedRefs", "updatedRefs__0__newSha", "repo__type")
        for value in WRONG:
            if isinstance(value, right) or (optional and value is None):
                continue
            cases.append(pytest.param(field, value, id=f"{field}={json.dumps(value)}"))
        if not optional and field != "updatedRefs__0":
            cases.append(pytest.param(field, _DROP, id=f"{field} missing"))
    return cases


@pytest.mark.parametrize("field, value", _wrong_typed())
def test_webhook_payloads_of_the_wrong_shape_get_400(client: TestClient, database: str, field: str,
                                                     value: object) -> None:
    answer = client.post("/webhooks/hub", content=json.dumps(_payload(**{field: value})), headers=HOOK)
    refused(answer, 400, "malformed payload")
    assert _jobs(database) == 0


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe{}", b"[]", b"null", b"7", b'"x"', b"[" * 20000,
                                     b'{"event": ' * 3000])
def test_webhook_bodies_that_are_not_json_objects_get_400(client: TestClient, database: str, content: bytes) -> None:
    refused(client.post("/webhooks/hub", content=content, headers=HOOK), 400, "malformed payload")
    assert _jobs(database) == 0


@pytest.mark.parametrize("sha", ["abc", "g" * 40, SHA + "0", SHA[:-1], " " + SHA[1:], SHA[:39] + "\n", "../" * 14])
def test_a_sha_that_is_not_40_hex_characters_is_refused(client: TestClient, database: str, resolved: list[str],
                                                        sha: str) -> None:
    refused(client.post("/webhooks/hub", content=json.dumps(_payload(updatedRefs__0__newSha=sha)), headers=HOOK),
            400, "newSha must be a 40-character hex commit sha")
    assert resolved == [] and _jobs(database) == 0


@pytest.mark.parametrize("changes, reason", [
    ({"updatedRefs__0__newSha": "0" * 40}, "no new commit on main"),
    ({"updatedRefs__0__newSha": None}, "no new commit on main"),
    ({"updatedRefs": []}, "no new commit on main"),
    ({"updatedRefs": None}, "no new commit on main"),
    ({"updatedRefs__0__ref": "refs/heads/dev"}, "no new commit on main"),
    ({"event__scope": "discussion"}, "does not change files"),
    ({"repo__type": "dataset"}, "dataset repos are not converted"),
    ({"repo__name": "studio/unknown"}, "is not watched"),
])
def test_webhooks_the_service_does_not_act_on_are_ignored(client: TestClient, database: str, changes: dict,
                                                          reason: str) -> None:
    answer = client.post("/webhooks/hub", content=json.dumps(_payload(**changes)), headers=HOOK)
    assert answer.status_code == 200 and reason in answer.json()["ignored"], answer.text
    assert _jobs(database) == 0


def test_a_repo_name_that_is_not_a_repo_id_is_refused(client: TestClient, database: str) -> None:
    answer = client.post("/webhooks/hub", content=json.dumps(_payload(repo__name="../../x")), headers=HOOK)
    refused(answer, 400, "repo.name '../../x' is not a Hub repo id")


def test_a_good_webhook_still_starts_a_job(client: TestClient, database: str, resolved: list[str]) -> None:
    answer = client.post("/webhooks/hub", content=json.dumps(_payload()), headers=HOOK)
    assert answer.status_code == 202 and answer.json()["sha"] == SHA, answer.text
    assert resolved == ["studio/tiny-sd"] and _jobs(database) == 1


def test_a_watch_stored_with_options_now_refused_is_ignored(client: TestClient, database: str) -> None:
    from service.models import WatchedRepo

    with session_scope(database) as session:
        watch = session.scalar(select(WatchedRepo))
        watch.options = {**watch.options, "namespace": "-bad"}
    answer = client.post("/webhooks/hub", content=json.dumps(_payload()), headers=HOOK)
    assert answer.status_code == 200 and "no longer valid" in answer.json()["ignored"], answer.text
    assert _jobs(database) == 0


DOWN = [("get", "/jobs", None), ("get", "/jobs/1", None), ("post", "/jobs/1/cancel", None), ("get", "/watches", None),
        ("post", "/jobs", {"repo": "studio/other"}), ("post", "/watches", {"repo": "studio/other"}),
        ("delete", "/watches/studio/tiny-sd", None), ("post", "/watches/studio/tiny-sd/pause", None)]


@pytest.mark.parametrize("method, path, body", DOWN)
@pytest.mark.parametrize("url", ["sqlite:////nonexistent-coreml-publish-dir/jobs.db", "sqlite:///{tmp}/empty.db"],
                         ids=["unreachable", "no tables"])
def test_a_database_that_does_not_answer_is_503_with_retry_after(tmp_path: Path, resolved: list[str], url: str,
                                                                 method: str, path: str, body: dict | None) -> None:
    client = _client(url.format(tmp=tmp_path))
    answer = client.request(method.upper(), path, json=body, headers=AUTH)
    refused(answer, 503, "the job database is unavailable")
    assert answer.headers["retry-after"] == "30"


def test_a_webhook_while_the_database_is_down_is_503(tmp_path: Path) -> None:
    client = _client("sqlite:////nonexistent-coreml-publish-dir/jobs.db")
    answer = client.post("/webhooks/hub", content=json.dumps(_payload()), headers=HOOK)
    refused(answer, 503, "the job database is unavailable")
    assert answer.headers["retry-after"] == "30"


@pytest.mark.parametrize("error", [
    ServiceUnavailableError("job 3 is recorded, but the queue at redis://broker does not answer (ConnectionError)"),
    HubUnavailableError("cannot reach the Hub for studio/other: ConnectError", source="studio/other"),
])
def test_transient_infrastructure_errors_are_503_with_retry_after(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                                                  error: Exception) -> None:
    def create_job(**_: object):
        raise error

    monkeypatch.setattr("service.api.jobs.create_job", create_job)
    monkeypatch.setattr("service.submit.create_job", create_job)
    answer = client.post("/jobs", json={"repo": "studio/other"}, headers=AUTH)
    refused(answer, 503, error.message)
    assert answer.headers["retry-after"] == "30"
    hook = client.post("/webhooks/hub", content=json.dumps(_payload()), headers=HOOK)
    refused(hook, 503, error.message)
    assert hook.headers["retry-after"] == "30"
