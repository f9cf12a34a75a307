"""Package step: turn a conversion output into the repo trees that get published.

For each of the two repos (float16, palettized) and each variant: compiled resources (via the compile
step, macOS) next to the packages, one deterministic zip per variant, and the model card::

    OUT/<repo-name>/README.md
    OUT/<repo-name>/coreml-publisher.json      (the manifest: workers.package.manifest)
    OUT/<repo-name>/<repo-name>_<variant>_compiled.zip
    OUT/<repo-name>/<variant>/{compiled,packages}/...

Only complete variants are packaged and published (:mod:`workers.package.complete`).
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workers.errors import SourceError
from workers.package.card import render_card, zip_name
from workers.package.compile import bundle_variant
from workers.package.manifest import build_manifest, write_manifest
from workers.source.unpack import recorded_tokenizers
from workers.package.complete import check_complete, check_output, check_tree, repo_variants
from workers.validate.compiled import check_compiled
from workers.validate.report import Report

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same files always make the same bytes
STORED_SUFFIXES = (".bin",)  # weights do not compress; storing them keeps zipping fast

def source_tokenizer(source_dir: Path) -> Path:
    """The tokenizer folder whose vocab.json and merges.txt ship: ``tokenizer``, or a refiner's ``tokenizer_2``
    (SDXL's two share the vocabulary; the Swift pipeline pads the second with ``!`` itself)."""
    first = source_dir / "tokenizer"
    return first if first.is_dir() or not (source_dir / "tokenizer_2").is_dir() else source_dir / "tokenizer_2"


@dataclass(frozen=True)
class RepoTree:
    """One repo ready to publish: its local folder and what it holds."""

    kind: str  # "float16" or "palettized"
    name: str  # repo name (the part after the namespace)
    folder: Path
    variants: tuple[str, ...]
    compiled: bool


def write_zip(folder: Path, target: Path, top: str | None) -> Path:
    """Zip ``folder``'s contents under one top-level folder ``top`` (None: at the zip's top, as a ControlNet repo's
    ``controlnet/<Name>.mlmodelc``); byte-identical for identical input.

    Files are streamed from disk; entries are sorted with fixed dates and permissions.
    """
    tmp = target.with_name(f".{target.name}.partial")
    entries = sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
        for directory in ([folder] if top else []) + [p for p in entries if p.is_dir()]:
            rel = directory.relative_to(folder).as_posix()
            name = f"{top}/" if rel == "." else f"{top}/{rel}/" if top else f"{rel}/"
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
            archive.writestr(info, b"")
        for path in (p for p in entries if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            info = zipfile.ZipInfo(f"{top}/{rel}" if top else rel, ZIP_DATE)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED if path.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w", force_zip64=True) as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    os.replace(tmp, target)
    return target


def package_output(out: Path, *, namespace: str, compiled: bool, compiler: tuple[str, ...] | None = None,
                   source_dir: Path | None = None, on_step: Callable[[str], None] | None = None,
                   predict: Callable | None = None) -> list[RepoTree]:
    """Lay out both repo trees of a conversion output for publishing under ``namespace``.

    ``source_dir`` holds the source's tokenizer and card (default: where the conversion read the source).
    With ``compiled``, compiles every package with ``compiler`` (``xcrun coremlcompiler``), checks each
    compiled model's Core ML prediction against the float32 reference kept with the output (on macOS, or
    with ``predict``; see :func:`check_compiled`), adds the tokenizer and zips each variant; without,
    removes compiled resources and zips left from earlier runs.  A variant that lacks what the Swift
    pipeline loads is refused before anything is done (:func:`check_complete`).  A card links the other
    repo of the pair only when this output holds it too.
    Raises OutputError (no report, a failed one, an incomplete variant), SourceError, ConversionError,
    ValidationError (a compiled model below its bar).
    """
    report = Report.load(out)
    report.require_passed(out)
    check_output(report, out, namespace=namespace)  # before any work: an incomplete variant is never packaged
    step = on_step or (lambda message: None)
    source_dir = source_dir or Path(report.source["path"] or "")
    controlnet = report.pipeline == "controlnet"  # its zips unpack into a base's folder: no tokenizer of its own
    tokenizer = None if controlnet else source_tokenizer(source_dir)
    if tokenizer is not None and not tokenizer.is_dir() and report.source.get("checkpoint"):
        tokenizer = source_tokenizer(recorded_tokenizers(report.source, out / "_configs"))
    if compiled and tokenizer is not None and not tokenizer.is_dir():
        raise SourceError(f"the source's tokenizer folder {tokenizer} is gone", source=report.source["id"],
                          hint="Convert again so the source is available, then publish.")
    # the repos this run publishes: a card links its sibling only when that one is published too
    present = {kind: (name, variants) for kind, name in report.repos.items()
               if (variants := repo_variants(report, out / name))}
    trees = []
    for kind, (name, variants) in present.items():
        folder = out / name
        for variant in variants:
            compiled_dir = folder / variant / "compiled"
            archive = folder / zip_name(name, variant)
            if not compiled:
                shutil.rmtree(compiled_dir, ignore_errors=True)
                archive.unlink(missing_ok=True)
                continue
            step(f"compiling {name}/{variant}")
            bundle_variant({p.component: out / p.path for p in report.packages_of(name, variant)}, compiled_dir, tokenizer,
                           command=compiler or ("xcrun", "coremlcompiler"), source_id=report.source["id"])
            check_compiled(out, report, name, variant, compiled_dir, predict=predict, on_step=step)
            check_complete(report, name, variant, out=out, compiled_dir=compiled_dir, namespace=namespace)
            step(f"zipping {archive.name}")
            write_zip(compiled_dir, archive, None if controlnet else archive.stem)
        manifest = build_manifest(report, out, kind=kind, name=name, repo_id=f"{namespace}/{name}",
                                  variants=list(variants), compiled=compiled, zips={v: zip_name(name, v) for v in variants})
        write_manifest(folder, manifest)
        sibling = present.get("palettized" if kind == "float16" else "float16")
        upstream = source_dir / "README.md"
        card = render_card(report, kind=kind, repo_id=f"{namespace}/{name}",
                           sibling_id=f"{namespace}/{sibling[0]}" if sibling else None,
                           variants=list(variants), compiled=compiled,
                           upstream=upstream.read_text(errors="replace") if upstream.is_file() else None,
                           manifest=manifest)
        (folder / "README.md").write_text(card)
        trees.append(RepoTree(kind, name, folder, variants, compiled))
    return trees


def load_trees(out: Path) -> list[RepoTree]:
    """The repo trees a packaged output holds (after :func:`package_output`, possibly on another host).

    Refuses (OutputError) when any of them is incomplete (:func:`check_tree`), so none is published.
    """
    report = Report.load(out)
    report.require_passed(out)
    trees = []
    for kind, name in report.repos.items():
        folder = out / name
        variants = repo_variants(report, folder)
        if variants and (folder / "README.md").is_file():
            compiled = all((folder / zip_name(name, v)).is_file() for v in variants)
            trees.append(RepoTree(kind, name, folder, variants, compiled))
    for tree in trees:
        check_tree(tree)
    return trees
