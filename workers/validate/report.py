"""The record of a conversion: per-package checks, the report written as report.json, progress events.

Plain data (no torch): the service, the CLI and the packaging step read reports without loading a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from workers.components import pipeline_of
from workers.errors import OutputError
from workers.names import REPORT_FILE, parse_size, variant_name
from workers.progress import Progress


@dataclass
class Check:
    """One validation result as it appears in the report and the ✓/✗ table."""

    name: str
    status: str  # "passed", "failed" or "skipped"
    where: str  # "package", "program", "torch" or "coreml"
    value: float | None = None
    threshold: float | None = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Event:
    """Progress of one stage of one package, for progress displays and job logs."""

    stage: str  # load, reference, convert, validate, palettize
    component: str
    status: str  # start, done, failed, skipped; progress: inside a running stage (coremltools' counters)
    variant: str | None = None
    precision: str | None = None
    seconds: float | None = None
    detail: str = ""
    progress: Progress | None = None  # where the whole run is (set by the conversion engine)


@dataclass
class PackageResult:
    """One package in the output tree and everything checked about it."""

    repo: str
    variant: str
    component: str
    precision: str
    path: str  # relative to the output folder
    size_bytes: int = 0
    seconds: float = 0.0
    shared_from: str | None = None  # the package this one is a copy of (layout-independent components)
    target: str | None = None  # the deployment target it is written for (workers.convert.targets)
    checks: list[Check] = field(default_factory=list)
    weights_from: str | None = None  # an extra size's package: the native one whose weight file it shares

    @property
    def status(self) -> str:
        return "failed" if any(c.failed for c in self.checks) else "passed"

    def failures(self) -> list[str]:
        where = f"{self.component} ({self.variant}, {self.precision})"
        out = []
        for c in self.checks:
            if c.failed:
                figure = f"{c.value} dB < {c.threshold} dB" if c.threshold is not None and c.value is not None \
                    else c.detail
                out.append(f"{where} {c.name}: {figure}")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status
        return d


@dataclass
class Report:
    """The machine-readable record of one conversion (written as report.json)."""

    source: dict
    options: dict
    geometry: dict
    toolchain: dict
    repos: dict[str, str]
    packages: list[PackageResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    # component -> its mixed-bit recipe in brief (workers.compress.mixed.MixedRecipe.summary)
    recipes: dict[str, dict] = field(default_factory=dict)
    # a conversion run in processes (workers.convert.parts): part -> the most its process held resident, bytes
    peaks: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(p.status == "passed" for p in self.packages)

    def failures(self) -> list[str]:
        return [f for p in self.packages if p.shared_from is None for f in p.failures()]

    def to_dict(self) -> dict:
        return {
            "source": self.source, "options": self.options, "geometry": self.geometry,
            "toolchain": self.toolchain, "repos": self.repos, "started_at": self.started_at,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "passed": self.passed, "packages": [p.to_dict() for p in self.packages],
        } | ({"recipes": self.recipes} if self.recipes else {}) | ({"peaks": self.peaks} if self.peaks else {})

    def save(self, out: Path) -> Path:
        """Write the report as ``out/report.json`` (readers see the old file or the new one, never half)."""
        return write_json(out / REPORT_FILE, self.to_dict())

    @classmethod
    def load(cls, out: Path, *, hint: str = "Run `coreml-publish convert SOURCE -o OUT` first.") -> "Report":
        """The report.json of an output tree.  Raises OutputError when there is none or it is not a report."""
        path = out / REPORT_FILE
        if not path.is_file():
            raise OutputError(f"{out} holds no {REPORT_FILE}", hint=hint)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise OutputError(f"{path} is not a conversion report ({e.__class__.__name__}: {e})"[:300],
                              hint="Use the report.json that convert wrote.") from e

    def require_passed(self, out: Path) -> None:
        """Refuse (OutputError) a conversion in which a package failed validation: nothing of it is published."""
        if not self.passed:
            raise OutputError(f"the conversion in {out} did not pass validation; nothing is published",
                              hint="Fix the failures listed in report.json and convert again.")

    def packages_of(self, repo: str, variant: str | None = None) -> list[PackageResult]:
        """The packages of one repo (by name), optionally of one variant."""
        return [p for p in self.packages if p.repo == repo and (variant is None or p.variant == variant)]

    @property
    def attentions(self) -> list[str]:
        """The attention layouts the conversion made, in its order."""
        return list(self.options.get("attentions") or ())

    @property
    def variants(self) -> list[str]:
        """Every variant the conversion made, in its order: per layout, the native size (its folder the layout's
        name), then each ``--resolution`` (``<layout>/<W>x<H>``)."""
        sizes = self.options.get("resolutions") or ()
        return [v for a in self.attentions for v in (a, *(variant_name(a, parse_size(s)) for s in sizes))]

    @property
    def pipeline(self) -> str:
        """Which Swift pipeline the packages are for: ``sd`` (1.x/2.x), ``sdxl``, ``sdxl-refiner``, or
        ``controlnet`` (a ControlNet repo's, loaded beside an SD 1.x/2.x one)."""
        if self.source.get("pipeline_class") == "ControlNetModel":
            return "controlnet"
        time_ids = self.geometry.get("time_ids")
        if time_ids is None:  # recorded before SDXL: what the components say
            return pipeline_of({p.component for p in self.packages})
        return {0: "sd", 6: "sdxl"}.get(time_ids, "sdxl-refiner")

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        """A report read back from report.json (a package recorded as failed stays failed)."""
        packages = []
        for p in data["packages"]:
            checks = [Check(**c) for c in p.get("checks", ())]
            if p.get("status") == "failed" and not any(c.failed for c in checks):
                checks.append(Check("recorded", "failed", "package", detail="recorded as failed"))
            packages.append(PackageResult(**{k: v for k, v in p.items() if k not in ("checks", "status")},
                                          checks=checks))
        return cls(data["source"], data["options"], data["geometry"], data["toolchain"], data["repos"], packages,
                   dict(data.get("timings", {})), data.get("started_at", ""), dict(data.get("recipes", {})),
                   dict(data.get("peaks", {})))


def write_json(path: Path, data: dict) -> Path:
    """Write ``data`` as JSON so that readers see the old file or the new one, never half of one."""
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def precision_label(bits: int | float | None, group_size: int = 0) -> str:
    """``float16``, ``palettized-6bit`` or ``palettized-6bit-group16``; for a mixed-bit recipe (``bits`` its average
    width, a float) ``mixed-4.50bit`` or ``mixed-4.50bit-group16``."""
    if bits is None:
        return "float16"
    width = f"mixed-{bits:.2f}bit" if isinstance(bits, float) else f"palettized-{bits}bit"
    return width + (f"-group{group_size}" if group_size else "")


def precision_bits(precision: str) -> int | float | None:
    """The bit width a package's precision label names (``palettized-6bit-group16`` → 6; a mixed-bit
    ``mixed-4.50bit`` → its average, 4.5); None for float16 and float32 (an SDXL VAE)."""
    if precision.startswith("mixed-"):
        return float(precision.split("-")[1].removesuffix("bit"))
    return int(precision.split("-")[1].removesuffix("bit")) if precision.startswith("palettized") else None
