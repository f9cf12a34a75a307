"""Package step: turn a conversion output into the repo trees that get published.

For each of the two repos (float16, palettized) and each variant: compiled resources (via the compile
step, macOS) next to the packages, one deterministic zip per variant, and the model card::

    OUT/<repo-name>/README.md
    OUT/<repo-name>/<repo-name>_<variant>_compiled.zip
    OUT/<repo-name>/<variant>/{compiled,packages}/...
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workers.errors import OptionsError, SourceError
from workers.card import render_card, zip_name
from workers.compile import bundle_variant
from workers.layout import REPORT_FILE

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same files always make the same bytes
STORED_SUFFIXES = (".bin",)  # weights do not compress; storing them keeps zipping fast


@dataclass(frozen=True)
class RepoTree:
    """One repo ready to publish: its local folder and what it holds."""

    kind: str  # "float16" or "palettized"
    name: str  # repo name (the part after the namespace)
    folder: Path
    variants: tuple[str, ...]
    compiled: bool


def load_report(out: Path) -> dict:
    """The conversion report in ``out``; refuses a missing or failed one."""
    path = out / REPORT_FILE
    if not path.is_file():
        raise OptionsError(f"{out} holds no {REPORT_FILE}", hint="Run `coreml-publish convert SOURCE -o OUT` first.")
    report = json.loads(path.read_text())
    if not report.get("passed"):
        raise OptionsError(f"the conversion in {out} did not pass validation; nothing is published",
                           hint="Fix the failures listed in report.json and convert again.")
    return report


def write_zip(folder: Path, target: Path, top: str) -> Path:
    """Zip ``folder``'s contents under one top-level folder ``top``; byte-identical for identical input.

    Files are streamed from disk; entries are sorted with fixed dates and permissions.
    """
    tmp = target.with_name(f".{target.name}.partial")
    entries = sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
        for directory in [folder] + [p for p in entries if p.is_dir()]:
            rel = directory.relative_to(folder).as_posix()
            name = f"{top}/" if rel == "." else f"{top}/{rel}/"
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
            archive.writestr(info, b"")
        for path in (p for p in entries if p.is_file()):
            info = zipfile.ZipInfo(f"{top}/{path.relative_to(folder).as_posix()}", ZIP_DATE)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED if path.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w", force_zip64=True) as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    os.replace(tmp, target)
    return target


def _variants(report: dict, folder: Path) -> tuple[str, ...]:
    """The attention layouts of the run that have packages in this repo folder, in the run's order."""
    return tuple(v for v in report["options"]["attentions"] if (folder / v / "packages").is_dir())


def _variant_packages(report: dict, repo: str, variant: str, out: Path) -> dict[str, Path]:
    return {p["component"]: out / p["path"] for p in report["packages"]
            if p["repo"] == repo and p["variant"] == variant}


def package_output(out: Path, *, namespace: str, compiled: bool, compiler: tuple[str, ...] | None = None,
                   source_dir: Path | None = None, on_step: Callable[[str], None] | None = None,
                   predict: Callable | None = None) -> list[RepoTree]:
    """Lay out both repo trees of a conversion output for publishing under ``namespace``.

    ``source_dir`` holds the source's tokenizer and card (default: where the conversion read the source).
    With ``compiled``, compiles every package with ``compiler`` (``xcrun coremlcompiler``), checks each
    compiled model's Core ML prediction against the float32 reference kept with the output (on macOS, or
    with ``predict``; see :func:`check_compiled`), adds the tokenizer and zips each variant; without,
    removes compiled resources and zips left from earlier runs.
    Raises OptionsError, SourceError, ConversionError, ValidationError (a compiled model below its bar).
    """
    report = load_report(out)
    step = on_step or (lambda message: None)
    source_dir = source_dir or Path(report["source"]["path"] or "")
    tokenizer = source_dir / "tokenizer"
    if compiled and not tokenizer.is_dir():
        raise SourceError(f"the source's tokenizer folder {tokenizer} is gone", source=report["source"]["id"],
                          hint="Convert again so the source is available, then publish.")
    trees = []
    for kind, name in report["repos"].items():
        folder = out / name
        variants = _variants(report, folder)
        if not variants:
            continue
        for variant in variants:
            compiled_dir = folder / variant / "compiled"
            archive = folder / zip_name(name, variant)
            if not compiled:
                shutil.rmtree(compiled_dir, ignore_errors=True)
                archive.unlink(missing_ok=True)
                continue
            step(f"compiling {name}/{variant}")
            bundle_variant(_variant_packages(report, name, variant, out), compiled_dir, tokenizer,
                           command=compiler or ("xcrun", "coremlcompiler"))
            check_compiled(out, report, name, variant, compiled_dir, predict=predict, on_step=step)
            step(f"zipping {archive.name}")
            write_zip(compiled_dir, archive, archive.stem)
        sibling = report["repos"]["palettized" if kind == "float16" else "float16"]
        upstream = source_dir / "README.md"
        card = render_card(report, kind=kind, repo_id=f"{namespace}/{name}", sibling_id=f"{namespace}/{sibling}",
                           variants=list(variants), compiled=compiled,
                           upstream=upstream.read_text(errors="replace") if upstream.is_file() else None)
        (folder / "README.md").write_text(card)
        trees.append(RepoTree(kind, name, folder, variants, compiled))
    return trees


def check_compiled(out: Path, report: dict, repo: str, variant: str, compiled_dir: Path, *,
                   predict: Callable | None = None, on_step: Callable[[str], None] | None = None) -> None:
    """Core ML predictions of one variant's compiled models against the float32 reference (``psnr_coreml``).

    Every compiled model, float16 and palettized, on the GPU and, for split_einsum layouts, on the Neural
    Engine.  Needs Core ML (macOS) unless ``predict`` stands in for it; elsewhere the packages keep their
    ``psnr_coreml: skipped``.  The figures replace that check in ``report`` and report.json; a model below
    its bar fails the package, the report and this call (ValidationError).
    """
    from workers.report import precision_bits, write_json
    from workers.layout import compiled_file_name
    from workers.validate import ValidationBars, compiled_check, compute_units_for, coreml_available, load_check_data

    if predict is None and not coreml_available():
        return
    bars = ValidationBars.from_dict(report["options"]["bars"])
    failures = []
    for package in report["packages"]:
        if package["repo"] != repo or package["variant"] != variant:
            continue
        data = load_check_data(out, package["component"])
        if data is None:
            continue  # converted before check data was kept: nothing to compare with
        (on_step or (lambda m: None))(f"predicting with {repo}/{variant} {package['component']}")
        precision = package["precision"]
        check = compiled_check(compiled_dir / compiled_file_name(package["component"]), data,
                               bars.shipped(precision_bits(precision)), compute_units_for(variant), predict=predict)
        package["checks"] = [c for c in package["checks"] if c["name"] != "psnr_coreml"] + [check.to_dict()]
        if check.failed:
            package["status"] = "failed"
            figure = f"{check.value} dB < {check.threshold} dB" if check.value is not None else check.detail
            failures.append(f"{package['component']} ({variant}, {precision}) compiled psnr_coreml: {figure}")
    report["passed"] = report["passed"] and not failures
    write_json(out / REPORT_FILE, report)
    if failures:
        from workers.errors import ValidationError

        raise ValidationError(failures, hint="Nothing is published; report.json has every figure.")


def load_trees(out: Path) -> list[RepoTree]:
    """The repo trees a packaged output holds (after :func:`package_output`, possibly on another host)."""
    report = load_report(out)
    trees = []
    for kind, name in report["repos"].items():
        folder = out / name
        variants = _variants(report, folder)
        if variants and (folder / "README.md").is_file():
            compiled = all((folder / zip_name(name, v)).is_file() for v in variants)
            trees.append(RepoTree(kind, name, folder, variants, compiled))
    return trees
