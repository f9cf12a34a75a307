"""Watching repos: the sweep, Hub webhooks end to end through the dev Hub, and their refusals."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from huggingface_hub import CommitOperationAdd, HfApi

from service import jobs as jobs_module
from service.api import create_api
from service.db import session_scope
from service.errors import JobError, NotWatchedError, OptionsError
from workers.options import JobOptions
from service.jobs import list_jobs
from service.settings import Settings
from service.watch import add_watch, get_watch, set_paused, sweep, watch_rows
from workers.devtools.tiny import build_tiny_pipeline

NIGHT = datetime(2026, 11, 27, 3, 0, tzinfo=timezone.utc)


@pytest.fixture
def world(devhub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A dev Hub with studio/tiny-sd, a migrated SQLite database, and a recorder instead of the queue."""
    from service.db import upgrade

    url, _ = devhub
    api = HfApi(endpoint=url, token="alice-token")
    api.create_repo("studio/tiny-sd")
    api.upload_folder(repo_id="studio/tiny-sd", folder_path=str(build_tiny_pipeline(tmp_path / "tiny", seed=8)))
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database)
    sent: list[int] = []
    monkeypatch.setattr("service.submit.enqueue", lambda job_id, parts, **_: sent.append(job_id) or "task")
    monkeypatch.setenv("HF_TOKEN", "alice-token")
    settings = Settings(database_url=database, hub_endpoint=url, default_namespace="studio", api_token="api",
                        webhook_secret="hook-secret", broker_url="redis://127.0.0.1:1/0")
    with session_scope(database) as session:
        add_watch(session, repo_id="studio/tiny-sd", options=JobOptions(namespace="studio", packages_only=True))
    return {"api": api, "settings": settings, "sent": sent, "db": database, "hub": url}


def _jobs(world) -> list[tuple[str, str]]:
    with session_scope(world["db"]) as session:
        return [(j.trigger, j.source_sha) for j in reversed(list_jobs(session))]


def test_sweep_submits_once_and_again_only_for_a_new_toolchain(world, monkeypatch: pytest.MonkeyPatch) -> None:
    head = world["api"].model_info("studio/tiny-sd").sha
    calls: list[str] = []

    def counting_head(repo: str) -> str:
        calls.append(repo)
        return world["api"].model_info(repo).sha

    first = sweep(now=NIGHT, settings=world["settings"], get_head=counting_head)
    assert [(r.outcome, r.sha) for r in first] == [("submitted", head)]
    second = sweep(now=NIGHT, settings=world["settings"], get_head=counting_head)
    assert [r.outcome for r in second] == ["unchanged"] and len(calls) == 2  # one Hub call per repo and sweep
    assert sweep(now=NIGHT + timedelta(hours=1), due_only=True, settings=world["settings"]) == []  # not due yet
    monkeypatch.setattr(jobs_module, "toolchain_fingerprint", lambda: "coreml-publisher 9.9; coremltools 10.0")
    third = sweep(now=NIGHT + timedelta(days=1), due_only=True, settings=world["settings"])
    assert [r.outcome for r in third] == ["submitted"]
    assert _jobs(world) == [("nightly", head), ("nightly", head)]
    assert len(world["sent"]) == 2
    with session_scope(world["db"]) as session:
        row = watch_rows(session)[0]
        assert row["last_seen_sha"] == head and row["next_check_at"].startswith("2026-11-29T03:00")


def test_two_schedulers_sweeping_at_the_same_minute_submit_one_job(world) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: sweep(now=NIGHT, settings=world["settings"]), range(2)))
    assert sorted(r.outcome for sweep_results in results for r in sweep_results) == ["submitted", "unchanged"]
    assert len(_jobs(world)) == 1 and len(world["sent"]) == 1


def test_a_deleted_source_is_marked_not_retried(world) -> None:
    world["api"].delete_repo("studio/tiny-sd")
    assert [r.outcome for r in sweep(now=NIGHT, settings=world["settings"])] == ["gone"]
    assert sweep(now=NIGHT + timedelta(days=1), settings=world["settings"]) == []  # skipped from now on
    with session_scope(world["db"]) as session:
        watch = get_watch(session, "studio/tiny-sd")
        assert watch.state == "gone" and "not found" in watch.reason


def test_webhook_from_a_commit_starts_exactly_one_job(world) -> None:
    """The dev Hub fires its webhook at the API on commit; the sweep afterwards submits nothing."""
    import uvicorn
    import threading

    app = create_api(world["settings"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        from urllib.request import Request, urlopen

        body = json.dumps({"url": f"http://127.0.0.1:{port}/webhooks/hub", "secret": "hook-secret"}).encode()
        urlopen(Request(f"{world['hub']}/_devhub/webhooks", body, {"Content-Type": "application/json",
                                                                  "Authorization": "Bearer alice-token"}))
        commit = world["api"].create_commit("studio/tiny-sd", [CommitOperationAdd("notes.txt", b"new")],
                                            commit_message="update")
        deadline = time.monotonic() + 30
        while not _jobs(world) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _jobs(world) == [("webhook", commit.oid)]
        # the Hub retries deliveries: a replay of the same payload makes no second job
        replay = {"event": {"action": "update", "scope": "repo.content"},
                  "repo": {"type": "model", "name": "studio/tiny-sd"},
                  "updatedRefs": [{"ref": "refs/heads/main", "oldSha": None, "newSha": commit.oid}]}
        response = TestClient(app).post("/webhooks/hub", json=replay, headers={"X-Webhook-Secret": "hook-secret"})
        assert response.status_code == 202 and response.json()["created"] is False
        assert [r.outcome for r in sweep(now=NIGHT, settings=world["settings"])] == ["unchanged"]
        assert len(_jobs(world)) == 1 and len(world["sent"]) == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("headers, body, status, text", [
    ({}, {}, 401, "missing X-Webhook-Secret"),
    ({"X-Webhook-Secret": "nope"}, {}, 403, "wrong X-Webhook-Secret"),
    ({"X-Webhook-Secret": "hook-secret"}, b"{not json", 400, "malformed payload"),
    ({"X-Webhook-Secret": "hook-secret"}, {"event": {"scope": "repo"}, "repo": {"name": "studio/tiny-sd"}}, 200,
     "scope repo does not change files"),
    ({"X-Webhook-Secret": "hook-secret"}, {"event": {"scope": "repo.content"}, "repo": {"name": "studio/tiny-sd"},
                                           "updatedRefs": [{"ref": "refs/heads/dev", "newSha": "a" * 40}]}, 200,
     "no new commit on main"),
    ({"X-Webhook-Secret": "hook-secret"}, {"event": {"scope": "repo.content"}, "repo": {"name": "other/model"},
                                           "updatedRefs": [{"ref": "refs/heads/main", "newSha": "a" * 40}]}, 200,
     "other/model is not watched"),
    ({"X-Webhook-Secret": "hook-secret"}, b"x" * 70000, 413, "payload larger"),
])
def test_webhook_refusals(world, headers: dict, body, status: int, text: str) -> None:
    client = TestClient(create_api(world["settings"]))
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/webhooks/hub", content=content, headers={"Content-Type": "application/json", **headers})
    assert response.status_code == status and text in json.dumps(response.json())
    assert _jobs(world) == []


def test_paused_watches_are_ignored_and_the_list_is_managed(world) -> None:
    with session_scope(world["db"]) as session:
        set_paused(session, "studio/tiny-sd", True)
        with pytest.raises(JobError, match="already watched"):
            add_watch(session, repo_id="studio/tiny-sd", options=JobOptions(namespace="studio"))
        with pytest.raises(NotWatchedError):
            get_watch(session, "studio/none")
    assert sweep(now=NIGHT, settings=world["settings"]) == []
    client = TestClient(create_api(world["settings"]))
    auth = {"Authorization": "Bearer api"}
    assert client.post("/watches/studio/tiny-sd/resume", headers=auth).json()["state"] == "active"
    assert client.post("/watches", json={"repo": "studio/other"}).status_code == 401
    assert client.post("/watches", json={"repo": "studio/other"}, headers=auth).status_code == 201
    assert [w["repo_id"] for w in client.get("/watches", headers=auth).json()] == ["studio/other", "studio/tiny-sd"]
    assert client.delete("/watches/studio/other", headers=auth).status_code == 200
    assert client.delete("/watches/studio/other", headers=auth).status_code == 404


def test_jobs_show_their_trigger(world, tmp_path: Path) -> None:
    from tests.service.cli.test_cli import run

    sweep(now=NIGHT, settings=world["settings"])
    listing = run("jobs", env={"COREML_PUBLISH_DATABASE_URL": world["db"], "COLUMNS": "200"})
    assert "nightly" in listing.stdout


def test_a_new_commit_to_a_watched_vae_is_a_new_job_pinned_to_that_commit(world, tmp_path: Path) -> None:
    from service.submit import create_job
    from service.watch import remove_watch

    api = world["api"]
    api.create_repo("studio/tiny-vae")
    api.upload_folder(repo_id="studio/tiny-vae",
                      folder_path=str(build_tiny_pipeline(tmp_path / "other", seed=9) / "vae"))
    first_vae = api.model_info("studio/tiny-vae").sha
    options = JobOptions(namespace="studio", packages_only=True, vae="studio/tiny-vae")
    with session_scope(world["db"]) as session:
        remove_watch(session, "studio/tiny-sd")
        add_watch(session, repo_id="studio/tiny-sd", options=options)
    assert [r.outcome for r in sweep(now=NIGHT, settings=world["settings"])] == ["submitted"]
    assert [r.outcome for r in sweep(now=NIGHT, settings=world["settings"])] == ["unchanged"]
    # the same request by hand finds that job: it converts the same commits
    assert not create_job(source_repo="studio/tiny-sd", options=options, settings=world["settings"]).created
    api.upload_file(repo_id="studio/tiny-vae", path_or_fileobj=b"fixed", path_in_repo="NOTES.md")
    second_vae = api.model_info("studio/tiny-vae").sha
    assert [r.outcome for r in sweep(now=NIGHT, settings=world["settings"])] == ["submitted"]
    with session_scope(world["db"]) as session:
        recorded = [(j.options["vae"], j.options["vae_sha"]) for j in reversed(list_jobs(session))]
    assert recorded == [("studio/tiny-vae", first_vae), ("studio/tiny-vae", second_vae)]
    with pytest.raises(OptionsError, match="is not the commit sha of a --vae repo"):
        JobOptions(namespace="studio", vae_sha=first_vae)
    api.delete_repo("studio/tiny-vae")
    assert [r.detail for r in sweep(now=NIGHT, settings=world["settings"])] == [
        "--vae studio/tiny-vae is not found: deleted, renamed or made private"]


def test_a_new_commit_to_a_watched_lora_is_a_new_job_pinned_to_that_commit(world, tmp_path: Path) -> None:
    from service.watch import remove_watch
    from workers.devtools.lora import write_lora

    api = world["api"]
    api.create_repo("studio/style")
    write_lora(build_tiny_pipeline(tmp_path / "base", seed=9), tmp_path / "style" / "pytorch_lora_weights.safetensors")
    api.upload_folder(repo_id="studio/style", folder_path=str(tmp_path / "style"))
    first = api.model_info("studio/style").sha
    options = JobOptions.from_user(namespace="studio", packages_only=True, loras=["studio/style:0.5"])
    with session_scope(world["db"]) as session:
        remove_watch(session, "studio/tiny-sd")
        add_watch(session, repo_id="studio/tiny-sd", options=options)
    assert [r.outcome for r in sweep(now=NIGHT, settings=world["settings"])] == ["submitted"]
    assert [r.outcome for r in sweep(now=NIGHT, settings=world["settings"])] == ["unchanged"]
    api.upload_file(repo_id="studio/style", path_or_fileobj=b"v2", path_in_repo="NOTES.md")
    second = api.model_info("studio/style").sha
    assert [r.outcome for r in sweep(now=NIGHT, settings=world["settings"])] == ["submitted"]
    with session_scope(world["db"]) as session:
        recorded = [(j.options["loras"], j.options["lora_shas"]) for j in reversed(list_jobs(session))]
    assert recorded == [(["studio/style:0.5"], [first]), (["studio/style:0.5"], [second])]
    api.delete_repo("studio/style")
    assert [r.detail for r in sweep(now=NIGHT, settings=world["settings"])] == [
        "--lora studio/style is not found: deleted, renamed or made private"]
