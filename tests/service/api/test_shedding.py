"""Load shedding: a burst beyond the API's bound is answered 503 with Retry-After, never left to time out; and
the real API under 300 concurrent reads, then 100 concurrent submissions and webhooks (bench/api_load.py)."""

from __future__ import annotations

import asyncio

import pytest

from service.api.shedding import LoadShedder


def _shed(paths: list[str], *, limit: int, wait: float, hold: float) -> list[tuple[int, dict]]:
    """Send requests for ``paths`` at once through LoadShedder around an app that takes ``hold`` seconds."""
    async def slow_app(scope, receive, send) -> None:
        await asyncio.sleep(hold)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    shedder = LoadShedder(slow_app, limit=limit, wait=wait)

    async def one(path: str) -> tuple[int, dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await shedder({"type": "http", "path": path, "method": "GET", "headers": []}, receive, send)
        start = sent[0]
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}

    async def burst() -> list[tuple[int, dict]]:
        return await asyncio.gather(*(one(p) for p in paths))

    return asyncio.run(burst())


def test_requests_beyond_the_bound_wait_then_get_503_with_retry_after() -> None:
    answers = _shed(["/jobs"] * 6, limit=2, wait=0.3, hold=1.0)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 200, 503, 503, 503, 503]
    assert all(headers.get("retry-after") == "2" for status, headers in answers if status == 503)


def test_a_request_that_gets_a_slot_in_time_is_served() -> None:
    assert sorted(s for s, _ in _shed(["/jobs"] * 4, limit=2, wait=2.0, hold=0.2)) == [200, 200, 200, 200]


def test_health_is_never_shed() -> None:
    answers = _shed(["/jobs"] * 3 + ["/health"] * 3, limit=1, wait=0.1, hold=0.5)
    assert [s for s, _ in answers[3:]] == [200, 200, 200]


@pytest.mark.slow
def test_the_api_answers_every_request_of_a_burst_of_reads_then_of_writes() -> None:
    """Before the fix, 300 concurrent reads left every API thread parked (the workers page's broadcasts waiting
    on each other for broker connections), every later request, /health included, timed out, and SIGTERM did
    not stop the process."""
    from bench.api_load import run

    result = run(reads=300, writes=100, sources=5, timeout=10.0, seeded=60)
    for name in ("reads", "writes"):
        phase = result[name]
        summary = "\n".join(phase.lines()) + "\n" + result["log"][-2000:]
        assert phase.timeouts == 0 and phase.server_errors == 0 and phase.busy_without_retry_after == 0, summary
        assert set(phase.answers) <= {200, 201, 202, 404, 503}, summary
        assert phase.health and all(h is not None for h in phase.health), summary
    assert result["reads"].answers[200] > 0 and result["writes"].answers[202] > 0
    assert all(h is not None for h in result["health_after"])
    assert len(result["jobs"]) == 5 and set(result["jobs"].values()) == {1}, result["jobs"]
    assert result["stopped_in"] is not None and result["stopped_in"] < 15
