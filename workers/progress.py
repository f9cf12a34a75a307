"""Progress inside a conversion: which component, layout and step it is at, how many of the run's planned steps
are done, and coremltools' own counters (its tqdm bars: frontend operations, graph-pass pipelines, compression
passes), observed while a step runs by wrapping the tqdm of the coremltools modules that draw them.

Plain data and the standard library only: importing this loads neither torch nor coremltools.
"""

from __future__ import annotations

import importlib
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

# the coremltools modules whose loops draw tqdm bars while converting or palettizing, and the name each imported
# tqdm under (coremltools 9): "Converting PyTorch Frontend ==> MIL Ops", "Running MIL <name> pipeline",
# "Running compression pass <name>", "Getting Core ML weights meta data"
TQDM_USERS: tuple[tuple[str, str], ...] = (
    ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
    ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
    ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
    ("coremltools.optimize.coreml._post_training_quantization", "tqdm"),
)
_PATCHING = threading.Lock()


@dataclass(frozen=True)
class Counter:
    """One coremltools progress bar: its label and how many of its items are done."""

    label: str
    done: int
    total: int | None


@dataclass(frozen=True)
class Progress:
    """Where a conversion run is: the step running now and the run's top-level steps done of those planned."""

    component: str
    layout: str | None
    step: str
    done: int
    total: int
    precision: str | None = None
    model: str = ""  # the source's size class (see ``model_class``): estimates compare runs of similar models
    counter: Counter | None = None

    @property
    def fraction(self) -> float:
        """Steps done over steps planned, in [0, 1]."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    def to_dict(self) -> dict:
        """JSON-ready, as jobs record it."""
        data: dict[str, Any] = {"component": self.component, "layout": self.layout, "precision": self.precision,
                                "step": self.step, "done": self.done, "total": self.total,
                                "fraction": round(self.fraction, 4), "model": self.model}
        if self.counter is not None:
            data["counter"] = {"label": self.counter.label, "done": self.counter.done, "total": self.counter.total}
        return data


def model_class(weight_bytes: int, *, xl: bool, latent: tuple[int, int]) -> str:
    """A short label grouping models of about the same size: architecture, latent size and the weights' size
    to the nearest power of two in MB (``SD 64x64, ~4096 MB``)."""
    megabytes = 2 ** round(math.log2(max(weight_bytes / 1e6, 1.0)))
    return f"{'SDXL' if xl else 'SD'} {latent[0]}x{latent[1]}, ~{megabytes} MB"


class Steps:
    """Counts a run's top-level steps against the number planned; nested steps (a validation's program run)
    only say where the run is.  A step beyond the plan raises the total, so the fraction never passes 1."""

    def __init__(self, total: int, model: str = "") -> None:
        self.total, self.model, self.done = total, model, 0
        self._where: list[tuple[str, str, str | None, str | None]] = []  # (step, component, layout, precision)
        self._last: tuple[str, str, str | None, str | None] = ("", "", None, None)  # the step that ended last

    @property
    def depth(self) -> int:
        """How many steps are running, nested in one another."""
        return len(self._where)

    def starting(self, step: str, component: str, layout: str | None, precision: str | None = None) -> Progress:
        """The progress as a step is about to start."""
        return Progress(component, layout, step, self.done, max(self.total, self.done + 1), precision, self.model)

    def enter(self, step: str, component: str, layout: str | None, precision: str | None = None) -> None:
        """A step starts (nested in the running one, if any)."""
        self._where.append((step, component, layout, precision))
        if len(self._where) == 1:
            self.total = max(self.total, self.done + 1)

    def leave(self) -> None:
        """The innermost step ended, done or failed; a top-level one counts as done."""
        self._last = self._where.pop()
        if not self._where:
            self.done += 1

    def now(self, counter: Counter | None = None) -> Progress:
        """The progress as of now (after a step ended: that step's); ``counter``: the coremltools bar running
        inside the step, if any."""
        step, component, layout, precision = self._where[-1] if self._where else self._last
        return Progress(component, layout, step, self.done, self.total, precision, self.model, counter)


@contextmanager
def observe_tqdm(report: Callable[[Counter], None], *, interval: float = 0.25) -> Iterator[None]:
    """While the block runs, coremltools' tqdm loops also hand their counters to ``report`` (at a loop's start
    and end, and at most every ``interval`` seconds between); the modules get their own tqdm back on exit,
    whatever happens.  Bars still draw (or not: ``TQDM_DISABLE``) as they would without this.

    Patching is process-wide: nested blocks restore in order, but two conversions in threads of one process
    would see each other's counters.
    """
    patched: list[tuple[Any, str, Any]] = []
    try:
        with _PATCHING:
            for module_name, attribute in TQDM_USERS:
                try:
                    module = importlib.import_module(module_name)
                except Exception:  # another coremltools layout, or none: nothing to observe there
                    continue
                original = getattr(module, attribute, None)
                if original is None:
                    continue
                patched.append((module, attribute, original))
                setattr(module, attribute, _observed(original, report, interval))
        yield
    finally:
        with _PATCHING:
            for module, attribute, original in reversed(patched):
                setattr(module, attribute, original)


def _observed(original: Callable[..., Any], report: Callable[[Counter], None], interval: float) -> Callable[..., Any]:
    """A stand-in for a module's ``tqdm``: makes the real bar, and counts what goes through it."""

    def make(iterable: Any = None, *args: Any, **kwargs: Any) -> _CountedBar:
        label = kwargs.get("desc", args[0] if args else None) or ""
        total = kwargs.get("total", args[1] if len(args) > 1 else None)
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:  # a generator: no total
                total = None
        return _CountedBar(original(iterable, *args, **kwargs), str(label), total, report, interval)

    return make


class _CountedBar:
    """A real tqdm bar, iterated or updated as usual, that reports its count."""

    def __init__(self, bar: Any, label: str, total: int | None, report: Callable[[Counter], None],
                 interval: float) -> None:
        self._bar, self._label, self._total, self._report, self._interval = bar, label, total, report, interval
        self.count, self._last = 0, float("-inf")

    def _tell(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self._interval:
            self._last = now
            self._report(Counter(self._label, self.count, self._total))

    def __iter__(self) -> Iterator[Any]:
        self._tell(force=True)
        for item in self._bar:
            yield item  # the loop's body runs while this generator waits here
            self.count += 1
            self._tell()
        self._tell(force=True)

    def update(self, n: int = 1) -> Any:
        self.count += n
        self._tell()
        return self._bar.update(n)

    def __enter__(self) -> _CountedBar:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        self._tell(force=True)
        return self._bar.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
