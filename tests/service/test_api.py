"""The API's shape: typed schemas in the OpenAPI document, the webhook's Hub and database work off the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
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
