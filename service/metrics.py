"""Prometheus metrics, computed when scraped from the job database and the broker.

Every host's work is recorded in the database, so one scrape of the API sees the whole service: jobs by
state, stage durations (a histogram per stage), stages that failed validation, Hub requests retried while
publishing, and the depth of each Celery queue.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from service.broker import QUEUES
from service.db import session_scope
from service.models import Job, JobState, StageResult
from service.settings import Settings

STAGE_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)  # seconds; a full-size run: minutes
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _ServiceCollector:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator:
        with session_scope(self.settings.database_url) as session:
            states = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            finished = session.execute(select(StageResult.stage, StageResult.duration)
                                       .where(StageResult.duration.is_not(None))).all()
            failed = session.execute(select(StageResult.error, StageResult.figures)
                                     .where(StageResult.state == "failed")).all()
            published = session.scalars(select(StageResult.figures).where(StageResult.stage == "publish")).all()
        jobs = GaugeMetricFamily("coreml_publish_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], states.get(state.value, 0))
        yield jobs
        durations = HistogramMetricFamily("coreml_publish_stage_duration_seconds",
                                          "Duration of finished stage runs, per stage.", labels=["stage"])
        for stage in sorted({s for s, _ in finished}):
            values = [d for s, d in finished if s == stage]
            buckets = [(f"{bound:g}", sum(1 for d in values if d <= bound)) for bound in STAGE_BUCKETS]
            durations.add_metric([stage], buckets + [("+Inf", len(values))], sum(values))
        yield durations
        yield CounterMetricFamily("coreml_publish_validation_failures", "Packages that failed validation (below "
                                  "a bar, or a missing weight), over every failed stage run.",
                                  value=sum(_failed_packages(error, figures) for error, figures in failed))
        yield CounterMetricFamily("coreml_publish_hub_retries", "Hub requests retried while publishing.",
                                  value=sum(int(repo.get("hub_retries", 0)) for figures in published if figures
                                            for repo in figures.values() if isinstance(repo, dict)))
        depth = queue_depths(self.settings.broker_url)
        yield GaugeMetricFamily("coreml_publish_broker_up", "Whether the broker answered this scrape.",
                                value=int(depth is not None))
        queued = GaugeMetricFamily("coreml_publish_queue_depth", "Tasks waiting in each queue.", labels=["queue"])
        for queue, count in (depth or {}).items():
            queued.add_metric([queue], count)
        yield queued


def _failed_packages(error: str | None, figures: dict | None) -> int:
    """The packages a failed stage run names as failed in its figures (one when only its error says so)."""
    named = sum(1 for value in (figures or {}).values() if isinstance(value, dict) and value.get("status") == "failed")
    return named or int("validation failed" in (error or ""))


def queue_depths(broker_url: str) -> dict[str, int] | None:
    """Messages waiting per queue (Celery's Redis transport keeps each queue as a list); None when the
    broker does not answer."""
    try:
        import redis

        client = redis.Redis.from_url(broker_url, socket_timeout=2)
        return {queue: int(client.llen(queue)) for queue in QUEUES}
    except Exception:  # a scrape reports; it does not raise
        return None


def render(settings: Settings) -> bytes:
    """The metrics in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceCollector(settings))
    return generate_latest(registry)
