"""The status page as a front door, through FastAPI's TestClient against the dev Hub: the submit form (built from
the options' declarations, checked as ``POST /jobs`` checks, refused from elsewhere, rate-limited), the Hub search
behind its suggestions, the repo page, and the jobs list's search and paging.  The same flows in a browser are in
test_status.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_api, front
from service.api.front import form_fields, request_values
from service.db import session_scope, upgrade
from service.jobs import get_job, list_jobs, record_published, set_state, submit_job
from service.models import JobState
from service.settings import Settings
from tests.service.test_local_and_api import hub_with_source  # noqa: F401 - a fixture
from workers.declare import JOB
from workers.options import JobOptions

TOKEN = "front-door-token-0123456789"
BROKER = "redis://127.0.0.1:6379/15"  # its own db (13 is flushed by test_database_restart); only this test's messages are removed
ORIGIN = {"Origin": "http://127.0.0.1:8000"}


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


def _client(database: str, hub: str | None = None, **settings) -> TestClient:
    settings.setdefault("broker_url", "redis://127.0.0.1:1/0")
    return TestClient(create_api(Settings(database_url=database, api_token=TOKEN, hub_endpoint=hub,
                                          default_namespace="studio", **settings)),
                      base_url="http://127.0.0.1:8000")


def _signed_in(client: TestClient) -> str:
    client.post("/login", data={"token": TOKEN, "next": "/"})
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/ui/submit").text)
    assert found, "the submit page has no form"
    return found[1]


def test_the_form_has_one_field_per_job_option_and_reads_them_as_the_api_takes_them() -> None:
    assert [f.name for f in form_fields()] == [f.name for f, _ in JobOptions.declared(JOB)]
    kinds = {f.name: f.kind for f in form_fields()}
    assert kinds["attentions"] == "choices" and kinds["packages_only"] == "switch" and kinds["private"] == "either"
    assert kinds["resolutions"] == "list" and kinds["bits"] == "text"
    sent = {"repo": [" studio/tiny-sd "], "revision": [""], "attentions": ["original", "split_einsum_v2"],
            "bits": ["mixed:4.5"], "resolutions": ["512x768, 768x512"], "packages_only": ["on"], "private": [""],
            "vae": [""], "csrf": ["x"], "action": ["check"]}
    body = request_values(sent)
    assert body["repo"] == "studio/tiny-sd" and "revision" not in body and "vae" not in body
    assert body["attentions"] == ["original", "split_einsum_v2"] and body["bits"] == "mixed:4.5"
    assert body["resolutions"] == ["512x768", "768x512"] and body["packages_only"] is True
    assert body["chunk_unet"] is False and "private" not in body and "csrf" not in body
    assert request_values({"repo": ["a/b"], "private": ["false"]})["private"] is False


def test_a_signed_in_operator_checks_submits_and_is_told_where_the_model_is(
        hub_with_source: str, database: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import redis

    client = _client(database, hub_with_source, broker_url=BROKER)
    signed_out = client.get("/ui/submit", follow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login")
    csrf = _signed_in(client)
    form = {"csrf": csrf, "repo": "studio/tiny-sd", "attentions": "original", "packages_only": "on"}
    fresh = client.post("/ui/submit", data=form | {"action": "check"}, headers=ORIGIN)
    assert fresh.status_code == 200 and "Not converted with these options yet." in fresh.text
    # refused as the API refuses: the same one-line errors
    api = client.post("/jobs", json={"repo": "studio/tiny-sd", "bits": 3}, headers={"Authorization": f"Bearer {TOKEN}"})
    bad_bits = client.post("/ui/submit", data=form | {"bits": "3"}, headers=ORIGIN)
    assert bad_bits.status_code == api.status_code == 422 and api.json()["error"] in bad_bits.text
    bad_repo = client.post("/ui/submit", data=form | {"repo": "not a repo!"}, headers=ORIGIN)
    assert bad_repo.status_code == 422 and "is not a Hub repo id" in bad_repo.text
    missing = client.post("/ui/submit", data=form | {"repo": "studio/missing"}, headers=ORIGIN)
    assert missing.status_code == 404 and "not found" in missing.text
    assert client.post("/ui/submit", data=form, headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post("/ui/submit", data=form | {"csrf": "0" * 64}, headers=ORIGIN).status_code == 403
    with session_scope(database) as session:
        assert list_jobs(session) == []  # nothing refused was recorded

    broker = redis.Redis.from_url(BROKER)
    waiting = broker.llen("convert")
    try:
        made = client.post("/ui/submit", data=form | {"action": "submit"}, headers=ORIGIN, follow_redirects=False)
        assert made.status_code == 303 and re.fullmatch(r"/ui/jobs/\d+\?done=submitted", made.headers["location"])
        assert broker.llen("convert") > waiting  # sent to the queue as POST /jobs sends it
        job_id = int(made.headers["location"].split("/")[-1].split("?")[0])
        assert f"Submitted: job {job_id} converts studio/tiny-sd" in client.get(made.headers["location"]).text
        again = client.post("/ui/submit", data=form, headers=ORIGIN, follow_redirects=False)
        assert again.headers["location"] == f"/ui/jobs/{job_id}?done=exists"
    finally:
        while broker.llen("convert") > waiting:
            broker.lpop("convert")
    with session_scope(database) as session:
        job = get_job(session, job_id)
        assert job.trigger == "page" and job.options["attentions"] == ["original"] and job.options["packages_only"]
        for repo in ("studio/coreml-tiny-sd", "studio/coreml-tiny-sd-palettized"):
            record_published(session, job, repo_id=repo, commit="c" * 40, changed=True, tag=None)
        set_state(session, job, JobState.SUCCEEDED)
    known = client.post("/ui/submit", data=form | {"action": "check"}, headers=ORIGIN).text
    assert f'Already published from this commit with these options by <a href="/ui/jobs/{job_id}">' in known
    assert 'href="/ui/repos/studio/coreml-tiny-sd-palettized"' in known
    told = client.get(f"/ui/jobs/{job_id}?done=exists").text
    assert "This job already existed" in told

    monkeypatch.setattr(front, "SUBMITS_PER_WINDOW", 2)  # two made above: the next is refused
    limited = client.post("/ui/submit", data=form | {"bits": "4"}, headers=ORIGIN, follow_redirects=False)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "too many submissions" in limited.text


def test_the_hub_search_behind_the_suggestions(hub_with_source: str, database: str,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(database, hub_with_source)
    assert client.get("/ui/hub-search", params={"q": "tiny"}).status_code == 401
    _signed_in(client)
    assert client.get("/ui/hub-search", params={"q": "tiny"}).json() == {"models": ["studio/tiny-sd"]}
    assert client.get("/ui/hub-search", params={"q": "t"}).json() == {"models": []}  # two letters at least
    assert client.get("/ui/hub-search", params={"q": "nothing-like-it"}).json() == {"models": []}
    assert client.get("/ui/hub-search", params={"q": "x" * 500}).status_code == 422
    monkeypatch.setattr(front, "SEARCH_SECONDS", 1.0)
    down = _client(database, "http://127.0.0.1:1")
    _signed_in(down)
    assert down.get("/ui/hub-search", params={"q": "tiny"}).status_code == 502


def test_a_repo_page_without_a_manifest_points_to_its_card_and_an_unknown_one_is_not_found(
        hub_with_source: str, database: str) -> None:  # noqa: F811
    client = _client(database, hub_with_source)
    _signed_in(client)
    plain = client.get("/ui/repos/studio/tiny-sd")
    assert plain.status_code == 200 and "has no <code>coreml-publisher.json</code>" in plain.text
    assert client.get("/ui/repos/studio/nothing-here").status_code == 404


def test_the_jobs_list_searches_by_repo_state_and_trigger_a_page_at_a_time(database: str) -> None:
    with session_scope(database) as session:
        for n in range(55):
            submit_job(session, source_repo=f"org{n % 2}/model-{n}", source_sha=f"{n:040d}",
                       options=JobOptions(namespace="studio"))
    client = _client(database)
    _signed_in(client)
    first = client.get("/")
    assert first.text.count('class="job-row"') == 50 and 'rel="next"' in first.text
    second = client.get("/?page=2")
    assert second.text.count('class="job-row"') == 5 and 'rel="prev"' in second.text
    found = client.get("/", params={"q": "ORG1/model-1"})  # any case: org1's model-1, -11, -13, -15, -17, -19
    assert found.text.count('class="job-row"') == 6 and "org0/" not in found.text
    assert client.get("/", params={"q": "org1", "trigger": "cli"}).text.count('class="job-row"') == 27
    assert client.get("/", params={"q": "org1", "trigger": "page"}).text.count('class="job-row"') == 0
    wrong = client.get("/", params={"trigger": "carrier-pigeon"})
    assert wrong.status_code == 422 and "there is no job trigger" in wrong.text
    listed = client.get("/jobs", params={"q": "model-5", "limit": 3, "offset": 1},
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert [j["source_repo"] for j in listed] == ["org1/model-53", "org0/model-52", "org1/model-51"]
