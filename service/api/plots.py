"""The status page's plots, drawn on the server as SVG: a job's stage timeline (Gantt-style) and each package's
validation figures against their bars.  Every text drawn is escaped; colours are attributes, not styles, so
the page's Content-Security-Policy needs no inline style."""

from __future__ import annotations

import math
from datetime import datetime
from html import escape

from markupsafe import Markup

from service.jobs import aware
from service.models import StageResult

STATE_COLOURS = {"succeeded": "#2f8f46", "running": "#2f6fd0", "failed": "#c8382c", "cancelled": "#8a6d3b",
                 "pending": "#a3a9b1", "waiting": "#c98a14"}
PASS, FAIL, MISSING = "#2f8f46", "#c8382c", "#a3a9b1"
WIDTH, LABEL, ROW = 920, 210, 24  # px: the drawing, its label column, one row
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800)  # axis ticks, seconds


def _text(x: float, y: float, text: str, *, anchor: str = "start", cls: str = "", fill: str | None = None) -> str:
    extra = f' class="{cls}"' if cls else ""
    extra += f' fill="{fill}"' if fill else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _svg(height: float, body: list[str], label: str) -> Markup:
    return Markup(f'<svg class="plot" viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" height="{height:.0f}" '
                  f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
                  + "".join(body) + "</svg>")


def duration_text(seconds: float | None) -> str:
    """``0.3 s``, ``42.7 s``, ``2 min 5 s``, ``1 h 4 min``."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _tick(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def timeline(stages: list[StageResult], *, start: datetime, now: datetime) -> Markup:
    """One row per stage run (stage and part), a bar from its start to its end (to now while it runs), coloured by
    state, labelled with its host, duration and attempts; the axis counts from ``start`` (the job's creation)."""
    start = aware(start)
    rows = []
    for result in stages:
        begin = aware(result.started_at) if result.started_at else None
        end = aware(result.finished_at) if result.finished_at else (now if result.state == "running" else None)
        if begin is not None and end is not None and end < begin:
            end = begin
        rows.append((result, begin, end))
    ends = [(e - start).total_seconds() for _, b, e in rows if e is not None]
    span = max([1.0, *ends])
    step = next((s for s in STEPS if span / s <= 8), STEPS[-1])
    span = math.ceil(span / step) * step
    plot = WIDTH - LABEL - 150  # room on the right for the last bar's label

    def x(seconds: float) -> float:
        return LABEL + plot * max(0.0, seconds) / span

    top, height = 18, 18 + ROW * max(1, len(rows)) + 8
    body = []
    for i in range(int(span / step) + 1):
        px = x(i * step)
        body.append(f'<line x1="{px:.1f}" y1="{top - 4}" x2="{px:.1f}" y2="{height - 6}" class="grid"/>')
        body.append(_text(px, 12, _tick(i * step), anchor="middle", cls="axis"))
    if not rows:
        body.append(_text(LABEL, top + 16, "no stage has started yet", cls="note"))
    for n, (result, begin, end) in enumerate(rows):
        y = top + n * ROW
        name = f"{result.stage} {result.part}".strip()
        colour = STATE_COLOURS.get(result.state, MISSING)
        body.append(_text(LABEL - 8, y + 15, name, anchor="end"))
        if begin is None:
            body.append(_text(LABEL + 4, y + 15, result.state, cls="note"))
            continue
        x0, x1 = x((begin - start).total_seconds()), x(((end or begin) - start).total_seconds())
        seconds = result.duration if result.duration is not None else \
            ((end - begin).total_seconds() if end is not None else None)
        details = [result.worker_host or "unknown host", duration_text(seconds)]
        if result.attempts > 1:
            details.append(f"{result.attempts} attempts")
        tip = f"{name}: {result.state}, " + ", ".join(details)
        body.append(f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(2.0, x1 - x0):.1f}" height="{ROW - 8}" rx="3" '
                    f'fill="{colour}" class="bar bar-{escape(result.state)}"><title>{escape(tip)}</title></rect>')
        body.append(_text(max(x0, x1) + 2 + 4, y + 15, " · ".join(details), cls="note"))
    return _svg(height, body, "stage timeline")


def package_rows(stages: list[StageResult]) -> list[dict]:
    """Every package a job's convert stages validated: name, size, status and each figure with its bar."""
    rows = []
    for result in stages:
        if result.stage != "convert" or not isinstance(result.figures, dict):
            continue
        for name, figure in sorted(result.figures.items()):
            if not isinstance(figure, dict) or "status" not in figure:
                continue
            rows.append({"package": name, "part": result.part, "size_bytes": figure.get("size_bytes"),
                         "status": figure.get("status"),
                         "checks": [(check, _finite(figure.get(check)), _finite(figure.get(f"{check}_threshold")))
                                    for check in ("psnr_program", "psnr_torch")]})
    return rows


def _finite(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if not math.isnan(value) else -math.inf  # NaN fails like -inf
    return None


def figures(packages: list[dict]) -> Markup:
    """Each package's ``psnr_program`` and ``psnr_torch`` as bars in dB, its bar (the threshold) as a tick; green
    when the figure reaches its bar, red when it does not, grey when the check did not run."""
    values = [v for p in packages for _, value, bar in p["checks"] for v in (value, bar)
              if v is not None and math.isfinite(v)]
    top_db = max([40.0, *values]) * 1.08
    top_db = math.ceil(top_db / 10) * 10
    plot = WIDTH - LABEL - 70

    def x(db: float) -> float:
        return LABEL + plot * min(max(db, 0.0), top_db) / top_db

    top = 20
    height = top + 30 * max(1, len(packages)) + 26
    body = []
    for db in range(0, int(top_db) + 1, 10):
        body.append(f'<line x1="{x(db):.1f}" y1="{top - 4}" x2="{x(db):.1f}" y2="{height - 22}" class="grid"/>')
        body.append(_text(x(db), 12, f"{db} dB", anchor="middle", cls="axis"))
    if not packages:
        body.append(_text(LABEL, top + 16, "no package validated yet", cls="note"))
    for n, package in enumerate(packages):
        y = top + n * 30
        component, _, rest = package["package"].partition("/")
        body.append(_text(LABEL - 8, y + 11, component, anchor="end"))
        body.append(_text(LABEL - 8, y + 23, rest.replace("/", " · "), anchor="end", cls="note"))
        for i, (check, value, bar) in enumerate(package["checks"]):
            by = y + 2 + i * 12
            if value is None:
                body.append(_text(LABEL + 4, by + 9, f"{check}: not run", cls="note"))
                continue
            passed = bar is None or value >= bar
            colour = (PASS if passed else FAIL) if i == 0 else ("#7fc08f" if passed else "#e58a82")
            shown = "∞" if value == math.inf else ("NaN" if value == -math.inf else f"{value:.1f}")
            tip = f"{package['package']} {check}: {shown} dB" + (f", bar {bar:g} dB" if bar is not None else "")
            body.append(f'<rect x="{LABEL}" y="{by}" width="{max(1.0, x(value) - LABEL):.1f}" height="10" '
                        f'fill="{colour}" class="{"pass" if passed else "fail"}"><title>{escape(tip)}</title></rect>')
            body.append(_text(x(value) + 4, by + 9, f"{shown}", cls="note"))
            if bar is not None:
                body.append(f'<line x1="{x(bar):.1f}" y1="{by - 2}" x2="{x(bar):.1f}" y2="{by + 12}" class="threshold">'
                            f'<title>{escape(check)} bar: {bar:g} dB</title></line>')
    legend = height - 8
    body.append(f'<rect x="{LABEL}" y="{legend - 9}" width="10" height="10" fill="{PASS}"/>')
    body.append(_text(LABEL + 14, legend, "psnr_program: the saved program executed in float16", cls="note"))
    body.append(f'<rect x="{LABEL + 330}" y="{legend - 9}" width="10" height="10" fill="#7fc08f"/>')
    body.append(_text(LABEL + 344, legend, "psnr_torch: weights read back, torch", cls="note"))
    body.append(f'<line x1="{LABEL + 580}" y1="{legend - 10}" x2="{LABEL + 580}" y2="{legend + 2}" class="threshold"/>')
    body.append(_text(LABEL + 586, legend, "bar (red: below it)", cls="note"))
    return _svg(height, body, "validation figures against their bars")


def mixed_plots(stages: list[StageResult]) -> list[Markup]:
    """The size-against-PSNR plot of every mixed-bit recipe a job's convert stages analysed, one per component
    (:func:`workers.package.plot_mixed.size_psnr_svg`, the card's plot); a record it cannot read is not drawn."""
    from workers.package.plot_mixed import size_psnr_svg

    found: dict[str, dict] = {}
    for result in stages:
        if result.stage == "convert" and isinstance(result.figures, dict) and \
                isinstance(result.figures.get("recipes"), dict):
            for component, recipe in result.figures["recipes"].items():
                found.setdefault(str(component), recipe)
    drawn = []
    for component, recipe in sorted(found.items()):
        try:
            drawn.append(Markup(size_psnr_svg(component, recipe)))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return drawn
