"""``/jobs``: already converted? Before (``POST /jobs/check``) and when a job is made (``POST /jobs``), the submitter
is told where the same source commit with the same options was published, or that an older commit was."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from huggingface_hub import HfApi

from service.api import create_api
from service.db import session_scope
from service.jobs import get_job, record_published, set_state
from service.models import JobState
from service.settings import Settings
from tests.service.test_local_and_api import hub_with_source  # noqa: F401 - a fixture


def test_a_second_submit_is_told_where_the_model_is_and_a_new_commit_of_the_older_one(
        hub_with_source: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr("service.submit.enqueue", lambda job_id, parts, **_: "task")
    settings = Settings(database_url=database_url, hub_endpoint=hub_with_source, default_namespace="studio",
                        api_token="secret", broker_url="redis://127.0.0.1:1/0")
    client = TestClient(create_api(settings))
    auth = {"Authorization": "Bearer secret"}
    body = {"repo": "studio/tiny-sd", "packages_only": True, "attentions": ["original"]}
    before = client.post("/jobs/check", json=body, headers=auth).json()
    assert before["existing_job"] is None and before["already_published"] == [] and len(before["source_sha"]) == 40
    assert client.post("/jobs/check", json=body).status_code == 401
    job = client.post("/jobs", json=body, headers=auth).json()
    assert job["created"] is True and job["already_published"] == []
    assert client.post("/jobs/check", json=body, headers=auth).json()["existing_job"] == job["id"]
    with session_scope(database_url) as session:  # its workers published it
        done = get_job(session, job["id"])
        for repo in ("studio/coreml-tiny-sd", "studio/coreml-tiny-sd-palettized"):
            record_published(session, done, repo_id=repo, commit="c" * 40, changed=True, tag=None)
        set_state(session, done, JobState.SUCCEEDED)

    again = client.post("/jobs", json=body, headers=auth)
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    (published,) = again.json()["already_published"]
    assert published["same_commit"] is True and published["job_id"] == job["id"]
    assert published["urls"] == [f"{hub_with_source}/studio/coreml-tiny-sd",
                                 f"{hub_with_source}/studio/coreml-tiny-sd-palettized"]
    # other options: nothing of theirs was published
    other = client.post("/jobs/check", json={**body, "bits": 4}, headers=auth).json()
    assert other["already_published"] == [] and other["existing_job"] is None

    HfApi(endpoint=hub_with_source, token="alice-token").upload_file(
        path_or_fileobj=b"# a new commit\n", path_in_repo="NOTES.md", repo_id="studio/tiny-sd")
    newer = client.post("/jobs/check", json=body, headers=auth).json()
    assert newer["existing_job"] is None and newer["source_sha"] != job["source_sha"]
    (older,) = newer["already_published"]
    assert older["same_commit"] is False and older["source_sha"] == job["source_sha"]
    made = client.post("/jobs", json=body, headers=auth).json()
    assert made["created"] is True and made["already_published"][0]["job_id"] == job["id"]
