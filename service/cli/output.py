"""Terminal output shared by commands: quiet third-party logs, progress lines, the ✓/✗ table, listings
(whole values when piped) and ``--json`` documents."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workers.names import size_name, variant_size

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


def print_listing(table: Table) -> None:
    """A listing's table: fitted to a terminal; piped or redirected, every value whole on one line per row
    (``coreml-publish jobs | grep org/name`` finds the repo, never ``org/tiny…``)."""
    if stdout.is_terminal:
        stdout.print(table)
        return
    for column in table.columns:
        column.no_wrap, column.overflow = True, "ignore"
    Console(highlight=False, width=100_000, soft_wrap=True).print(table)


def short_sha(sha: str | None) -> str:
    """A commit sha as listings show it: its first 10 characters on a terminal, whole when piped."""
    return (sha or "")[:10] if stdout.is_terminal else (sha or "")


def print_json(data: object) -> None:
    """One JSON document on standard output, every value whole (``--json``)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def comma_list(value: str | None) -> tuple[str, ...]:
    """The items of a comma-separated option value, stripped, empty ones dropped."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def quiet_libraries(debug: bool = False) -> None:
    """Silence third-party progress bars and chatter unless debugging (COREML_PUBLISH_DEBUG=1)."""
    if debug:
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    for name in ("coremltools", "transformers", "diffusers", "torch", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()


class EventPrinter:
    """Prints one line per finished stage and shows the running one in a status line."""

    def __init__(self) -> None:
        self.status = console.status("starting")
        self.status.start()

    def __call__(self, event) -> None:
        extra = ", ".join(x for x in (event.variant, event.precision) if x)
        label = f"{event.component} ({extra})" if extra else event.component
        if event.status in ("start", "progress"):
            self.status.update(f"{event.stage} {escape(label)}…{escape(progress_note(event.progress))}")
            return
        mark = {"done": "[green]✓[/]", "failed": "[red]✗[/]", "skipped": "[yellow]-[/]"}[event.status]
        seconds = f" {event.seconds:.1f} s" if event.seconds is not None else ""
        detail = f": {event.detail}" if event.detail and event.status == "failed" else ""
        console.print(f"{mark} {event.stage:<9} {escape(label)}{seconds}{escape(detail)}")

    def close(self) -> None:
        self.status.stop()


def progress_note(progress) -> str:
    """`` (step 3 of 12; Running MIL default pipeline 40/87)``: a conversion's progress, or nothing."""
    if progress is None:
        return ""
    note = f" (step {progress.done + 1 if progress.done < progress.total else progress.done} of {progress.total}"
    counter = progress.counter
    if counter is not None:
        note += f"; {counter.label} {counter.done}" + (f"/{counter.total}" if counter.total else "")
    return note + ")"


def _figure(check) -> str:
    if check is None:
        return ""
    sign = {"passed": "[green]✓[/]", "failed": "[red]✗[/]", "skipped": "-"}[check.status]
    if check.value is not None:
        return f"{sign} {check.value:.1f} ≥ {check.threshold:g}"
    if check.status == "skipped":
        return f"{sign} {check.detail}"
    return f"{sign} {check.detail}" if check.status == "failed" else sign


def report_table(report) -> Table:
    """One row per package (copies shared between layouts left out): each check's figure and bar in dB."""
    table = Table(title="Validation (PSNR in dB: figure ≥ bar)", title_justify="left")
    for column in ("", "package", "size", "layout", "program", "torch", "Core ML", "structure"):
        table.add_column(column, overflow="fold")
    copied = {p.shared_from for p in report.packages if p.shared_from}
    for p in report.packages:
        if p.shared_from:
            continue
        size = variant_size(p.variant)
        variant = (f"all layouts at {size_name(size)}" if size else "all layouts") if p.path in copied else p.variant
        checks = {c.name: c for c in p.checks}
        mark = "[green]✓[/]" if p.status == "passed" else "[red]✗[/]"
        size = f"{p.size_bytes / 1e6:.1f} MB" if p.size_bytes else "deleted"
        structure = [checks.get("structure"), checks.get("weights")]
        failed = [c for c in structure if c is not None and c.failed]
        table.add_row(mark, f"{p.component} {variant} {p.precision}", size, _figure(checks.get("psnr_layout")),
                      _figure(checks.get("psnr_program")), _figure(checks.get("psnr_torch")),
                      _figure(checks.get("psnr_coreml")),
                      _figure(failed[0]) if failed else "[green]✓[/]")
    return table


def summary(report) -> str:
    """The closing line: "All checks passed" only when every check ran; otherwise what was skipped and why."""
    made = [p for p in report.packages if not p.shared_from]
    counts = f"{len(made)} packages made, {len(report.packages)} placed in the trees (layout-independent ones are shared)"
    sized = [p for p in made if p.weights_from]
    if sized:
        counts += f"; {len(sized)} at extra sizes share the native packages' weight files"
    skipped: dict[tuple[str, str], int] = {}
    for p in made:
        for c in p.checks:
            if c.status == "skipped":
                skipped[(c.name, c.detail)] = skipped.get((c.name, c.detail), 0) + 1
    if not skipped:
        return f"All checks passed: {counts}."
    what = "; ".join(f"{name} on {n} package{'s' if n > 1 else ''} ({detail or 'not run'})"
                     for (name, detail), n in skipped.items())
    return f"Every check that ran passed: {counts}. Skipped: {what}."
