"""Live progress of running stages: the conversion engine's progress written on the stage's result (at most once a
second, never raising), with an estimate of the time left from past runs of the same stage on models of the same
size class, or extrapolated from the time so far when there are none."""

from __future__ import annotations

import logging
import statistics
import time
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import session_scope
from service.models import StageResult, utcnow

log = logging.getLogger(__name__)
HISTORY = 10  # past runs an estimate looks at, newest first


def estimate_remaining(*, elapsed: float, fraction: float, history: list[float]) -> float | None:
    """Seconds a stage has left: the median duration of ``history`` (past runs like it) minus ``elapsed``; beyond
    that, or without history, ``elapsed`` extrapolated by ``fraction``; None with nothing to go on."""
    if fraction >= 1.0:
        return 0.0
    if history:
        expected = statistics.median(history)
        if elapsed < expected:
            return expected - elapsed
    if fraction > 0 and elapsed > 0:
        return elapsed * (1.0 - fraction) / fraction
    return None


def past_durations(session: Session, *, stage: str, part: str, model: str, exclude: int | None = None,
                   limit: int = HISTORY) -> list[float]:
    """Durations of the newest succeeded runs of ``stage`` (same ``part``) on models of the size class ``model``."""
    rows = session.execute(
        select(StageResult.duration, StageResult.progress)
        .where(StageResult.stage == stage, StageResult.part == part, StageResult.state == "succeeded",
               StageResult.duration.is_not(None), StageResult.progress.is_not(None), StageResult.id != (exclude or 0))
        .order_by(StageResult.id.desc()).limit(20 * limit))
    found = [duration for duration, progress in rows
             if isinstance(progress, dict) and progress.get("model") == model]
    return found[:limit]


def finished(progress: dict | None, *, succeeded: bool) -> dict | None:
    """A stage's progress once it ended: all steps done when it succeeded; where it stopped otherwise."""
    if not progress:
        return progress
    now = utcnow().isoformat()
    if succeeded:
        total = progress.get("total") or progress.get("done") or 0
        return {**progress, "done": total, "fraction": 1.0, "eta_seconds": 0.0, "counter": None, "updated_at": now}
    return {**progress, "eta_seconds": None, "updated_at": now}


class ProgressRecorder:
    """Writes a running stage's latest progress on its result, at most every ``interval`` seconds (the last
    report is kept and written with the next one that is due); a database that does not answer costs a log line."""

    def __init__(self, database_url: str, *, job_id: int, stage: str, part: str, interval: float = 1.0) -> None:
        self.database_url, self.job_id, self.stage, self.part, self.interval = (
            database_url, job_id, stage, part, interval)
        self._last_write = float("-inf")
        self._result: tuple[int, datetime | None] | None = None  # (result id, started at)
        self._history: list[float] | None = None

    def __call__(self, progress: dict, *, force: bool = False) -> bool:
        """Record ``progress`` (a ``workers.progress.Progress`` as a dict) if due; returns whether it was written."""
        now = time.monotonic()
        if not force and now - self._last_write < self.interval:
            return False
        self._last_write = now
        try:
            with session_scope(self.database_url) as session:
                self._write(session, progress)
            return True
        except Exception as e:  # progress must never fail the stage
            log.warning("job %s: progress not recorded (%s)", self.job_id, e.__class__.__name__)
            return False

    def _write(self, session: Session, progress: dict) -> None:
        if self._result is None:
            row = session.execute(select(StageResult.id, StageResult.started_at).where(
                StageResult.job_id == self.job_id, StageResult.stage == self.stage,
                StageResult.part == self.part)).first()
            if row is None:
                return
            self._result = (row[0], row[1])
        result_id, started = self._result
        if self._history is None:
            self._history = past_durations(session, stage=self.stage, part=self.part,
                                           model=progress.get("model", ""), exclude=result_id)
        now = utcnow()
        if started is not None and started.tzinfo is None:  # SQLite returns timestamps without their zone
            started = started.replace(tzinfo=timezone.utc)
        elapsed = (now - started).total_seconds() if started is not None else 0.0
        eta = estimate_remaining(elapsed=elapsed, fraction=float(progress.get("fraction", 0.0)),
                                 history=self._history)
        data = {**progress, "eta_seconds": None if eta is None else round(eta, 1), "updated_at": now.isoformat()}
        session.execute(update(StageResult).where(StageResult.id == result_id, StageResult.state == "running")
                        .values(progress=data).execution_options(synchronize_session=False))
