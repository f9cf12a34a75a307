"""Live progress of a job's running stages while it is followed (``submit --wait``/``--local``, ``logs --follow``):
a bar per stage on a terminal's stderr, plain lines now and then otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from service.cli.output import console

PLAIN_EVERY = 15.0  # seconds between plain lines of a stage whose step has not changed


@dataclass(frozen=True)
class StageRow:
    """A stage of the followed job, as read for the display."""

    id: int
    stage: str
    part: str
    state: str
    started_at: datetime | None
    duration: float | None
    progress: dict | None


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def clock(seconds: float) -> str:
    """``1:05`` or ``1:02:05``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def elapsed(row: StageRow, now: datetime) -> float:
    """Seconds the stage has run (its whole duration once it ended)."""
    if row.state != "running" and row.duration is not None:
        return row.duration
    started = _aware(row.started_at)
    return (now - started).total_seconds() if started is not None else 0.0


def remaining(progress: dict, now: datetime) -> float | None:
    """The recorded estimate of seconds left, less the time since it was recorded; None when there is none."""
    eta = progress.get("eta_seconds")
    if eta is None:
        return None
    try:
        since = (now - _aware(datetime.fromisoformat(progress["updated_at"]))).total_seconds()
    except (KeyError, TypeError, ValueError):
        since = 0.0
    return max(0.0, float(eta) - max(0.0, since))


def where(progress: dict) -> str:
    """``convert unet (original, float16) · Running MIL default pipeline 40/87``."""
    label = ", ".join(x for x in (progress.get("layout"), progress.get("precision")) if x)
    text = f"{progress.get('step', '')} {progress.get('component', '')}" + (f" ({label})" if label else "")
    counter = progress.get("counter")
    if counter and progress.get("fraction", 0) < 1:
        text += f" · {counter['label']} {counter['done']}" + (f"/{counter['total']}" if counter.get("total") else "")
    return text.strip()


def timing(row: StageRow, progress: dict, now: datetime) -> str:
    """``0:32 elapsed, about 0:45 left`` (``no estimate yet`` when there is nothing to go on)."""
    spent = clock(elapsed(row, now))
    if row.state != "running":
        return f"{spent} elapsed, {row.state}"
    left = remaining(progress, now)
    return f"{spent} elapsed, " + (f"about {clock(left)} left" if left is not None else "no estimate yet")


class ProgressDisplay:
    """Shows the progress of a job's stages as they run: rich bars when stderr is a terminal, else a plain line
    per stage when its step changes (or every PLAIN_EVERY seconds) and when it ends."""

    def __init__(self, *, live: bool | None = None) -> None:
        self.live = console.is_terminal if live is None else live
        self._bars: Progress | None = None
        self._tasks: dict[int, TaskID] = {}
        self._shown: dict[int, tuple[tuple, float]] = {}  # stage id -> (what its last line said, when)

    def update(self, rows: list[StageRow], now: datetime | None = None) -> None:
        """Show the stages that report progress: running ones, and ones that ended since they were shown."""
        now = now or datetime.now(timezone.utc)
        for row in rows:
            if not row.progress or (row.state != "running" and row.id not in self._tasks and row.id not in self._shown):
                continue
            if self.live:
                self._bar(row, row.progress, now)
            else:
                self._line(row, row.progress, now)

    def _bar(self, row: StageRow, progress: dict, now: datetime) -> None:
        if self._bars is None:
            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                  TextColumn("{task.fields[timing]}"), console=console,
                                  redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)
            self._bars.start()
        description = f"{row.stage} {row.part}".strip() + f": {where(progress)}"
        fields = {"description": description, "total": progress.get("total") or 1,
                  "completed": progress.get("done", 0), "timing": timing(row, progress, now)}
        if row.id not in self._tasks:
            self._tasks[row.id] = self._bars.add_task(**fields)
        else:
            self._bars.update(self._tasks[row.id], **fields)

    def _line(self, row: StageRow, progress: dict, now: datetime) -> None:
        key = (row.state, progress.get("done"), progress.get("step"), progress.get("component"),
               progress.get("layout"), progress.get("precision"))
        last = self._shown.get(row.id)
        if last is not None and last[0] == key and (row.state != "running" or time.monotonic() - last[1] < PLAIN_EVERY):
            return
        self._shown[row.id] = (key, time.monotonic())
        fraction = float(progress.get("fraction", 0.0))
        console.print(f"progress {row.stage} {row.part}".rstrip() + f": {progress.get('done', 0)}/"
                      f"{progress.get('total', 0)} steps ({fraction:.0%}) · {where(progress)} · "
                      f"{timing(row, progress, now)}", markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Leave the bars as they last were."""
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
