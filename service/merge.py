"""The merge stage's fan-in: a job's conversion parts (shared components, one UNet per layout), converted by
different workers, combined into the one output tree the packaging and publishing steps read."""

from __future__ import annotations

import shutil
from pathlib import Path

from workers.package.files import link_package
from workers.errors import OutputError
from workers.names import CHECK_DATA_DIR, sort_attentions
from workers.validate.report import Report


def merge_outputs(parts: list[Path], out: Path) -> Report:
    """Fan-in: combine conversion outputs of disjoint component groups into one output folder.

    Each part is a folder written by :func:`workers.convert.engine.convert_pipeline` (with its report.json); packages are
    hard-linked into ``out`` at the same relative paths and the reports merged into one.
    Raises OutputError when a part has no report, the parts are not of the same source and geometry, or one
    did not pass.
    """
    reports = [Report.load(part, hint="Convert that part first.") for part in parts]
    first = reports[0]
    for report, part in zip(reports, parts):
        if (report.source["id"], report.source["sha"], report.geometry) != \
                (first.source["id"], first.source["sha"], first.geometry):
            raise OutputError(f"{part} was converted from another source or geometry", hint="Convert it again.")
        if not report.passed:
            raise OutputError(f"{part} did not pass validation", hint="See its report.json.")
    out.mkdir(parents=True, exist_ok=True)
    merged = Report(first.source, dict(first.options), first.geometry, first.toolchain, first.repos,
                    started_at=first.started_at)
    attentions: list[str] = []
    for report, part in zip(reports, parts):
        for package in report.packages:
            link_package(part / package.path, out / package.path)
            merged.packages.append(package)
        for data in sorted((part / CHECK_DATA_DIR).glob("*.npz")):
            (out / CHECK_DATA_DIR).mkdir(exist_ok=True)
            shutil.copy2(data, out / CHECK_DATA_DIR / data.name)
        merged.timings.update({f"{part.name}/{k}": v for k, v in report.timings.items()})
        attentions += [a for a in report.attentions if a not in attentions]
    merged.options.update(attentions=list(sort_attentions(attentions)), components=None,
                          **{flag: any(r.options.get(flag) for r in reports) for flag in ("chunk_unet", "chunks_only", "controlled_unet")})
    merged.save(out)
    return merged
