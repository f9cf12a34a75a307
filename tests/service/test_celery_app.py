"""The Celery app's broadcasts: many threads asking at once all get an answer (none waits for ever)."""

from __future__ import annotations

import threading
import time

import pytest

from service.celery_app import active_queues

pytestmark = pytest.mark.slow
BROKER = "redis://127.0.0.1:6379/8"  # its own db; no worker listens here


def test_more_concurrent_broadcasts_than_pooled_connections_all_return() -> None:
    """Each of Celery's broadcasts holds a pooled connection while taking another from the same pool (10):
    twenty at once used to wait on each other for ever."""
    answers: list[object] = []
    together = threading.Barrier(40)

    def ask() -> None:
        together.wait()
        try:
            answers.append(active_queues(BROKER, timeout=0.5, max_age=0.0))
        except TimeoutError as e:  # no earlier answer to share while another broadcast holds the turn
            answers.append(e)

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(40)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a broadcast never returned"
    assert len(answers) == 40 and {} in answers


def test_a_recent_answer_is_shared() -> None:
    first = active_queues(BROKER, timeout=0.3, max_age=60.0)
    assert active_queues(BROKER, timeout=0.3, max_age=60.0) is first


def test_sending_a_job_ends_without_a_traceback() -> None:
    """Sending a chain with a chord used to leave result subscriptions that Celery dropped while the
    interpreter shut down, printing ``ImportError: sys.meta_path is None`` after ``submit``."""
    import subprocess
    import sys

    import redis

    script = ("from service.settings import Settings\nfrom service.submit import enqueue\n"
              f"print(enqueue(7, ['unet-original', 'text_encoder'], packages_only=True, "
              f"settings=Settings(broker_url={BROKER!r})))\n")
    try:
        for _ in range(3):
            sent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
            assert sent.returncode == 0 and len(sent.stdout.strip()) == 36, sent.stderr
            assert "Traceback" not in sent.stderr and "Exception ignored" not in sent.stderr, sent.stderr
    finally:
        redis.Redis.from_url(BROKER).flushdb()
