"""Conversion parts combined into one output tree: a job's merge stage (shared components, one UNet per layout,
converted by different workers) and a local conversion run in parallel processes
(:mod:`workers.convert.parts`), so the packaging and publishing steps read one tree either way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from workers.package.files import link_package
from workers.errors import OutputError
from workers.names import CHECK_DATA_DIR, sort_attentions
from workers.validate.report import Report


def _recipes_in(path: Path) -> dict:
    return json.loads(path.read_text())["recipes"]


def _merge_recipe(merged: Report, component: str, recipe: dict, part: Path, out: Path) -> None:
    """A part's mixed-bit recipe and its file, taken once; each layout's part analyses its own UNet, and two
    that chose different widths cannot ship as one repo."""
    if component in merged.recipes:
        if _recipes_in(part / recipe["file"]) != _recipes_in(out / merged.recipes[component]["file"]):
            raise OutputError(f"the parts' mixed-bit recipes for {component} differ",
                              hint="Convert the job again (its parts on one host analyse alike).")
        return
    merged.recipes[component] = recipe
    for key in ("file", "plot"):  # the recipe file and its size-against-PSNR plot
        if recipe.get(key):
            (out / recipe[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(part / recipe[key], out / recipe[key])


def merge_outputs(parts: list[Path], out: Path, *, base: Report | None = None) -> Report:
    """Fan-in: combine conversion outputs of disjoint component groups into one output folder.

    Each part is a folder written by :func:`workers.convert.engine.convert_pipeline` (with its report.json); packages are
    hard-linked into ``out`` at the same relative paths and the reports merged into one.

    Without ``base`` (a job's parts): a part that did not pass is refused, timings are kept per part
    (``<part>/<stage>``) and the options say which layouts and flags the parts made.  With ``base`` (one
    conversion run in parts): the packages are added to that run's report, a failed one recorded as it is (as a
    conversion in one process records it), and a stage two parts both ran (an attention-split UNet's load and
    reference) counts the time of both.
    Raises OutputError when a part has no report, the parts are not of the same source and geometry, or (without
    ``base``) one did not pass.
    """
    reports = [Report.load(part, hint="Convert that part first.") for part in parts]
    first = base or reports[0]
    expected = json.loads(json.dumps([first.source["id"], first.source["sha"], first.geometry]))  # as read back
    for report, part in zip(reports, parts):
        if [report.source["id"], report.source["sha"], report.geometry] != expected:
            raise OutputError(f"{part} was converted from another source or geometry", hint="Convert it again.")
        if base is None and not report.passed:
            raise OutputError(f"{part} did not pass validation", hint="See its report.json.")
    out.mkdir(parents=True, exist_ok=True)
    merged = base or Report(first.source, dict(first.options), first.geometry, first.toolchain, first.repos,
                            started_at=first.started_at)
    attentions: list[str] = []
    for report, part in zip(reports, parts):
        for package in report.packages:
            if (part / package.path).exists():  # a failed package was deleted; its record stays
                link_package(part / package.path, out / package.path)
            merged.packages.append(package)
        for data in sorted((part / CHECK_DATA_DIR).glob("*.npz")):
            (out / CHECK_DATA_DIR).mkdir(exist_ok=True)
            shutil.copy2(data, out / CHECK_DATA_DIR / data.name)
        for key, seconds in report.timings.items():
            if base is None:
                merged.timings[f"{part.name}/{key}"] = seconds
            elif key != "total":
                merged.timings[key] = merged.timings.get(key, 0.0) + seconds
        for component, recipe in report.recipes.items():
            _merge_recipe(merged, component, recipe, part, out)
        attentions += [a for a in report.attentions if a not in attentions]
    if base is None:
        merged.options.update(attentions=list(sort_attentions(attentions)), components=None,
                              **{flag: any(r.options.get(flag) for r in reports)
                                 for flag in ("chunk_unet", "chunks_only", "controlled_unet")})
    merged.save(out)
    return merged
