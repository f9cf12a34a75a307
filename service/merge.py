"""The merge stage's fan-in: a job's conversion parts (shared components, one UNet per layout), converted by
different workers, combined into the one output tree the packaging and publishing steps read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from workers.convert.engine import link_package
from workers.errors import OptionsError
from workers.names import CHECK_DATA_DIR, REPORT_FILE, sort_attentions
from workers.validate.report import write_json


def merge_outputs(parts: list[Path], out: Path) -> dict:
    """Fan-in: combine conversion outputs of disjoint component groups into one output folder.

    Each part is a folder written by :func:`workers.convert.engine.convert_pipeline` (with its report.json); packages are
    hard-linked into ``out`` at the same relative paths and the reports merged into one.
    Raises OptionsError when the parts are not of the same source and geometry, or one did not pass.
    """
    reports = []
    for part in parts:
        path = part / REPORT_FILE
        if not path.is_file():
            raise OptionsError(f"{part} holds no {REPORT_FILE}", hint="Convert that part first.")
        reports.append(json.loads(path.read_text()))
    first = reports[0]
    for report, part in zip(reports, parts):
        if (report["source"]["id"], report["source"]["sha"], report["geometry"]) != \
                (first["source"]["id"], first["source"]["sha"], first["geometry"]):
            raise OptionsError(f"{part} was converted from another source or geometry", hint="Convert it again.")
        if not report["passed"]:
            raise OptionsError(f"{part} did not pass validation", hint="See its report.json.")
    out.mkdir(parents=True, exist_ok=True)
    merged = dict(first)
    merged["packages"], merged["timings"] = [], {}
    attentions: list[str] = []
    for report, part in zip(reports, parts):
        for package in report["packages"]:
            link_package(part / package["path"], out / package["path"])
            merged["packages"].append(package)
        for data in sorted((part / CHECK_DATA_DIR).glob("*.npz")):
            (out / CHECK_DATA_DIR).mkdir(exist_ok=True)
            shutil.copy2(data, out / CHECK_DATA_DIR / data.name)
        merged["timings"].update({f"{part.name}/{k}": v for k, v in report["timings"].items()})
        attentions += [a for a in report["options"]["attentions"] if a not in attentions]
    merged["options"] = dict(first["options"], attentions=list(sort_attentions(attentions)), components=None,
                             **{flag: any(r["options"].get(flag) for r in reports) for flag in ("chunk_unet", "chunks_only")})
    merged["passed"] = True
    write_json(out / REPORT_FILE, merged)
    return merged
