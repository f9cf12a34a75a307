"""Benchmark: the HTTP API under a burst of concurrent reads, then of concurrent job submissions and webhooks.

    python bench/api_load.py [--reads 300] [--writes 100] [--sources 5] [--timeout 10]

Serves ``coreml-publish api`` (a real process, with a token) on a fresh PostgreSQL database and a Redis db of
its own, against the project's dev Hub on loopback.  The reads phase sends ``--reads`` requests at once,
mixing every read route (``/jobs?limit=500``, ``/jobs/{id}``, ``/watches``, ``/metrics``, ``/ready``, ``/``,
``/ui/jobs/{id}``, ``/ui/watches``, ``/ui/workers``, ``/openapi.json``) over a database holding jobs, while
``/health`` is asked every 0.2 s.  The writes phase sends ``--writes`` ``POST /jobs`` and Hub webhook
deliveries at once, over ``--sources`` repos, each source several times with the same options.  Prints, per
phase: the answers by status, time-outs (requests unanswered after ``--timeout`` s), 503s without
``Retry-After``, p50 / p99 / max latency, the ``/health`` latencies during and after, and for writes the jobs
made per source and options (one each); then how long the API took to stop on SIGTERM.  Only loopback
traffic, bounded in count and time.  The suite runs the same phases (``tests/service/api/test_shedding.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BROKER = "redis://127.0.0.1:6379/15"  # flushed before and after: no other user of the project's dbs
TOKEN, SECRET = "load-token", "load-hook-secret"


@dataclass
class Phase:
    """What one burst got back."""
    name: str
    answers: Counter = field(default_factory=Counter)  # status (or exception name) -> count
    latencies: list[float] = field(default_factory=list)
    timeouts: int = 0
    busy_without_retry_after: int = 0
    server_errors: int = 0
    health: list[float | None] = field(default_factory=list)  # during the burst; None: no answer in time

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")

    def lines(self) -> list[str]:
        answered = [h for h in self.health if h is not None]
        return [f"{self.name}: {sum(self.answers.values())} requests, answers {dict(sorted(self.answers.items(), key=str))}",
                f"  time-outs {self.timeouts}, 5xx other than 503 {self.server_errors}, 503 without Retry-After "
                f"{self.busy_without_retry_after}",
                f"  latency p50 {self.percentile(0.5):.2f} s, p99 {self.percentile(0.99):.2f} s, "
                f"max {max(self.latencies, default=float('nan')):.2f} s",
                f"  /health during: {len(answered)}/{len(self.health)} answered, max "
                f"{max(answered, default=float('nan')):.3f} s"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    from service.db import upgrade

    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        from service.db import engine_for

        engine_for(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def push_sources(hub: str, root: Path, count: int) -> list[str]:
    """One tiny pipeline, pushed as ``studio/load-<i>`` (distinct repos, hence distinct jobs)."""
    from huggingface_hub import HfApi

    from workers.devtools.tiny import build_tiny_pipeline

    folder = build_tiny_pipeline(root / "tiny", style="sd2", seed=3)
    api = HfApi(endpoint=hub, token="alice-token")
    repos = [f"studio/load-{i}" for i in range(count)]
    for repo in repos:
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    return repos


def seed_jobs(database: str, hub: str, repos: list[str], count: int) -> list[int]:
    """``count`` recorded jobs (distinct options over the sources, none sent), so the listings have rows."""
    from service.db import session_scope
    from service.jobs import submit_job
    from workers.options import JobOptions
    from workers.source.resolve import resolve_source

    sources = {repo: resolve_source(repo, endpoint=hub) for repo in repos}
    ids = []
    with session_scope(database) as session:
        for i in range(count):
            source = sources[repos[i % len(repos)]]
            options = JobOptions(namespace="seeded", packages_only=True, bits=(8, 6, 4, 2, 1)[i // len(repos) % 5],
                                 chunk_unet=bool(i // (5 * len(repos)) % 2))
            submitted = submit_job(session, source_repo=source.repo_id, source_sha=source.sha, options=options,
                                   source=source.to_dict())
            ids.append(submitted.job.id)
    return ids


def watch_sources(database: str, repos: list[str]) -> None:
    """Watch every source with the options the writes phase submits, so its webhooks start the same jobs."""
    from service.db import session_scope
    from service.watch import add_watch
    from workers.options import JobOptions

    with session_scope(database) as session:
        for repo in repos:
            add_watch(session, repo_id=repo, options=JobOptions(namespace="studio", packages_only=True))


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """``coreml-publish api`` on a free port until the block ends; prints how long SIGTERM took to stop it."""
    import httpx

    port = free_port()
    process = subprocess.Popen(["coreml-publish", "api", "--host", "127.0.0.1", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/health", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the API did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield base
    finally:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
            serving.stopped_in = time.monotonic() - started
        except subprocess.TimeoutExpired:
            serving.stopped_in = None
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


serving.stopped_in = None


async def burst(base: str, name: str, requests: list[tuple[str, str, dict | None, dict]], timeout: float) -> Phase:
    """Send every request at once (one connection each) while ``/health`` is polled; collect the answers."""
    import httpx

    phase = Phase(name)
    limits = httpx.Limits(max_connections=len(requests) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        async def one(method: str, path: str, body: dict | None, headers: dict) -> None:
            started = time.monotonic()
            try:
                response = await client.request(method, path, json=body, headers=headers)
            except httpx.TimeoutException:
                phase.timeouts += 1
                phase.answers["time-out"] += 1
                return
            except httpx.HTTPError as e:
                phase.answers[e.__class__.__name__] += 1
                return
            phase.latencies.append(time.monotonic() - started)
            phase.answers[response.status_code] += 1
            if response.status_code == 503 and not response.headers.get("retry-after"):
                phase.busy_without_retry_after += 1
            if response.status_code >= 500 and response.status_code != 503:
                phase.server_errors += 1

        async def health(stop: asyncio.Event) -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    (await client.get("/health", timeout=2)).raise_for_status()
                    phase.health.append(time.monotonic() - started)
                except httpx.HTTPError:
                    phase.health.append(None)
                await asyncio.sleep(0.2)

        stop = asyncio.Event()
        poller = asyncio.create_task(health(stop))
        await asyncio.gather(*(one(*request) for request in requests))
        stop.set()
        await poller
    return phase


def read_requests(count: int, job_ids: list[int]) -> list[tuple[str, str, None, dict]]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    some = job_ids[len(job_ids) // 2] if job_ids else 1
    routes = ["/jobs?limit=500", f"/jobs/{some}", "/watches", "/metrics", "/ready", "/", f"/ui/jobs/{some}",
              "/ui/watches", "/ui/workers", "/openapi.json", "/jobs/999999"]
    return [("GET", routes[i % len(routes)], None, auth) for i in range(count)]


def write_requests(count: int, repos: list[str], hub: str) -> list[tuple[str, str, dict, dict]]:
    """Alternately ``POST /jobs`` (same options for a repo every time) and a webhook for the repo's main commit."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub, token="alice-token")  # explicit: huggingface_hub reads HF_ENDPOINT once, at import
    heads = {repo: api.model_info(repo).sha for repo in repos}
    requests = []
    for i in range(count):
        repo = repos[i % len(repos)]
        if i % 2 == 0:
            requests.append(("POST", "/jobs", {"repo": repo, "namespace": "studio", "packages_only": True},
                             {"Authorization": f"Bearer {TOKEN}"}))
        else:
            requests.append(("POST", "/webhooks/hub", {
                "event": {"action": "update", "scope": "repo.content"}, "repo": {"type": "model", "name": repo},
                "updatedRefs": [{"ref": "refs/heads/main", "oldSha": None, "newSha": heads[repo]}]},
                {"X-Webhook-Secret": SECRET}))
    return requests


def health_after(base: str, probes: int = 3) -> list[float | None]:
    """``/health`` asked ``probes`` times, a second apart, once a burst is over."""
    import httpx

    latencies: list[float | None] = []
    for _ in range(probes):
        started = time.monotonic()
        try:
            httpx.get(base + "/health", timeout=5).raise_for_status()
            latencies.append(time.monotonic() - started)
        except httpx.HTTPError:
            latencies.append(None)
        time.sleep(1)
    return latencies


def jobs_per_source(database: str) -> Counter:
    """Jobs recorded per (source repo, commit, options): each should be 1."""
    from service.db import session_scope
    from service.jobs import list_jobs

    with session_scope(database) as session:
        return Counter((j.source_repo, j.source_sha, json.dumps(j.options, sort_keys=True))
                       for j in list_jobs(session, limit=10_000))


def run(reads: int, writes: int, sources: int, timeout: float, seeded: int = 100) -> dict:
    """Both phases against a fresh world; returns {"reads": Phase, "writes": Phase, "jobs": Counter,
    "health_after": [latencies], "stopped_in": seconds or None}."""
    import redis

    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store

    root = Path(tempfile.mkdtemp(prefix="coreml-publish-load-"))
    saved = dict(os.environ)  # given back afterwards: a caller's (a test run's) environment is not changed
    broker = redis.Redis.from_url(BROKER)
    broker.flushdb()
    try:
        Store(root / "hub").add_token("alice", token="alice-token", orgs=["studio"])
        with running_devhub(root / "hub") as hub, postgres_database(f"coreml_publish_load_{os.getpid()}") as db:
            os.environ.update({"HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token"})
            repos = push_sources(hub, root, sources)
            job_ids = seed_jobs(db, hub, repos, seeded)
            watch_sources(db, repos)
            env = {**os.environ, "COREML_PUBLISH_DATABASE_URL": db, "COREML_PUBLISH_BROKER_URL": BROKER,
                   "COREML_PUBLISH_API_TOKEN": TOKEN, "COREML_PUBLISH_WEBHOOK_SECRET": SECRET,
                   "COREML_PUBLISH_HUB_ENDPOINT": hub, "COREML_PUBLISH_ARTIFACT_STORE": str(root / "artifacts")}
            with serving(env, root / "api.log") as base:
                result = {"reads": asyncio.run(burst(base, "reads", read_requests(reads, job_ids), timeout))}
                result["writes"] = asyncio.run(burst(base, "writes", write_requests(writes, repos, hub), timeout))
                result["health_after"] = health_after(base)
            result["stopped_in"] = serving.stopped_in
            result["jobs"] = Counter({key: n for key, n in jobs_per_source(db).items() if '"seeded"' not in key[2]})
            result["log"] = (root / "api.log").read_text(errors="replace")
            return result
    finally:
        os.environ.clear()
        os.environ.update(saved)
        broker.flushdb()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--sources", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take")
    args = parser.parse_args()
    result = run(args.reads, args.writes, args.sources, args.timeout)
    for name in ("reads", "writes"):
        print("\n".join(result[name].lines()))
    after = result["health_after"]
    print(f"/health after: {sum(h is not None for h in after)}/{len(after)} answered")
    jobs = result["jobs"]
    print(f"jobs made by the writes: {len(jobs)} (source, options) with {sorted(set(jobs.values()))} job(s) each")
    stopped = result["stopped_in"]
    print(f"SIGTERM stopped the API in {stopped:.1f} s" if stopped is not None else "the API ignored SIGTERM")


if __name__ == "__main__":
    main()
