"""The Celery app: broker, reliability settings and routing of stage tasks to queues.

Queues: ``default`` (merge, package), ``convert`` (fetch, convert: any OS with coremltools and torch),
``macos`` (compile: needs ``xcrun coremlcompiler``), ``publish``.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache

from celery import Celery
from celery.backends.redis import RedisBackend
from celery.schedules import crontab

from service.settings import Settings, get_settings


class StageResults(RedisBackend):
    """Celery's Redis result backend, kept for what needs it (chord counters, stage return values), minus the
    subscriptions a sender makes to the result channels of the tasks it sends (and of a chord's parts):
    nothing here waits on a task's result, and each subscription was dropped from ``AsyncResult.__del__``
    while the interpreter shut down, reconnecting to Redis and printing a traceback (``sys.meta_path is
    None``) at the end of ``submit`` and ``reap``."""

    def on_task_call(self, producer, task_id) -> None:
        return None

    def add_pending_result(self, result, weak: bool = False, start_drainer: bool = True):
        return result


def result_backend(broker_url: str) -> str:
    """The result backend's URL: :class:`StageResults` on the broker's Redis, Celery's own for other brokers."""
    from service.broker import is_redis

    if is_redis(broker_url):
        return f"{__name__}:StageResults+{broker_url}"
    return broker_url


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("coreml_publisher", broker=settings.broker_url, backend=result_backend(settings.broker_url),
                 include=["service.tasks"])
    app.conf.update(
        task_default_queue="default",
        task_serializer="json", result_serializer="json", accept_content=["json"],
        # a task is acknowledged after it ran, and redelivered if its worker dies: stages are idempotent
        task_acks_late=True, task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.stage_time_limit, task_soft_time_limit=max(60, settings.stage_time_limit - 60),
        broker_transport_options={"visibility_timeout": settings.stage_time_limit + 3600},
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        timezone="UTC",
        beat_schedule={"nightly-sweep": {"task": "coreml_publisher.sweep", "options": {"queue": "default"},
                                         "schedule": crontab(hour=int(settings.sweep_time.split(":")[0]),
                                                             minute=int(settings.sweep_time.split(":")[1]))},
                       "reaper": {"task": "coreml_publisher.reap", "schedule": 60.0,
                                  "options": {"queue": "default", "expires": 55}}},
        task_routes={"coreml_publisher.fetch": {"queue": "convert"}, "coreml_publisher.convert": {"queue": "convert"},
                     "coreml_publisher.merge": {"queue": "default"}, "coreml_publisher.package": {"queue": "default"},
                     "coreml_publisher.compile": {"queue": "macos"}, "coreml_publisher.publish": {"queue": "publish"},
                     "coreml_publisher.sweep": {"queue": "default"}, "coreml_publisher.reap": {"queue": "default"}},
    )
    return app


app = make_app()


@lru_cache(maxsize=4)
def app_for(broker_url: str) -> Celery:
    """The Celery app bound to ``broker_url``: this process's own, or one made for it (kept)."""
    return app if broker_url == app.conf.broker_url else make_app(get_settings().model_copy(
        update={"broker_url": broker_url}))


def stage_signature(stage: str, *args, settings: Settings | None = None):
    """The signature of a stage's task by name (``coreml_publisher.<stage>``, see ``service.tasks``), bound to
    the broker of ``settings`` (default: this process's)."""
    sender = app_for(settings.broker_url) if settings is not None else app
    return sender.signature(f"coreml_publisher.{stage}", args=args, immutable=True)


_BROADCAST = threading.Lock()
_ANSWERS: dict[str, tuple[float, dict]] = {}


def active_queues(broker_url: str, *, timeout: float = 1.0, max_age: float = 0.0) -> dict[str, list[dict]]:
    """Each worker that answers a broadcast within ``timeout`` seconds, with the queues it consumes.

    One broadcast at a time per process, and an answer younger than ``max_age`` seconds is shared: Celery's
    broadcast takes a connection from the app's pool (``broker_pool_limit``, 10) and, while holding it, a
    producer whose connection comes from the same pool, so ten broadcasts at once each hold one connection
    and wait for ever for another.  A caller that cannot get its turn within ``timeout`` gets the last
    answer (or raises TimeoutError when there is none).
    """
    answered = _ANSWERS.get(broker_url)
    if answered is not None and time.monotonic() - answered[0] < max_age:
        return answered[1]
    if not _BROADCAST.acquire(timeout=timeout):
        if answered is None:
            raise TimeoutError("another broadcast to the workers is under way")
        return answered[1]
    try:
        answered = _ANSWERS.get(broker_url)
        if answered is not None and time.monotonic() - answered[0] < max_age:
            return answered[1]
        replies = app_for(broker_url).control.inspect(timeout=timeout).active_queues() or {}
        _ANSWERS[broker_url] = (time.monotonic(), replies)
        return replies
    finally:
        _BROADCAST.release()


def macos_worker_alive(timeout: float = 1.0) -> bool:
    """Whether any running worker consumes the ``macos`` queue."""
    replies = active_queues(app.conf.broker_url, timeout=timeout)
    return any(q.get("name") == "macos" for queues in replies.values() for q in queues)


def detect_queues() -> list[str]:
    """The queues this host can serve: always default and publish; convert with coremltools and torch;
    macos with ``xcrun coremlcompiler``."""
    import importlib.util

    from workers.package.compile import find_compiler

    queues = ["default", "publish"]
    if all(importlib.util.find_spec(m) is not None for m in ("coremltools", "torch", "diffusers")):
        queues.append("convert")
    if find_compiler() is not None:
        queues.append("macos")
    return queues
